"""What the position-embedding study shows: tables, verdicts and plots from DIR/results.json.

    write(out)  ->  out/summary.md, out/resolution.png, out/position.png,
                    out/segmentation.png, out/data_size.png

Every number is a mean ± standard deviation over seeds; every verdict is the paired decision
rule of `vit_jax.experiments.statistics` applied to the comparison fixed below, before any run:

  1 (no position: permutation-invariant, loses geometry): position task, accuracy at the
    training size, every variant vs `none`; holds if it holds for every variant.
  2a (sin/cos overfits less on small data): data-size task, smallest n, train-test gap of
    `learned` vs `sincos2d`.
  2b (learned wins with more data): data-size task, largest n, test accuracy of `learned` vs
    `sincos2d`.
  3 (relative bias helps local tasks): segmentation task, mIoU of `relative` vs `learned`.
  4 (RoPE and relative extrapolate better): resolution task, the drop from the training size
    to the largest size without training: `learned` (interpolated, the standard resize) vs each
    of `relative`, `rope_axial`, `rope_mixed` in extrapolate mode; also reported: interpolate
    mode, and each drop against `none`'s (part of every drop is the change of scale itself).
"""

from __future__ import annotations

import json
import os

import numpy as np

from vit_jax.experiments.statistics import (
    DOES_NOT_HOLD,
    HOLDS,
    NOT_RESOLVED,
    Paired,
    paired,
    spread,
)

ROPE_AND_RELATIVE = ("relative", "rope_axial", "rope_mixed")


class Records:
    """The study's records, looked up as {seed: value}."""

    def __init__(self, records: list[dict]):
        self.records = [r for r in records if r.get("setting") != "done"]

    def values(self, metric: str = "accuracy", **key) -> dict[int, float]:
        """{seed: metric} of the records matching `key` (e.g. task=, variant=, setting=)."""
        return {
            r["seed"]: r[metric]
            for r in self.records
            if metric in r and all(r.get(k) == v for k, v in key.items())
        }

    def variants(self, task: str) -> list[str]:
        return list(dict.fromkeys(r["variant"] for r in self.records if r["task"] == task))

    def sizes(self, task: str, setting: str) -> list[int]:
        return sorted(
            {r["image_size"] for r in self.records if r["task"] == task and r["setting"] == setting}
        )

    def train_size(self, task: str) -> int | None:
        sizes = [
            r["image_size"] for r in self.records if r["task"] == task and r["setting"] == "trained"
        ]
        return sizes[0] if sizes else None

    def num_seeds(self) -> int:
        return len({r["seed"] for r in self.records})


def cell(values: dict[int, float]) -> str:
    return spread(list(values.values())).format()


def drops(records: Records, variant: str, size: int, mode: str | None) -> dict[int, float]:
    """{seed: accuracy at the training size - accuracy at `size` without training}."""
    trained = records.values(task="resolution", variant=variant, setting="trained")
    moved = records.values(
        task="resolution", variant=variant, setting="resized", image_size=size, mode=mode
    )
    return {s: trained[s] - moved[s] for s in trained if s in moved}


# --------------------------------------------------------------------------------------------
# Tables (markdown).


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _mode_name(mode: str | None) -> str:
    return {"interpolate": "interp.", "extrapolate": "extrap.", "auto": ""}.get(mode or "", "")


def _resized_columns(records: Records, task: str) -> list[tuple[int, str]]:
    """(size, mode) of the task's evaluations without training, in size order. `none` (mode
    "auto": it has nothing to adapt) fills every mode's column of its size."""
    pairs = {
        (r["image_size"], r["mode"])
        for r in records.records
        if r["task"] == task and r["setting"] == "resized"
    }
    adapted = {size for size, mode in pairs if mode != "auto"}
    pairs = {(size, mode) for size, mode in pairs if mode != "auto" or size not in adapted}
    order = {"interpolate": 0, "extrapolate": 1, "auto": 2}
    return sorted(pairs, key=lambda p: (p[0], order.get(p[1], 3)))


def _columns_table(records: Records, task: str, metric: str = "accuracy") -> str:
    """Rows: variants; columns: trained size, shuffled, each resized (size, mode), fine-tuned."""
    trained_size = records.train_size(task)
    resized = _resized_columns(records, task)
    has_shuffled = bool(records.values(task=task, setting="shuffled"))
    finetuned = records.sizes(task, "fine-tuned")
    header = ["variant", f"{trained_size} px (trained)"]
    header += ["patches shuffled"] if has_shuffled else []
    header += [f"{s} px {_mode_name(m)}".strip() for s, m in resized]
    header += [f"{s} px fine-tuned" for s in finetuned]
    rows = []
    for variant in records.variants(task):
        key = {"task": task, "variant": variant}
        row = [f"`{variant}`", cell(records.values(metric, **key, setting="trained"))]
        if has_shuffled:
            row.append(cell(records.values(metric, **key, setting="shuffled")))
        for size, mode in resized:
            at = {**key, "setting": "resized", "image_size": size}
            values = records.values(metric, **at, mode=mode) or records.values(
                metric, **at, mode="auto"
            )
            row.append(cell(values) if values else "–")
        for size in finetuned:
            row.append(cell(records.values(metric, **key, setting="fine-tuned", image_size=size)))
        rows.append(row)
    return _table(header, rows)


