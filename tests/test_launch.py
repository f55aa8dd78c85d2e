"""The launch scripts: `--dry-run` prints, shell-quoted, exactly the commands a real launch runs,
and runs nothing. The cluster tools (gcloud, srun) and python are fakes on PATH that record how
they were called, so a real launch can run here too and be compared with its dry run."""

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
LIBRARY = "common.sh"  # sourced by the scripts, not run
SCRIPTS = sorted(f for f in os.listdir(LAUNCH) if f.endswith((".sh", ".sbatch")) and f != LIBRARY)

CONFIG = "configs/digits.py"
WORKDIR = "/shared/my runs/it's"  # a space and a quote: the quoting must keep them
MAIN = ["python", "-m", "vit_jax.main", f"--config={CONFIG}", f"--workdir={WORKDIR}"]

# Records its name, arguments and the variables the scripts set, one file per call.
FAKE = """#!/usr/bin/env bash
{
  printf '%s\\0' "$(basename "$0")" "$@"
  printf 'ENV JAX_NUM_CPU_DEVICES=%s\\0' "${JAX_NUM_CPU_DEVICES:-}"
} >"$LAUNCH_LOG/$(basename "$0").$$.$RANDOM"
if [[ $* == *describe* ]]; then echo 10.1.2.3; fi
"""
FAKES = ["gcloud", "srun", "sbatch", "python", "python3", "pip", "git", "ssh"]


@pytest.fixture
def launcher(tmp_path):
    """run(script, *args, **env) -> (rc, stdout, calls): the calls the fakes recorded."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    for name in FAKES:
        (bin_dir / name).write_text(FAKE)
        (bin_dir / name).chmod(0o755)
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "MEGASCALE_"))
        and k not in ("PER_GPU", "GPUS_PER_NODE", "DEVICES_PER_PROCESS", "PORT", "TPU", "ZONE")
        and k not in ("REPO", "JAX_NUM_CPU_DEVICES", "CUDA_VISIBLE_DEVICES")
    }
    base["PATH"] = f"{bin_dir}{os.pathsep}{base['PATH']}"
    base["LAUNCH_LOG"] = str(log)

    def run(script, *args, **env):
        p = subprocess.run(
            ["bash", os.path.join(LAUNCH, script), *args],
            env={**base, **env},
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=30,
        )
        calls = [f.read_text().split("\0")[:-1] for f in sorted(log.iterdir())]
        for f in log.iterdir():
            f.unlink()
        return p.returncode, p.stdout, calls

    return run


def commands(stdout: str) -> list[list[str]]:
    """The printed command lines as bash reads them (a trailing '&' kept as its own word)."""
    return [shlex.split(line) for line in stdout.splitlines()]


def background(lines: list[list[str]]) -> list[list[str]]:
    """Lines that start a command in the background, then `wait`: the commands."""
    assert lines[-1] == ["wait"], lines
    assert all(words[-1] == "&" for words in lines[:-1]), lines
    return [words[:-1] for words in lines[:-1]]


def main_command(shell_command: str) -> list[str]:
    """The words of the last command of a worker's shell line (after its last &&)."""
    return shlex.split(shell_command.rsplit(" && ", 1)[1])


def test_local_multiprocess_dry_run(launcher):
    args = ["3", CONFIG, WORKDIR, "--config.total_steps=5"]
    rc, out, calls = launcher("local_multiprocess.sh", "--dry-run", *args, PORT="23456")
    assert rc == 0 and calls == [], (out, calls)
    printed = background(commands(out))
    assert printed == [
        [
            "env",
            "JAX_NUM_CPU_DEVICES=2",
            *MAIN,
            "--coordinator=localhost:23456",
            "--num_processes=3",
            f"--process_id={i}",
            "--config.total_steps=5",
        ]
        for i in range(3)
    ]
    # Without --dry-run: the same commands run (here the fake python), with the variable set.
    rc, _, calls = launcher("local_multiprocess.sh", *args, PORT="23456")
    assert rc == 0
    ran = sorted(c[:-1] for c in calls)
    assert ran == sorted(words[2:] for words in printed)
    assert all(c[-1] == "ENV JAX_NUM_CPU_DEVICES=2" for c in calls)


