"""Position embeddings at a new resolution, measured on the embedded digits.

For each position embedding: train configs/digits.py at 16x16 (4x4 grid), then
  1. restore it at 32x32 (8x8 grid) without any training, and evaluate on all 297 test digits;
  2. fine-tune it with configs/digits_finetune.py (300 SGD steps at 32x32) and evaluate again.
Writes results.json, results.md (the README table) and results.png into --out.

    python benchmarks/posemb_resolution.py --out=workdirs/posemb_resolution \
        [--posembs=learned,rope_axial]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax

from vit_jax.models import POSEMBS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def evaluate_restored(config, path: str) -> dict:
    """Eval accuracy of the checkpoint at `path` restored into config's model (no training)."""
    from vit_jax import data
    from vit_jax.checkpoint import restore_into
    from vit_jax.train.config import validate, with_dataset
    from vit_jax.train.loop import evaluate

    settings = validate(config)
    dataset = data.open_dataset(settings.data)
    settings = with_dataset(settings, dataset.info)
    params, _ = restore_into(
        path, settings.model, jax.random.PRNGKey(0), channels=dataset.info.channels, verbose=False
    )
    return evaluate(settings.model, params, dataset, batch_size=settings.train.eval_batch_size)


def run(posemb: str, out: str) -> dict:
    from vit_jax.train.config import sibling_config
    from vit_jax.train.loop import train_and_evaluate

    configs = os.path.join(ROOT, "configs", "digits.py")
    base_dir = os.path.join(out, posemb, "base")
    start = time.perf_counter()
    base = train_and_evaluate(sibling_config(configs, "digits", f"posemb={posemb}"), base_dir)
    train_seconds = time.perf_counter() - start
    finetune_config = sibling_config(
        configs, "digits_finetune", f"posemb={posemb},init_from={base_dir}"
    )
    zero_shot = evaluate_restored(finetune_config, base_dir)
    tuned = train_and_evaluate(finetune_config, os.path.join(out, posemb, "finetune"))
    return {
        "posemb": posemb,
        "accuracy_16px": base["accuracy"],
        "accuracy_32px_restored": zero_shot["accuracy"],
        "accuracy_32px_finetuned": tuned["accuracy"],
        "num_examples": tuned["num_examples"],
        "train_seconds_16px": train_seconds,
    }


def markdown(results: list[dict]) -> str:
    lines = [
        "| posemb | 16 px (trained) | 32 px, restored, no training | 32 px, fine-tuned 300 steps |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| `{r['posemb']}` | {100 * r['accuracy_16px']:.1f}% | "
            f"{100 * r['accuracy_32px_restored']:.1f}% | "
            f"{100 * r['accuracy_32px_finetuned']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[plots]'): no plot", file=sys.stderr)
        return
    names = [r["posemb"] for r in results]
    keys = [
        ("accuracy_16px", "16 px"),
        ("accuracy_32px_restored", "32 px restored"),
        ("accuracy_32px_finetuned", "32 px fine-tuned"),
    ]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.27
    for i, (key, label) in enumerate(keys):
        xs = [j + (i - 1) * width for j in range(len(names))]
        ax.bar(xs, [100 * r[key] for r in results], width, label=label)
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel("test accuracy (%), 297 digits")
    ax.set_ylim(0, 115)
    ax.set_yticks(range(0, 101, 20))
    ax.legend(loc="upper center", ncol=3, frameon=False)
    ax.set_title("Position embeddings at twice the training resolution")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "workdirs", "posemb_resolution"))
    parser.add_argument("--posembs", default=",".join(POSEMBS))
    args = parser.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    results_path = os.path.join(out, "results.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else []
    done = {r["posemb"] for r in results}
    for posemb in args.posembs.split(","):
        if posemb in done:
            continue
        results.append(run(posemb, out))
        with open(results_path, "w") as f:
            json.dump(results, f, indent=2)
        print(markdown(results), flush=True)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(results))
    plot(results, os.path.join(out, "results.png"))


if __name__ == "__main__":
    main()