def _data_size_table(records: Records) -> str:
    header = ["variant", "train images", "test acc.", "train acc.", "gap (train - test)"]
    rows = []
    for variant in records.variants("data_size"):
        for n in _train_sizes(records):
            key = {"task": "data_size", "variant": variant, "train_size": n, "setting": "trained"}
            test, train = records.values(**key), records.values("train_accuracy", **key)
            gap = {s: train[s] - test[s] for s in test if s in train}
            rows.append(
                [f"`{variant}`", "all" if n is None else str(n), cell(test), cell(train), cell(gap)]
            )
    return _table(header, rows)


def _train_sizes(records: Records) -> list[int | None]:
    sizes = {r["train_size"] for r in records.records if r["task"] == "data_size"}
    return sorted(sizes, key=lambda n: float("inf") if n is None else n)


# --------------------------------------------------------------------------------------------
# Claims.


def _combine(verdicts: list[str]) -> str:
    if not verdicts:
        return NOT_RESOLVED
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    if any(v == DOES_NOT_HOLD for v in verdicts) and not any(v == HOLDS for v in verdicts):
        return DOES_NOT_HOLD
    if any(v == DOES_NOT_HOLD for v in verdicts):
        return "holds for some variants, not for others"
    return NOT_RESOLVED


def _std(values: dict[int, float]) -> str:
    s = spread(list(values.values()))
    return "–" if s.n < 2 else f"{100 * s.std:.1f}"


def _line(what: str, p: Paired) -> str:
    return f"- {what}: {p.format()} points → **{p.verdict}**"