def tpu_env(**kw):
    return {"REPO": "https://example.com/vit_jax.git", "ZONE": "us-central2-b", **kw}


def ssh_words(tpu: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, "--zone=us-central2-b"]


def test_tpu_vm_single_slice_dry_run(launcher):
    env = tpu_env(TPU="my-v4-32")
    rc, out, calls = launcher("tpu_vm.sh", "--dry-run", CONFIG, WORKDIR, "--config.x=1", **env)
    assert rc == 0 and calls == [], (out, calls)
    [printed] = commands(out)
    assert printed[:-1] == [*ssh_words("my-v4-32"), "--worker=all"]
    remote = printed[-1].removeprefix("--command=")
    assert "git clone https://example.com/vit_jax.git vit_jax" in remote
    assert "pip install -q -e . 'jax[tpu]'" in remote
    assert main_command(remote) == [*MAIN, "--distributed", "--config.x=1"]
    assert "MEGASCALE" not in out

    rc, _, calls = launcher("tpu_vm.sh", CONFIG, WORKDIR, "--config.x=1", **env)
    assert rc == 0 and [c[:-1] for c in calls] == [printed]


@pytest.mark.parametrize("address", [None, "10.0.0.2"])
def test_tpu_vm_two_slices_dry_run(launcher, address):
    env = tpu_env(TPU="slice-a,slice-b")
    if address is not None:
        env["MEGASCALE_COORDINATOR_ADDRESS"] = address
    rc, out, calls = launcher("tpu_vm.sh", "--dry-run", CONFIG, WORKDIR, **env)
    assert rc == 0 and calls == [], (out, calls)
    lines = commands(out)
    if address is None:  # the coordinator is looked up: worker 0 of the first slice
        lookup = lines.pop(0)
        assert lookup[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "slice-a"]
        assert "--format=value(networkEndpoints[0].ipAddress)" in lookup
    printed = background(lines)
    assert len(printed) == 2
    coordinator = address or "COORDINATOR_IP"
    for slice_id, (tpu, words) in enumerate(zip(["slice-a", "slice-b"], printed, strict=True)):
        assert words[:-1] == [*ssh_words(tpu), "--worker=all"]
        assert main_command(words[-1].removeprefix("--command=")) == [
            "env",
            f"MEGASCALE_COORDINATOR_ADDRESS={coordinator}:8081",
            "MEGASCALE_NUM_SLICES=2",
            f"MEGASCALE_SLICE_ID={slice_id}",
            "MEGASCALE_PORT=8081",
            *MAIN,
            "--distributed",
        ]

    # Without --dry-run: the same commands, with the address gcloud found (the fake's 10.1.2.3).
    rc, _, calls = launcher("tpu_vm.sh", CONFIG, WORKDIR, **env)
    assert rc == 0
    ssh_calls = sorted(c[:-1] for c in calls if "ssh" in c)
    assert ssh_calls == [[w.replace("COORDINATOR_IP", "10.1.2.3") for w in c] for c in printed]
    assert len(calls) == (3 if address is None else 2)  # the lookup, if any, and the two ssh


def test_slurm_gpu_one_process_per_node_dry_run(launcher):
    rc, out, calls = launcher("slurm_gpu.sbatch", "--dry-run", CONFIG, WORKDIR, "--config.x=1")
    assert rc == 0 and calls == [], (out, calls)
    [printed] = commands(out)
    assert printed == [
        "srun",
        "--ntasks-per-node=1",
        "env",
        "XLA_PYTHON_CLIENT_PREALLOCATE=false",
        "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7",  # all 8 GPUs (the default outside SLURM)
        *MAIN,
        "--distributed",
        "--config.x=1",
    ]
    rc, _, calls = launcher("slurm_gpu.sbatch", CONFIG, WORKDIR, "--config.x=1")
    assert rc == 0 and [c[:-1] for c in calls] == [printed]

    # Inside a SLURM job with 4 GPUs per node:
    _, out, _ = launcher("slurm_gpu.sbatch", "--dry-run", CONFIG, WORKDIR, SLURM_GPUS_ON_NODE="4")
    assert "JAX_LOCAL_DEVICE_IDS=0,1,2,3" in commands(out)[0]


