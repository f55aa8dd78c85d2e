"""The config schema: one declaration per field, base_config from it, one validation pass."""

import dataclasses
import os
import re

import pytest

from tests import cli
from vit_jax.data import DataOptions, DatasetInfo
from vit_jax.options import options_of
from vit_jax.train.config import (
    RestoreOptions,
    TrainOptions,
    base_config,
    sibling_config,
    validate,
    with_dataset,
)
from vit_jax.train.optim import OptimizerOptions
from vit_jax.train.sharding import MeshOptions, ShardingOptions

SECTIONS = {
    None: TrainOptions,
    "data": DataOptions,
    "optimizer": OptimizerOptions,
    "init_options": RestoreOptions,
    "mesh": MeshOptions,
    "sharding": ShardingOptions,
}


@pytest.mark.parametrize("cls", SECTIONS.values(), ids=lambda c: c.__name__)
def test_every_field_is_declared_with_help(cls):
    declared = options_of(cls)
    assert [o.name for o in declared] == [f.name for f in dataclasses.fields(cls)]
    for opt in declared:
        assert opt.help.strip(), f"{cls.__name__}.{opt.name} has no help"


def test_base_config_is_the_declared_defaults():
    config = base_config()
    for section, cls in SECTIONS.items():
        values = config if section is None else config[section]
        for opt in options_of(cls):
            assert values[opt.name] == opt.default, (section, opt.name)
    assert set(config) == {o.name for o in options_of(TrainOptions)} | {
        "model",
        *(s for s in SECTIONS if s),
    }
    settings = validate(base_config())
    assert settings.train == TrainOptions() and settings.data == DataOptions()
    assert settings.optimizer == OptimizerOptions() and settings.restore == RestoreOptions()
    assert settings.mesh == MeshOptions() and settings.sharding == ShardingOptions()
    assert settings.model is None  # num_classes comes from the dataset


@pytest.mark.parametrize(
    "section,field,message",
    [
        ("data", "augmnt", "data.augmnt is not a field in data (did you mean 'augment'?)"),
        (None, "batchsize", "batchsize is not a field (did you mean 'batch_size'?)"),
        ("optimizer", "lerning_rate", "did you mean 'learning_rate'?"),
    ],
)
def test_an_unknown_field_gets_a_did_you_mean(section, field, message):
    config = base_config()
    (config if section is None else config[section])[field] = 1
    with pytest.raises(ValueError, match=re.escape(message)):
        validate(config)


@pytest.mark.parametrize(
    "section,field,value,message",
    [
        (
            "optimizer",
            "schedule",
            "cosin",
            r"optimizer.schedule='cosin' is unknown \(did you mean 'cosine'",
        ),
        ("data", "augment", "mixup", "data.augment='mixup' is unknown"),
        ("optimizer", "b1", 2.0, r"optimizer.b1=2.0 is out of range: it must be in \[0, 1\)"),
        (None, "checkpoint_every_steps", 0, "checkpoint_every_steps=0 is out of range"),
        (None, "log_every_steps", 0, "log_every_steps=0 is out of range"),
        (None, "keep_checkpoints", 0, "keep_checkpoints=0 is out of range"),
        (None, "eval_batch_size", 0, "eval_batch_size=0 is out of range"),
        ("optimizer", "grad_clip_norm", -1.0, "optimizer.grad_clip_norm=-1.0 is out of range"),
        (None, "label_smoothing", 1.0, "label_smoothing=1.0 is out of range"),
        ("data", "prefetch", 0, "data.prefetch=0 is out of range: it must be >= 1"),
        ("model", "dtype", "bf16", "model.dtype='bf16' is not a floating-point dtype"),
        ("model", "remat_policy", "foo", "model.remat_policy='foo' is unknown"),
    ],
)
def test_a_bad_value_is_refused_naming_the_field(section, field, value, message):
    config = base_config()
    (config if section is None else config[section])[field] = value
    with pytest.raises(ValueError, match=message):
        validate(config)


def test_with_dataset_fills_classes_and_steps_and_checks_them():
    config = base_config()
    config.num_epochs = 2.5
    settings = with_dataset(validate(config), DatasetInfo(7, 1000, 10, 3))
    assert settings.train.total_steps == 20 == settings.config.total_steps  # ceil(2500 / 128)
    config.total_steps = None  # num_epochs decides it: it need not be set
    settings = with_dataset(validate(config), DatasetInfo(7, 1000, 10, 3))
    assert settings.train.total_steps == 20 == settings.config.total_steps
    assert settings.model.num_classes == 7 == settings.config.model.num_classes
    config.model.num_classes = 5
    with pytest.raises(ValueError, match="model.num_classes=5 but the dataset has 7"):
        with_dataset(validate(config), DatasetInfo(7, 1000, 10, 3))


def test_every_experiment_config_validates():
    for name in ("digits", "digits_finetune", "cifar10", "cifar10_finetune", "imagenet2012"):
        config = sibling_config(os.path.join(cli.ROOT, "configs", "x.py"), name)
        config.batch_size = config.eval_batch_size = 8  # the test's 8 devices
        config.grad_accum_steps = 1
        validate(config)


def test_the_cli_reports_a_bad_value_in_one_line_before_anything_runs(tmp_path):
    workdir = tmp_path / "run"
    flags = [
        f"--config={cli.ROOT}/configs/digits.py",
        f"--workdir={workdir}",
        "--config.optimizer.b1=2",
    ]
    result = cli.run(flags, timeout=120)
    assert result.returncode != 0
    assert "error: optimizer.b1=2.0 is out of range: it must be in [0, 1)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(workdir)  # refused before the workdir, data or any compile