def claims(records: Records) -> list[tuple[str, str, list[str]]]:
    """[(claim, verdict, evidence lines)] for the four claims (module docstring)."""
    out = []
    # 1. position task: every variant vs none.
    evidence, verdicts = [], []
    none = records.values(task="position", variant="none", setting="trained")
    for variant in records.variants("position"):
        if variant == "none":
            continue
        p = paired(records.values(task="position", variant=variant, setting="trained"), none)
        verdicts.append(p.verdict)
        evidence.append(_line(f"`{variant}` − `none`, position-task accuracy", p))
    for variant in records.variants("position"):
        shuffled = records.values(task="position", variant=variant, setting="shuffled")
        trained = records.values(task="position", variant=variant, setting="trained")
        if shuffled:
            p = paired(trained, shuffled)
            evidence.append(
                f"- `{variant}`: accuracy lost when the test patches are shuffled: "
                f"{p.format()} points"
            )
    out.append(
        (
            "1. Without position embeddings the model is permutation-invariant and loses geometry",
            _combine(verdicts),
            evidence,
        )
    )

    # 2. data size.
    sizes = _train_sizes(records)
    if sizes:
        small, large = sizes[0], sizes[-1]

        def gap(variant, n):
            key = {"task": "data_size", "variant": variant, "train_size": n, "setting": "trained"}
            test, train = records.values(**key), records.values("train_accuracy", **key)
            return {s: train[s] - test[s] for s in test if s in train}

        def test(variant, n):
            return records.values(
                task="data_size", variant=variant, train_size=n, setting="trained"
            )

        p_gap = paired(gap("learned", small), gap("sincos2d", small))
        p_acc = paired(test("learned", large), test("sincos2d", large))
        label = lambda n: "all" if n is None else str(n)  # noqa: E731
        spreads = [
            f"- seed-to-seed std of test accuracy with {label(n)} images: "
            + ", ".join(f"`{v}` {_std(test(v, n))}" for v in ("learned", "sincos2d"))
            + " points (a few seeds cannot tell two spreads apart: reported, not judged)"
            for n in sizes
        ]
        out.append(
            (
                "2a. Fixed sin/cos overfits less than learned on small data",
                p_gap.verdict,
                [
                    _line(f"train-test gap, `learned` − `sincos2d`, {label(small)} images", p_gap),
                    *spreads,
                ],
            )
        )
        out.append(
            (
                "2b. Learned wins with more data",
                p_acc.verdict,
                [_line(f"test accuracy, `learned` − `sincos2d`, {label(large)} images", p_acc)],
            )
        )

    # 3. segmentation.
    miou = lambda v: records.values(
        "miou",
        task="segmentation",
        variant=v,  # noqa: E731
        setting="trained",
    )
    if miou("relative") and miou("learned"):
        p = paired(miou("relative"), miou("learned"))
        evidence = [_line("segmentation mIoU, `relative` − `learned`", p)]
        for other in records.variants("segmentation"):
            if other not in ("relative", "learned"):
                evidence.append(
                    f"- context: `relative` − `{other}`: "
                    f"{paired(miou('relative'), miou(other)).format()} points"
                )
        out.append(
            ("3. Relative position bias helps a local task (per-patch labels)", p.verdict, evidence)
        )

    # 4. resolution.
    resized = records.sizes("resolution", "resized")
    if resized:
        size = resized[-1]
        learned = drops(records, "learned", size, "interpolate")
        none = drops(records, "none", size, "auto")
        evidence, verdicts = [], []
        for variant in ROPE_AND_RELATIVE:
            for mode in ("extrapolate", "interpolate"):
                mine = drops(records, variant, size, mode)
                if not mine:
                    continue
                p = paired(learned, mine)
                if mode == "extrapolate":
                    verdicts.append(p.verdict)
                evidence.append(
                    _line(f"drop at {size} px, `learned` (interp.) − `{variant}` ({mode})", p)
                )
                evidence.append(
                    f"  - against `none`'s drop: `none` − `{variant}` ({mode}): "
                    f"{paired(none, mine).format()} points"
                )
        out.append(
            (
                f"4. RoPE and relative embeddings extrapolate better to a new resolution "
                f"({size} px, no training)",
                _combine(verdicts),
                evidence,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Plots.


def _errorbar(ax, xs, series: list[dict[int, float]], **style) -> None:
    stats = [spread(list(v.values())) for v in series]
    keep = [i for i, s in enumerate(stats) if s.n]
    ax.errorbar(
        [xs[i] for i in keep],
        [100 * stats[i].mean for i in keep],
        yerr=[0 if np.isnan(stats[i].std) else 100 * stats[i].std for i in keep],
        capsize=3,
        **style,
    )


# posemb_mode -> (colour, line style, legend label) of the resolution plot.
_MODE_STYLES = {
    "interpolate": ("C0", "-", "interpolate"),
    "extrapolate": ("C1", "--", "extrapolate"),
    "auto": ("C7", "-", "no position embedding"),
}


def plot_resolution(records: Records, path: str) -> str:
    from vit_jax import viz

    variants = records.variants("resolution")
    trained_size = records.train_size("resolution")
    sizes = sorted({trained_size, *records.sizes("resolution", "resized")})
    cols = min(5, len(variants))
    rows = -(-len(variants) // cols)
    fig = viz.figure(3.0 * cols, 2.6 * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, cols, sharey=True, squeeze=False)).ravel()
    for ax, variant in zip(axes, variants, strict=False):
        key = {"task": "resolution", "variant": variant}
        trained = records.values(**key, setting="trained")
        for mode, (color, style, _) in _MODE_STYLES.items():
            series = [
                trained
                if s == trained_size
                else records.values(**key, setting="resized", image_size=s, mode=mode)
                for s in sizes
            ]
            if sum(bool(v) for v in series) > 1:
                _errorbar(ax, sizes, series, color=color, linestyle=style, marker="o")
        for s in records.sizes("resolution", "fine-tuned"):
            tuned = records.values(**key, setting="fine-tuned", image_size=s)
            _errorbar(ax, [s], [tuned], color="C2", marker="*", markersize=11, linestyle="none")
        ax.set_title(variant, fontsize=10)
        ax.set_xticks(sizes)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.axvline(trained_size, color="grey", linewidth=0.8)
    for ax in axes[len(variants) :]:
        ax.set_visible(False)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=color, linestyle=style, marker="o", label=label)
        for color, style, label in _MODE_STYLES.values()
    ]
    handles.append(
        Line2D(
            [],
            [],
            color="C2",
            marker="*",
            markersize=11,
            linestyle="none",
            label="fine-tuned (interpolated)",
        )
    )
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), fontsize=9)
    fig.supxlabel("image size (px); trained at the grey line; no training elsewhere")
    fig.supylabel("test accuracy (%)")
    return viz.save(fig, path)


def _bars(
    records: Records,
    task: str,
    settings: list[tuple[str, str, dict]],
    ylabel: str,
    path: str,
    title: str,
) -> str:
    from vit_jax import viz

    variants = records.variants(task)
    fig = viz.figure(1.1 * len(variants) + 2.5, 3.4)
    ax = fig.subplots()
    width = 0.8 / len(settings)
    for i, (label, metric, key) in enumerate(settings):
        xs = [j + (i - (len(settings) - 1) / 2) * width for j in range(len(variants))]
        stats = [
            spread(list(records.values(metric, task=task, variant=v, **key).values()))
            for v in variants
        ]
        ax.bar(
            xs,
            [100 * s.mean if s.n else 0 for s in stats],
            width,
            label=label,
            yerr=[0 if not s.n or np.isnan(s.std) else 100 * s.std for s in stats],
            capsize=3,
        )
    ax.set_xticks(range(len(variants)), variants, rotation=20)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, ncols=len(settings), loc="upper center", bbox_to_anchor=(0.5, 1.18))
    ax.set_title(title, fontsize=10, pad=28)
    ax.grid(axis="y", alpha=0.3)
    return viz.save(fig, path)