def test_slurm_gpu_one_process_per_gpu_dry_run(launcher):
    rc, out, calls = launcher("slurm_gpu.sbatch", "--dry-run", CONFIG, WORKDIR, PER_GPU="1")
    assert rc == 0 and calls == [], (out, calls)
    [printed] = commands(out)
    assert printed[:3] == ["srun", "--ntasks-per-node=8", "--cpus-per-task=4"]
    assert printed[3:5] == ["bash", "-c"]
    per_task = printed[5]
    assert printed[6:] == [
        "per-gpu",
        "env",
        "XLA_PYTHON_CLIENT_PREALLOCATE=false",
        "JAX_LOCAL_DEVICE_IDS=0",
        *MAIN,
        "--distributed",
    ]
    # What each task sees: the SLURM_LOCALID-th of the job's GPUs, one GPU per process.
    for job_gpus, local_id, expected in [
        (None, "0", "0"),
        (None, "5", "5"),
        ("4,5,6,7", "0", "4"),
        ("4,5,6,7", "3", "7"),
        ("2", "3", "2"),  # SLURM already gave this task its one GPU
    ]:
        env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
        env["SLURM_LOCALID"] = local_id
        if job_gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = job_gpus
        task = ["bash", "-c", per_task, "per-gpu", "printenv", "CUDA_VISIBLE_DEVICES"]
        seen = subprocess.run(task, env=env, capture_output=True, text=True, check=True)
        assert seen.stdout.strip() == expected, (job_gpus, local_id)

    rc, _, calls = launcher("slurm_gpu.sbatch", CONFIG, WORKDIR, PER_GPU="1")
    assert rc == 0 and [c[:-1] for c in calls] == [printed]

    # A job submitted with --ntasks-per-node=4 --cpus-per-task=8 on 4 GPUs per node:
    job = dict(SLURM_GPUS_ON_NODE="4", SLURM_NTASKS_PER_NODE="4", SLURM_CPUS_PER_TASK="8")
    _, out, _ = launcher("slurm_gpu.sbatch", "--dry-run", CONFIG, WORKDIR, PER_GPU="1", **job)
    assert commands(out)[0][:3] == ["srun", "--ntasks-per-node=4", "--cpus-per-task=8"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_missing_arguments_fail_before_running_anything(launcher, script):
    rc, _, calls = launcher(script, "--dry-run", **tpu_env(TPU="t"))
    assert rc != 0 and calls == []


def test_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed: pip install -e '.[test]'")
    paths = [os.path.join(LAUNCH, f) for f in (*SCRIPTS, LIBRARY)]
    assert len(paths) == 4
    p = subprocess.run(["shellcheck", "-x", *paths], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr


def test_ctrl_c_to_a_launch_stops_every_process_with_sigterm(tmp_path):
    # A script's background commands ignore SIGINT: wait_all passes it on as SIGTERM, which a
    # run answers by saving and stopping with status 75.
    child = (
        'trap "touch $STOPPED; exit 75" TERM; touch $READY; for _ in {1..400}; do sleep 0.05; done'
    )
    (tmp_path / "launch.sh").write_text(
        f"source {shlex.quote(os.path.join(LAUNCH, LIBRARY))}\n"
        + "".join(
            f"run_background env STOPPED={tmp_path}/stopped{i} READY={tmp_path}/ready{i} "
            f"bash -c {shlex.quote(child)}\n"
            for i in range(2)
        )
        + "echo started\nwait_all\n"
    )
    # As from a terminal: SIGINT at its default and unblocked in the script, whatever this
    # test process inherited (in the full suite, SIGINT was ignored here now and then, and a
    # shell cannot trap a signal that was ignored when it started).
    terminal = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
        "os.execvp('bash', ['bash', sys.argv[1]])"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", terminal, str(tmp_path / "launch.sh")],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, killed whole below
    )
    try:
        assert p.stdout.readline() == "started\n"
        deadline = time.monotonic() + 30
        while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
            assert time.monotonic() < deadline, "the children never started"
            time.sleep(0.05)  # until the children have set their traps
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=15) == 75
        assert sorted(f.name for f in tmp_path.glob("stopped*")) == ["stopped0", "stopped1"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
