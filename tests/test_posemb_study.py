"""The position-embedding study: its statistics, its verdicts and a narrow quick run."""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
import pytest

from vit_jax.experiments import posemb_report, posemb_study
from vit_jax.experiments.statistics import DOES_NOT_HOLD, HOLDS, NOT_RESOLVED, paired, spread
from vit_jax.models import create


def test_spread_is_mean_and_sample_std():
    s = spread([0.9, 0.8, 1.0])
    assert s.mean == pytest.approx(0.9)
    assert s.std == pytest.approx(0.1)  # ddof=1
    assert s.format() == "90.0 ± 10.0"
    assert spread([0.5]).format() == "50.0" and math.isnan(spread([0.5]).std)


@pytest.mark.parametrize(
    ("a", "b", "verdict"),
    [
        ({0: 0.9, 1: 0.91, 2: 0.92}, {0: 0.8, 1: 0.8, 2: 0.81}, HOLDS),
        ({0: 0.8, 1: 0.8, 2: 0.81}, {0: 0.9, 1: 0.91, 2: 0.92}, DOES_NOT_HOLD),
        # Differences +0.1, -0.1, +0.01: within twice their standard error.
        ({0: 0.9, 1: 0.7, 2: 0.81}, {0: 0.8, 1: 0.8, 2: 0.8}, NOT_RESOLVED),
        ({0: 0.9}, {0: 0.1}, NOT_RESOLVED),  # one seed: no error estimate
    ],
)
def test_paired_decision_rule(a, b, verdict):
    assert paired(a, b).verdict == verdict


def test_paired_uses_only_shared_seeds_and_standard_error():
    p = paired({0: 1.0, 1: 2.0, 2: 4.0, 7: 9.0}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert p.n == 3
    assert p.mean == pytest.approx(7 / 3)
    assert p.se == pytest.approx(np.std([1, 2, 4], ddof=1) / math.sqrt(3))


def _record(task, variant, seed, setting, accuracy, size=16, mode=None, **extra):
    return {
        "task": task,
        "variant": variant,
        "seed": seed,
        "setting": setting,
        "image_size": size,
        "mode": mode,
        "train_size": None,
        "accuracy": accuracy,
        **extra,
    }


def test_claims_follow_the_fixed_comparisons():
    """Records built so that claim 1 holds, claim 3 does not and claim 4 holds for rope_axial
    only: the report's verdicts say exactly that."""
    records = []
    for seed in range(3):
        e = 0.01 * seed
        records += [
            _record("position", "none", seed, "trained", 0.50 + e),
            _record("position", "none", seed, "shuffled", 0.50 + e),
            _record("position", "learned", seed, "trained", 0.95 - e),
            _record("position", "learned", seed, "shuffled", 0.30 + e),
            _record("segmentation", "learned", seed, "trained", 0.9, miou=0.80 + e),
            _record("segmentation", "relative", seed, "trained", 0.8, miou=0.60 + e),
        ]
        for variant, trained, extrapolated in (
            ("none", 0.9, 0.8),
            ("learned", 0.95, 0.85),
            ("rope_axial", 0.95, 0.94 - e),
            ("relative", 0.95, 0.80 - e / 10),
        ):
            mode = "auto" if variant == "none" else "extrapolate"
            mode = "interpolate" if variant == "learned" else mode
            records += [
                _record("resolution", variant, seed, "trained", trained),
                _record("resolution", variant, seed, "resized", extrapolated, 32, mode),
            ]
    verdicts = {
        c.split(".")[0]: v for c, v, _ in posemb_report.claims(posemb_report.Records(records))
    }
    assert verdicts["1"] == HOLDS
    assert verdicts["3"] == DOES_NOT_HOLD
    assert verdicts["4"] == "holds for some variants, not for others"
    table = posemb_report.summary(posemb_report.Records(records), quick=False)
    assert "| `learned` | 94.0 ± 1.0 | 31.0 ± 1.0 |" in table


def test_none_cannot_see_shuffled_patches_but_learned_can():
    """shuffle_patches moves whole patches: a model without position embedding gives the same
    logits (permutation invariance), one with a learned table does not."""
    images = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1), minval=-1, maxval=1)
    order = np.random.default_rng(0).permutation(16)
    shuffled = posemb_study.shuffle_patches(images, (4, 4), order)
    # Patch k of the result is patch order[k] of the input.
    k = 5
    src_y, src_x = divmod(int(order[k]), 4)
    dst_y, dst_x = divmod(k, 4)
    np.testing.assert_array_equal(
        shuffled[:, 4 * dst_y : 4 * dst_y + 4, 4 * dst_x : 4 * dst_x + 4],
        images[:, 4 * src_y : 4 * src_y + 4, 4 * src_x : 4 * src_x + 4],
    )
    sizes = dict(hidden_size=32, num_layers=1, num_heads=2, mlp_dim=64, head_bias_init=0.0)
    for posemb, invariant in (("none", True), ("learned", False)):
        model = create("Ti/4", num_classes=5, image_size=16, posemb=posemb, **sizes)
        params = model.init(jax.random.key(1), images)["params"]
        params["head"]["kernel"] = jax.random.normal(
            jax.random.key(2), params["head"]["kernel"].shape
        )
        a = model.apply({"params": params}, images)
        b = model.apply({"params": params}, shuffled)
        assert np.allclose(a, b, atol=1e-5) == invariant, posemb