def plot_data_size(records: Records, path: str) -> str:
    from vit_jax import viz

    sizes = _train_sizes(records)
    full = max((r.get("num_train", 0) for r in records.records), default=0)
    xs = [n if n is not None else (full or 2 * max([s for s in sizes if s] or [1])) for n in sizes]
    fig = viz.figure(9.0, 3.4)
    acc_ax, gap_ax = fig.subplots(1, 2)
    for variant in records.variants("data_size"):
        key = {"task": "data_size", "variant": variant, "setting": "trained"}
        tests = [records.values(**key, train_size=n) for n in sizes]
        trains = [records.values("train_accuracy", **key, train_size=n) for n in sizes]
        gaps = [
            {s: tr[s] - te[s] for s in te if s in tr} for te, tr in zip(tests, trains, strict=True)
        ]
        _errorbar(acc_ax, xs, tests, marker="o", label=variant)
        _errorbar(gap_ax, xs, gaps, marker="o", label=variant)
    for ax, label in ((acc_ax, "test accuracy (%)"), (gap_ax, "train − test accuracy (points)")):
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("training images")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return viz.save(fig, path)


# --------------------------------------------------------------------------------------------
# summary.md


def summary(records: Records, quick: bool) -> str:
    seeds = records.num_seeds()
    parts = [
        "# Position-embedding study",
        "",
        f"Mean ± standard deviation over {seeds} seed(s), in percent. Verdicts: a paired "
        "difference over seeds larger than twice its standard error (see "
        "`vit_jax/experiments/statistics.py`)."
        + (
            " **Quick run: a few steps of a tiny model; the numbers mean nothing.**"
            if quick
            else ""
        ),
        "",
        "## Claims",
        "",
    ]
    for claim, verdict, evidence in claims(records):
        parts += [f"**{claim}: {verdict}.**", "", *evidence, ""]
    sections = [
        ("Resolution (claim 4): test accuracy", "resolution", "accuracy"),
        ("Position task (claim 1): test accuracy", "position", "accuracy"),
        ("Segmentation (claim 3): per-patch accuracy", "segmentation", "accuracy"),
        ("Segmentation (claim 3): mIoU", "segmentation", "miou"),
    ]
    for title, task, metric in sections:
        if records.variants(task) and (metric != "miou" or records.values("miou", task=task)):
            parts += [f"## {title}", "", _columns_table(records, task, metric), ""]
    if records.variants("data_size"):
        parts += ["## Training-set size (claim 2)", "", _data_size_table(records), ""]
    return "\n".join(parts)


def write(out: str, quick: bool = False) -> list[str]:
    """Writes out/summary.md and the plots from out/results.json; returns the paths written.
    Without matplotlib the plots are skipped with one line."""
    results = os.path.join(out, "results.json")
    if not os.path.exists(results):
        raise ValueError(f"{results} does not exist: run the study into {out} first.")
    with open(results) as f:
        records = Records(json.load(f))
    written = []
    path = os.path.join(out, "summary.md")
    with open(path, "w") as f:
        f.write(summary(records, quick))
    written.append(path)
    plots = []
    if records.variants("resolution"):
        plots.append(lambda: plot_resolution(records, os.path.join(out, "resolution.png")))
    if records.variants("position"):
        plots.append(
            lambda: _bars(
                records,
                "position",
                [
                    ("trained size", "accuracy", {"setting": "trained"}),
                    ("patches shuffled", "accuracy", {"setting": "shuffled"}),
                ],
                "test accuracy (%)",
                os.path.join(out, "position.png"),
                "Which digit, in which half: position matters by construction",
            )
        )
    if records.variants("segmentation"):
        plots.append(
            lambda: _bars(
                records,
                "segmentation",
                [
                    ("per-patch accuracy", "accuracy", {"setting": "trained"}),
                    ("mIoU", "miou", {"setting": "trained"}),
                ],
                "%",
                os.path.join(out, "segmentation.png"),
                "Per-patch digit segmentation (unpooled head)",
            )
        )
    if records.variants("data_size"):
        plots.append(lambda: plot_data_size(records, os.path.join(out, "data_size.png")))
    try:
        written += [draw() for draw in plots]
    except ImportError as error:
        print(f"no plots: {error}")
    return written
