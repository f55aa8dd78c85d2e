"""Workdirs and `.npz` files written by vit_jax 0.1.0 still resume and restore (tests/data)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import cli
from tests.conftest import eval_records, losses_by_step
from vit_jax import models
from vit_jax.checkpoint import restore_into

LEGACY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "legacy_v0_1")
FLAGS = {  # the flags that wrote the legacy workdir (see its README), but 8 steps instead of 4
    "model.hidden_size": 16,
    "model.num_layers": 2,
    "model.num_heads": 2,
    "model.mlp_dim": 32,
    "model.image_size": "(8,12)",
    "model.posemb": "learned+relative",
    "total_steps": 8,
    "batch_size": 16,
    "eval_batch_size": 64,
    "log_every_steps": 1,
    "checkpoint_every_steps": 2,
    "keep_checkpoints": 1,
}


def expected() -> dict:
    with open(os.path.join(LEGACY, "expected.json")) as f:
        return json.load(f)


def legacy_model(**overrides) -> models.VisionTransformer:
    with open(os.path.join(LEGACY, "workdir", "config.json")) as f:
        fields = json.load(f)["model"]
    return models.build({**fields, **overrides})


@pytest.mark.parametrize("source", ["workdir", "params.npz"])
def test_legacy_checkpoints_restore_with_the_logits_they_had(source):
    model = legacy_model()
    params, report = restore_into(
        os.path.join(LEGACY, source), model, jax.random.key(0), verbose=False
    )
    assert set(report.keys("loaded")) == {e.key for e in report.entries}
    images = jnp.asarray(np.linspace(-1, 1, 2 * 8 * 12).reshape(2, 8, 12, 1), jnp.float32)
    logits = model.apply({"params": params}, images)
    np.testing.assert_allclose(logits, expected()["logits"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("source", ["workdir", "params.npz"])
def test_legacy_non_square_checkpoints_restore_at_twice_the_resolution(source):
    model = legacy_model(image_size=(16, 24))  # grid 2x3 -> 4x6, told by the stored config
    _, report = restore_into(os.path.join(LEGACY, source), model, jax.random.key(0), verbose=False)
    resized = report.keys("resized")
    assert "Transformer/posembed_input/pos_embedding" in resized
    assert any(k.endswith("relative_position_bias_table") for k in resized)
    assert "grid 2x3 → 4x6" in str(report)


@pytest.mark.slow
def test_a_legacy_workdir_resumes_with_the_losses_the_old_code_logged(tmp_path, digits_dir):
    workdir = tmp_path / "workdir"
    shutil.copytree(os.path.join(LEGACY, "workdir"), workdir)
    flags = cli.tiny_digits_flags(digits_dir, workdir, **FLAGS)
    result = cli.run(flags, num_devices=1)
    assert result.returncode == 0, result.stderr
    assert "resumed" in result.stdout
    losses = losses_by_step(workdir)
    want = {int(k): v for k, v in expected()["resumed_losses"].items()}
    np.testing.assert_allclose([losses[s] for s in sorted(want)], [want[s] for s in sorted(want)])
    assert eval_records(workdir)[-1]["accuracy"] == expected()["resumed_eval_accuracy"]