def test_quick_study_writes_finite_results_and_resumes(tmp_path, digits_dir, capsys, monkeypatch):
    """A narrow --quick run through the real training, restore and evaluation: every record
    holds finite numbers, the settings of the tasks run are there, summary.md and the plots are
    written, and a rerun trains nothing (it finds every run in results.json)."""
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # --quick sets it
    out = tmp_path / "study"
    argv = [
        "--out",
        str(out),
        "--quick",
        "--tasks",
        "resolution,segmentation",
        "--variants",
        "sincos2d,relative",
        "--data-dir",
        digits_dir,
    ]
    assert posemb_study.main(argv) == 0
    records = json.loads((out / "results.json").read_text())
    measured = [r for r in records if r["setting"] != "done"]
    for r in measured:
        assert 0.0 <= r["accuracy"] <= 1.0 and math.isfinite(r["accuracy"]), r
    seg = [r for r in measured if r["task"] == "segmentation"]
    assert seg and all(0.0 <= r["miou"] <= 1.0 for r in seg)
    settings = {(r["task"], r["variant"], r["setting"], r["mode"]) for r in measured}
    for variant in ("sincos2d", "relative"):
        for mode in ("interpolate", "extrapolate"):
            assert ("resolution", variant, "resized", mode) in settings
    assert ("resolution", "sincos2d", "fine-tuned", "interpolate") in settings
    assert ("segmentation", "relative", "trained", None) in settings
    assert {r["image_size"] for r in measured if r["task"] == "resolution"} == {12, 16, 32}
    summary = (out / "summary.md").read_text()
    assert "`sincos2d`" in summary and "Quick run" in summary
    assert (out / "resolution.png").exists() and (out / "segmentation.png").exists()
    capsys.readouterr()
    assert posemb_study.main(argv) == 0
    assert json.loads((out / "results.json").read_text()) == records
    assert "done before" in capsys.readouterr().out


def test_unknown_names_fail_before_any_run(tmp_path, capsys):
    assert posemb_study.main(["--out", str(tmp_path), "--variants", "learnt"]) == 2
    err = capsys.readouterr().err
    assert "learnt" in err and "learned" in err
    assert not (tmp_path / "results.json").exists()
    fresh = tmp_path / "fresh"  # a folder the failed study created is not left behind
    assert posemb_study.main(["--out", str(fresh), "--report-only"]) == 2
    assert "results.json does not exist: run the study" in capsys.readouterr().err
    assert not fresh.exists()


def test_a_full_disk_during_the_study_is_one_line_and_status_4(tmp_path, capsys, monkeypatch):
    import errno

    from vit_jax.train.stopping import IO_ERROR, WorkdirWriteError

    def full(self):  # what a run's save raises when the disk under --out fills
        raise WorkdirWriteError(errno.ENOSPC, "cannot write /out/runs/x (No space left): free")

    monkeypatch.setattr(posemb_study.Study, "run", full)
    assert posemb_study.main(["--out", str(tmp_path / "out")]) == IO_ERROR
    assert capsys.readouterr().err == "error: cannot write /out/runs/x (No space left): free\n"


def test_other_data_runs_the_resolution_and_data_size_tasks(tmp_path):
    """--dataset / --train-dir move the resolution and data-size tasks to that data (32 px by
    default, sizes scaled from it); the canvas tasks stay on the digits; every run's config is
    valid."""
    from vit_jax.train.config import validate

    args = posemb_study.parse_args(["--out", str(tmp_path), "--train-dir", str(tmp_path)])
    tasks = {t.name: t for t in posemb_study.plan(args)}
    resolution = tasks["resolution"]
    assert resolution.data == {"source": "folder", "train_dir": str(tmp_path)}
    assert (resolution.image_size, resolution.eval_sizes) == (32, (24, 48, 64))
    assert "data_size" not in tasks  # its subsets are tfds split slices
    assert tasks["position"].data["name"] == "digits_position"
    config = posemb_study.train_config(
        resolution, "rope_mixed", 1, posemb_study.FULL, None, data_dir=None
    )
    settings = validate(config)
    assert settings.data.source == "folder" and settings.train.seed == 1
    assert config.model.posemb == "rope_mixed" and tuple(config.model.image_size) == (32, 32)
    args = posemb_study.parse_args(["--out", str(tmp_path), "--dataset", "cifar10"])
    tasks = {t.name: t for t in posemb_study.plan(args)}
    assert tasks["resolution"].data == {"name": "cifar10"}
    assert tasks["resolution"].finetune_size == 64
    config = posemb_study.train_config(
        tasks["data_size"], "learned", 0, posemb_study.FULL, 5000, data_dir=None
    )
    assert validate(config).data.train_split == "train[:5000]"


def test_quick_compiles_without_llvm_optimisation_unless_the_user_chose(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    posemb_study.compile_fast_for_quick()
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_cpu_enable_fast_math=false",
        posemb_study.QUICK_XLA_FLAG,
    ]
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=2")
    posemb_study.compile_fast_for_quick()
    assert os.environ["XLA_FLAGS"] == "--xla_backend_optimization_level=2"
