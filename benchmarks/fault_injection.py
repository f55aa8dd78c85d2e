"""Fault injection: kill and damage a short training run at random, resume it, count what broke.

    python benchmarks/fault_injection.py --kills 30 --damages 10 --out workdirs/faults

One uninterrupted reference run, then `--runs` faulty runs of the same config on the embedded
digits. Each faulty run is started again and again; while it trains it is killed at a random
step, with SIGKILL or SIGTERM, sometimes while a checkpoint is being written; between starts
its newest checkpoint is sometimes damaged (zero-filled arrays, a truncated array file, a
deleted manifest, an emptied step directory). The kills and damages are spread over the runs.
At the end every run must have finished with the reference's losses. Printed (and written to
OUT/results.json):

    runs, kills (SIGKILL / SIGTERM), damages, resumes,
    steps lost beyond the last checkpoint (SIGTERM must lose none),
    loss mismatches after resume (rtol 1e-4 against the reference),
    restores of an uncommitted or damaged checkpoint, runs that failed to resume or tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAMAGES = ("zero-filled", "truncated", "no manifest", "empty")


def flags(workdir: str, data_dir: str, steps: int) -> list[str]:
    """A small digits run that checkpoints every 10 steps and logs every step."""
    values = {
        "model.hidden_size": 32,
        "model.num_layers": 2,
        "model.num_heads": 4,
        "model.mlp_dim": 64,
        "model.image_size": "(8,8)",
        "total_steps": steps,
        "batch_size": 32,
        "eval_batch_size": 64,
        "log_every_steps": 1,
        "checkpoint_every_steps": 10,
        "keep_checkpoints": 3,
        "checkpoint_timeout_minutes": 1,  # a hung save ends the run (counted) within a minute
        "data.data_dir": data_dir,
    }
    command = [sys.executable, "-m", "vit_jax.main", f"--config={ROOT}/configs/digits.py"]
    return command + [f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in values.items()]


def losses(workdir: str) -> dict[int, float]:
    """Train loss per step from metrics.jsonl (torn lines skipped)."""
    from vit_jax.train.reporting import read_records

    records = read_records(os.path.join(workdir, "metrics.jsonl"))
    return {r["step"]: r["loss"] for r in records if "split" not in r}


def saved_steps(workdir: str) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def damage(step_dir: str, how: str, rng: random.Random) -> None:
    """Damages one step directory the way `how` says."""
    arrays = [
        os.path.join(root, name)
        for root, _, files in os.walk(os.path.join(step_dir, "state"))
        for name in files
        if "ocdbt" in root and os.sep + "d" in root
    ]
    if how == "zero-filled":
        for path in arrays:
            with open(path, "r+b") as f:
                f.write(b"\0" * os.path.getsize(path))
    elif how == "truncated" and arrays:
        for path in arrays:
            os.truncate(path, rng.randrange(os.path.getsize(path)))
    elif how == "no manifest":
        os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))
    else:
        shutil.rmtree(step_dir)
        os.mkdir(step_dir)


def env() -> dict:
    return {**os.environ, "JAX_NUM_CPU_DEVICES": "1", "PYTHONPATH": ROOT}


def start(workdir: str, data_dir: str, steps: int) -> subprocess.Popen:
    """The run, its progress lines on a pipe and its stderr in a file (a pipe nobody reads
    would fill and stop the run)."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "stderr.log"), "w") as stderr:  # the child keeps its copy
        proc = subprocess.Popen(
            flags(workdir, data_dir, steps),
            env=env(),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    proc.stderr_path = stderr.name
    return proc


def finish(proc: subprocess.Popen, timeout: float) -> str:
    """Waits for the run (draining its progress lines); returns its stderr."""
    proc.communicate(timeout=timeout)
    with open(proc.stderr_path) as f:
        return f.read()


def kill_at(proc: subprocess.Popen, step: int, sig: int) -> bool:
    """Sends `sig` once the process reports step `step` on its progress lines (or never, if
    it ends first); True if it was sent."""
    for line in proc.stdout:
        if line.startswith("step") and int(line.split()[1].split("/")[0]) >= step:
            proc.send_signal(sig)
            return True
    return False


def faulty_run(index, args, plan, reference, counts, rng) -> None:
    """One run, started until it completes, with its share of kills and damages (`plan`)."""
    workdir = os.path.join(args.out, f"run{index}")
    shutil.rmtree(workdir, ignore_errors=True)
    for event in [*plan, None]:
        proc = start(workdir, args.data_dir, args.steps)
        if event is None:
            err = finish(proc, args.timeout)
            if proc.returncode != 0:
                counts["failed_to_resume"] += 1
                print(err[-2000:], file=sys.stderr)
            break
        sig = event
        # After the step the run resumes from; a third of the kills land on a checkpoint
        # step, while its save is being written.
        resume = max(saved_steps(workdir), default=0)
        if resume >= args.steps:  # already complete: nothing left to interrupt
            finish(proc, args.timeout)
            continue
        target = rng.randrange(resume + 1, args.steps + 1)
        if rng.random() < 1 / 3 and target - target % 10 > resume:
            target -= target % 10
        sent = kill_at(proc, target, sig)
        err = finish(proc, args.timeout)
        if proc.returncode == 1:  # a fault: the run ended in a traceback
            counts["tracebacks"] += 1
            print(err[-2000:], file=sys.stderr)
        if not sent:
            continue
        counts["kills"] += 1
        counts["sigterm" if sig == signal.SIGTERM else "sigkill"] += 1
        logged, saved = max(losses(workdir), default=0), max(saved_steps(workdir), default=0)
        if sig == signal.SIGTERM:  # saved and exited 75, or had just completed (0)
            if proc.returncode not in (0, 75):
                counts["failed_to_resume"] += 1
                print(f"SIGTERM exit {proc.returncode}: {err[-1500:]}", file=sys.stderr)
            counts["steps_lost_after_sigterm"] += max(logged - saved, 0)
        if (
            saved_steps(workdir)
            and rng.random() < args.damage_probability
            and counts["damages"] < args.damages
        ):
            newest = saved_steps(workdir)[-1]
            if len(saved_steps(workdir)) > 1:  # one readable checkpoint must stay
                damage(os.path.join(workdir, "checkpoints", str(newest)), rng.choice(DAMAGES), rng)
                counts["damages"] += 1
                counts["damaged_steps"].append((index, newest))
        counts["resumes"] += 1
    got = losses(workdir)
    mismatched = [
        s
        for s in reference
        if s not in got or abs(got[s] - reference[s]) > 1e-4 * abs(reference[s])
    ]
    counts["loss_mismatches"] += len(mismatched)
    damaged_dir = os.path.join(workdir, "damaged_checkpoints")
    moved = (
        {int(d.split("-")[0]) for d in os.listdir(damaged_dir)}
        if os.path.isdir(damaged_dir)
        else set()
    )
    for run, step in counts["damaged_steps"]:
        if run == index and step not in moved:
            counts["damaged_restored"] += 1


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="workdirs/fault_injection")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--damages", type=int, default=10)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--data_dir", default=None, help="tfds data dir (default: OUT/tfds)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    args.data_dir = args.data_dir or os.path.join(os.path.abspath(args.out), "tfds")
    args.damage_probability = min(1.0, 1.5 * args.damages / max(args.kills, 1))
    rng = random.Random(args.seed)

    reference_dir = os.path.join(args.out, "reference")
    shutil.rmtree(reference_dir, ignore_errors=True)
    subprocess.run(
        flags(reference_dir, args.data_dir, args.steps),
        env=env(),
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    reference = losses(reference_dir)

    signals = [rng.choice((signal.SIGKILL, signal.SIGTERM)) for _ in range(args.kills)]
    plans = [signals[i :: args.runs] for i in range(args.runs)]
    counts = {
        k: 0
        for k in (
            "kills",
            "sigkill",
            "sigterm",
            "damages",
            "resumes",
            "steps_lost_after_sigterm",
            "loss_mismatches",
            "damaged_restored",
            "failed_to_resume",
            "tracebacks",
        )
    }
    counts["damaged_steps"] = []
    began = time.time()
    for index, plan in enumerate(plans):
        faulty_run(index, args, plan, reference, counts, rng)
    counts["runs"] = args.runs
    counts["seconds"] = round(time.time() - began, 1)
    table = [
        ("runs", counts["runs"]),
        (
            "kills (SIGKILL / SIGTERM)",
            f"{counts['kills']} ({counts['sigkill']} / {counts['sigterm']})",
        ),
        ("checkpoints damaged", counts["damages"]),
        ("resumes", counts["resumes"]),
        ("steps lost beyond the last checkpoint after SIGTERM", counts["steps_lost_after_sigterm"]),
        ("loss mismatches after resume", counts["loss_mismatches"]),
        ("restores of a damaged checkpoint", counts["damaged_restored"]),
        (
            "runs that failed to resume, tracebacks",
            f"{counts['failed_to_resume']}, {counts['tracebacks']}",
        ),
    ]
    width = max(len(k) for k, _ in table)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in table))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(counts, f, indent=1)
    return counts


if __name__ == "__main__":
    main()
