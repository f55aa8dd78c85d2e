"""The config from the command line: packaged names and paths, typed overrides, timm's names,
and one `error: ...` line with the user-error status for every mistake (vit_jax/train/
command_line.py, through the real CLI where it matters)."""

import concurrent.futures
import json
import os
import pickle
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from tests import cli
from vit_jax.data.transforms import UnreadableImageError
from vit_jax.options import from_text
from vit_jax.train import command_line, stopping
from vit_jax.train.config import base_config, model_config, parse_arg, validate
from vit_jax.train.stopping import USER_ERROR

CONFIGS = os.path.join(cli.ROOT, "configs")


def test_a_packaged_name_and_a_path_are_the_same_config():
    assert command_line.packaged_configs() == {
        name: os.path.join(CONFIGS, f"{name}.py")
        for name in ("cifar10", "cifar10_finetune", "digits", "digits_finetune", "imagenet2012")
    }
    by_name = command_line.load("digits:posemb=rope_axial")
    by_path = command_line.load(os.path.join(CONFIGS, "digits.py:posemb=rope_axial"))
    assert by_name.to_dict() == by_path.to_dict()
    assert by_name.model.posemb == "rope_axial" and by_name.is_locked


def test_the_digits_config_trains_a_zoo_model_when_given_a_variant():
    from vit_jax import models

    small = models.build(command_line.load("digits").model)
    assert (small.hidden_size, small.num_layers, small.patch_size) == (96, 4, (4, 4))
    assert small.variant == "custom/4 (hidden_size=96, num_layers=4, num_heads=4, mlp_dim=192)"
    zoo_model = models.build(command_line.load("digits:variant=S/4").model)
    assert (zoo_model.hidden_size, zoo_model.num_layers, zoo_model.variant) == (384, 12, "S/4")
    timm_named = models.build(command_line.load("digits:variant=vit_base_patch16_224").model)
    assert (timm_named.variant, timm_named.image_size) == ("B/16", (224, 224))
    # The patch may also be set on its own, as an int or a pair, in a file or on the CLI.
    assert model_config("S/16", 224, patch_size=8).patch_size == (8, 8)
    patched = command_line.load("digits", [("model.patch_size", "2")]).model
    assert models.build(patched).variant.startswith("custom/2 (hidden_size=96")


def test_a_variant_override_says_which_sizes_the_config_keeps(capsys):
    from vit_jax import models

    kept = command_line.load("digits", [("model.variant", "S/8")]).model
    assert (models.build(kept).hidden_size, models.build(kept).patch_size) == (96, (8, 8))
    note = capsys.readouterr().err
    assert note.startswith("note: model.variant='S/8' gives the patch size, but the config sets ")
    assert "hidden_size=96, num_layers=4, num_heads=4, mlp_dim=192" in note
    unset = [(f"model.{n}", "None") for n in ("hidden_size", "num_layers", "num_heads", "mlp_dim")]
    zoo_model = models.build(command_line.load("digits", [("model.variant", "S/8"), *unset]).model)
    assert zoo_model.variant == "S/8" and capsys.readouterr().err == ""
    command_line.load("imagenet2012", [("model.variant", "S/16")])  # sizes unset: the variant's
    assert capsys.readouterr().err == ""
    command_line.load("digits", [("model.variant", "S/8"), ("model.hidden_size", "64")])
    note = capsys.readouterr().err
    assert "sets num_layers=4" in note and "hidden_size" not in note  # 64 was asked for
    timm_names = [("model.variant", "S/8"), ("model.embed_dim", "64"), ("model.depth", "2")]
    command_line.load("digits", timm_names)  # timm's names for the sizes count as asked
    note = capsys.readouterr().err
    assert "num_heads=4, mlp_dim=192" in note and "hidden_size" not in note
    assert "num_layers" not in note
    command_line.load("digits", [("model.variant", "Q/16")])  # unknown: validate says so, alone
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "spec,message",
    [
        ("nope.py", "--config=nope.py is neither a file nor a packaged config: give the path"),
        ("configs/digit.py", "packaged config (did you mean 'digits'?)"),
        ("elsewhere/digits.py", "(did you mean 'digits'?)"),  # the packaged name of a lost path
        ("digits:scan=1", "config argument 'scan' is not one this config takes (image_size"),
        ("digits:scan", "config argument 'scan' is not KEY=VALUE with KEY in"),
        ("digits:varient=S/4", "posemb, variant) (did you mean 'variant'?)."),
        ("digits:image_size=big", "config argument image_size='big' is not of type int"),
    ],
)
def test_a_config_that_does_not_exist_names_the_packaged_ones(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        command_line.load(spec)


def test_a_file_that_is_no_config_is_refused(tmp_path):
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="empty.py has no get_config"):
        command_line.load(str(tmp_path / "empty.py"))
    with pytest.raises(ValueError, match="README.md is not a .py file with a get_config"):
        command_line.load(os.path.join(cli.ROOT, "README.md"))
    (tmp_path / "typo.py").write_text("def get_config(:\n    return {}\n")
    with pytest.raises(ValueError) as refused:  # one line saying where, not a traceback
        command_line.load(str(tmp_path / "typo.py"))
    assert str(refused.value) == (
        f"config file {tmp_path / 'typo.py'}, line 1: invalid syntax: def get_config(:"
    )
    (tmp_path / "raises.py").write_text("def get_config():\n    return undefined_name\n")
    with pytest.raises(NameError):  # the user's own code failing: its traceback helps
        command_line.load(str(tmp_path / "raises.py"))


def test_a_get_config_without_argument_or_returning_a_dict_is_read(tmp_path):
    """ml_collections' plain `def get_config():` is called without one (and refuses a :ARG), a
    dict becomes a ConfigDict, anything else is one message."""
    (tmp_path / "plain.py").write_text(
        "from vit_jax.configs import digits\ndef get_config():\n    return digits.get_config()\n"
    )
    assert command_line.load(str(tmp_path / "plain.py")).model.variant == "Ti/4"
    with pytest.raises(ValueError, match="its get_config\\(\\) takes no argument, so ':x=1'"):
        command_line.load(f"{tmp_path / 'plain.py'}:x=1")
    (tmp_path / "dict.py").write_text("def get_config(arg=None):\n    return {'seed': 3}\n")
    assert command_line.load(str(tmp_path / "dict.py")).seed == 3
    (tmp_path / "int.py").write_text("def get_config(arg=None):\n    return 3\n")
    with pytest.raises(ValueError, match="get_config returned 3 \\(int\\), not an ml_collections"):
        command_line.load(str(tmp_path / "int.py"))


def test_a_config_file_giving_a_field_another_type_says_which_and_how(tmp_path):
    (tmp_path / "mine.py").write_text(
        "from vit_jax.train.config import base_config, model_config\n"
        "def get_config(arg=None):\n"
        "    config = base_config()\n"
        "    config.model = model_config('Ti/16', 224)\n"
        "    config.model.image_size = 32\n"
        "    return config\n"
    )
    with pytest.raises(ValueError, match=re.escape("mine.py: image_size cannot take that")) as e:
        command_line.load(str(tmp_path / "mine.py"))
    assert "(height, width) pair: write e.g. (32, 32)" in str(e.value)


def test_overrides_are_read_as_their_fields_type():
    config = command_line.load(
        "digits",
        [
            ("batch_size", "64"),
            ("num_epochs", "2.5"),  # a placeholder (None) of type float
            ("model.scan", "False"),
            ("model.posemb_cls_slot", "no"),
            ("model.image_size", "(24, 16)"),
            ("model.dtype", "bfloat16"),
            ("optimizer.learning_rate", "3e-4"),
            ("init_from", "runs/a"),
        ],
    )
    assert (config.batch_size, config.num_epochs, config.optimizer.learning_rate) == (64, 2.5, 3e-4)
    assert config.model.scan is False and config.model.posemb_cls_slot is False
    assert config.model.image_size == (24, 16) and config.model.dtype == "bfloat16"
    assert config.init_from == "runs/a"
    config = command_line.load("cifar10", [("num_epochs", "None"), ("model.image_size", "48")])
    assert config.num_epochs is None and config.model.image_size == (48, 48)


@pytest.mark.parametrize(
    "text,kind,value",
    [
        ("TRUE", bool, True),
        ("0", bool, False),
        ("7", int, 7),
        ("7", float, 7.0),
        ("inf", float, float("inf")),
        ("[1, 2]", tuple, (1, 2)),
        ("a b", str, "a b"),
        ("None", int, None),
        ("(1, 'x')", None, (1, "x")),
        ("plain text", None, "plain text"),
    ],
)
def test_from_text_reads_each_type(text, kind, value):
    assert from_text("f", text, kind) == value


@pytest.mark.parametrize(
    "text,kind,message",
    [
        ("maybe", bool, "f='maybe' is not of type bool (true or false)."),
        ("1.5", int, "f='1.5' is not of type int (e.g. 8)."),
        ("fast", float, "f='fast' is not of type float (e.g. 0.1)."),
        ("'ab'", tuple, "f=\"'ab'\" is not of type tuple (e.g. (224, 160))."),
    ],
)
def test_from_text_names_the_field_and_the_type(text, kind, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        from_text("f", text, kind)


def test_a_boolean_config_argument_is_read_as_a_boolean():
    assert parse_arg("scan=False", scan=True) == {"scan": False}
    assert parse_arg("scan=true,size=3", scan=False, size=1) == {"scan": True, "size": 3}
    assert parse_arg(None, scan=False) == {"scan": False}


@pytest.mark.parametrize(
    "field,message",
    [
        ("model.posembb", "model.posembb is not a field in model (did you mean 'posemb'?)"),
        ("batch_sise", "batch_sise is not a field (did you mean 'batch_size'?)"),
        ("modle.scan", "modle is not a field (did you mean 'model'?)"),
        ("batch_size.x", "batch_size is a value, not a section."),
        ("model", "model is a section: set its fields, --config.model.FIELD=VALUE."),
    ],
)
def test_an_unknown_field_is_refused_with_a_did_you_mean(field, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        command_line.load("digits", [(field, "1")])


def test_timm_names_are_read_and_stored_as_ours():
    overrides = [
        ("model.variant", "vit_small_patch16_384"),
        ("model.drop_path_rate", "0.2"),
        ("model.attn_drop_rate", "0.1"),
        ("model.depth", "3"),
    ]
    config = command_line.load("imagenet2012", overrides)
    model = config.model
    assert (model.variant, model.image_size) == ("S/16", (384, 384))
    assert (model.stochastic_depth, model.attention_dropout_rate, model.num_layers) == (
        0.2,
        0.1,
        3,
    )
    assert not {"drop_path_rate", "attn_drop_rate", "depth"} & set(model)
    # Through a config's own argument, and later flags win as usual.
    config = command_line.load(
        "imagenet2012:variant=vit_large_patch14_224", [("model.img_size", "(196, 252)")]
    )
    assert (config.model.variant, config.model.image_size) == ("L/14", (196, 252))
    stored = json.loads(validate(config).config.to_json_best_effort())["model"]
    assert stored["variant"] == "L/14" and "img_size" not in stored
    config = base_config()
    config.model.variant = "vit_base_patch16_224"  # set in Python, it is not read: one message
    with pytest.raises(ValueError, match="'vit_base_patch16_224' is timm's name for 'B/16'"):
        validate(config)


@pytest.mark.parametrize(
    "name,variant,size",
    [
        ("vit_tiny_patch16_224", "Ti/16", 224),
        ("vit_base_patch32_384", "B/32", 384),
        ("vit_huge_patch14_224", "H/14", 224),
        ("vit_giant_patch14_224", "g/14", 224),
    ],
)
def test_timm_model_names_are_a_variant_and_an_image_size(name, variant, size):
    model = model_config(name, 32, num_classes=10)
    assert (model.variant, model.image_size) == (variant, (size, size))
    from vit_jax import models  # and in Python, the name's size unless one is given

    assert models.create(name, num_classes=10) == models.create(
        variant, num_classes=10, image_size=size
    )
    assert models.create(name, num_classes=10, image_size=448).image_size == (448, 448)


def test_split_overrides_takes_both_spellings_and_leaves_the_rest():
    argv = ["prog", "--config=digits", "--config.batch_size=8", "--workdir=w", "--config.seed", "3"]
    rest, overrides = command_line.split_overrides(argv)
    assert rest == ["prog", "--config=digits", "--workdir=w"]
    assert overrides == [("batch_size", "8"), ("seed", "3")]
    with pytest.raises(ValueError, match="--config.seed has no value: write --config.seed=VALUE"):
        command_line.split_overrides(["prog", "--config.seed", "--workdir=w"])


# A config file of one's own, with a boolean argument (--config=PATH:scan=...).
OWN_CONFIG = """
from vit_jax.train.command_line import load
from vit_jax.train.config import parse_arg

def get_config(arg=None):
    config = load("digits")
    with config.unlocked():
        config.model.scan = parse_arg(arg, scan=False)["scan"]
    return config
"""


def test_every_command_line_mistake_is_one_error_line_with_status_2(tmp_path):
    """Through the real CLI, four runs at once: nothing is written and no traceback shown."""
    workdir = tmp_path / "run"
    own = tmp_path / "own.py"
    own.write_text(OWN_CONFIG)
    assert command_line.load(f"{own}:scan=False").model.scan is False
    assert command_line.load(f"{own}:scan=1").model.scan is True
    mistakes = {
        "--config=configs/nope.py": "error: --config=configs/nope.py is neither a file nor",
        "--config.model.posembb=learned": "error: model.posembb is not a field in model (did you",
        "--config.batch_size=big": "error: batch_size='big' is not of type int (e.g. 8).",
        f"--config={own}:scan=maybe": "error: config argument scan='maybe' is not of type bool",
        "--config.seed=-1": "error: seed=-1 is out of range: it must be in [0, 2147483647].",
        "--config.model.variant=None": "error: model.variant must be set: a zoo size and patch",
    }
    assert_each_is_one_error_line(mistakes, ["--config=digits"], workdir)


def assert_each_is_one_error_line(mistakes: dict[str, str], flags: list[str], workdir) -> None:
    """Runs the CLI with `flags` and each flag of `mistakes`, all at once, each in a workdir of
    its own under `workdir` (a mistake found once the run holds its workdir must not meet
    another run's): each must exit with the user-error status, print nothing but one line
    starting as `mistakes` says, and leave no workdir."""
    workdir.mkdir()  # theirs: whether a run that made it removes it would depend on timing
    runs = {
        flag: subprocess.Popen(
            cli.main_command([*flags, flag, f"--workdir={workdir / str(i)}"]),
            env=cli.env(1),
            cwd=cli.ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, flag in enumerate(mistakes)
    }
    for flag, proc in runs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == USER_ERROR, (flag, err[-2000:])
        assert err.startswith(mistakes[flag]) and err.count("\n") == 1, (flag, err[-2000:])
        assert out == ""
    assert list(workdir.iterdir()) == []


def test_a_dataset_not_prepared_is_said_once_with_what_to_do(tmp_path):
    """tfds would first warn about the folder it looked in; the user reads only our message."""
    flags = ["--config=digits", f"--workdir={tmp_path / 'run'}", "--config.data.name=cifar10"]
    out = cli.run([*flags, f"--config.data.data_dir={tmp_path / 'nothing_here'}"], timeout=120)
    assert out.returncode == USER_ERROR, out.stderr[-2000:]
    assert out.stderr.startswith("error: tfds dataset 'cifar10' is not prepared as array_record")
    assert "download_and_prepare()" in out.stderr and "dataset_info.json" not in out.stderr


FAULT_IN_TRAINING = """
import sys
import jax.numpy as jnp
from vit_jax.train import command_line, loop

def library_fault(config, workdir):  # JAX refuses: a bug of ours, not the user's mistake
    return jnp.zeros(3).reshape(2)

def our_check(config, workdir):  # one of our checks refuses
    return command_line.load("digits:nope=1")

loop.train_and_evaluate = library_fault if sys.argv[1] == "library" else our_check
from vit_jax.main import main
main(["vit-train", "--config=digits", f"--workdir={sys.argv[2]}"])
"""


def test_a_libraries_value_error_in_training_is_a_fault_with_its_traceback(tmp_path):
    """Status 2 says "fix your config, do not retry": only for the errors our checks raise.
    A ValueError from inside NumPy/JAX while training keeps its traceback, status 1 (FAULT)."""
    script = tmp_path / "fault.py"
    script.write_text(FAULT_IN_TRAINING)
    ran = {
        origin: subprocess.run(
            [sys.executable, str(script), origin, str(tmp_path / origin)],
            env=cli.env(1),
            cwd=cli.ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        for origin in ("library", "ours")
    }
    assert ran["library"].returncode == stopping.FAULT, ran["library"].stderr[-2000:]
    assert "Traceback" in ran["library"].stderr and "cannot reshape" in ran["library"].stderr
    assert ran["ours"].returncode == USER_ERROR, ran["ours"].stderr[-2000:]
    assert (
        ran["ours"].stderr == "error: config argument 'nope' is not one this config takes "
        "(image_size, posemb, variant).\n"
    )


def test_caused_by_user_tells_our_checks_from_library_errors():
    def raised(action):
        try:
            action()
        except Exception as e:  # the error is what is looked at
            return e
        raise AssertionError("nothing raised")

    assert stopping.caused_by_user(raised(lambda: command_line.load("digits:nope=1")))
    assert stopping.caused_by_user(raised(lambda: open("/nonexistent/file")))
    assert not stopping.caused_by_user(raised(lambda: jnp.zeros(3).reshape(2)))  # JAX's code
    assert not stopping.caused_by_user(raised(lambda: jnp.einsum("ij,jk", np.ones(2), 1.0)))
    assert not stopping.caused_by_user(raised(lambda: 1 / 0))
    assert stopping.caused_by_user(ValueError("never raised"))
    # One of our error types stays ours when another library re-raises it: an unreadable
    # image crosses from a loader worker (pickled) and is raised again in the loader's code.
    future = concurrent.futures.Future()
    bad = UnreadableImageError("train/cat/1.png", OSError("image file is truncated"))
    future.set_exception(pickle.loads(pickle.dumps(bad)))
    again = raised(future.result)
    assert str(again) == str(bad) and again.where == bad.where
    assert stopping.caused_by_user(again)


def test_a_dataset_name_or_split_tfds_cannot_read_is_one_error_line(digits_dir, tmp_path):
    """tfds refuses these itself, inside its own code: still the user's mistake, one line."""
    mistakes = {
        "--config.data.train_split=train[:200%]": "error: data.train_split='train[:200%]' cannot",
        "--config.data.eval_split=test[5:2]": "error: data.eval_split='test[5:2]' cannot be read",
        "--config.data.name=sklearn_digits/foo": "error: tfds cannot open data.name='sklearn_dig",
    }
    flags = ["--config=digits", f"--config.data.data_dir={digits_dir}"]
    assert_each_is_one_error_line(mistakes, flags, tmp_path / "run")


def test_help_prints_the_usage_and_every_flag_and_exits_0(tmp_path):
    """absl's own --help exits with status 1, which reads as a failure in scripts."""
    for flag in ("--help", "-h"):
        out = cli.run([flag, f"--workdir={tmp_path / 'run'}"], timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.startswith("Command line: train and evaluate a ViT")
        for name in ("--config", "--workdir", "--coordinator", "--heartbeat_timeout"):
            assert f"  {name}:" in out.stdout or f"  --[no]{name[2:]}:" in out.stdout, name
        assert not (tmp_path / "run").exists()


def test_show_config_of_a_config_that_cannot_run_is_one_error_line(tmp_path):
    out = cli.run(["--config=digits", "--show_config", "--config.total_steps=0"], timeout=120)
    assert out.returncode == USER_ERROR and out.stdout == ""
    assert out.stderr == "error: total_steps=0 is out of range: it must be >= 1.\n"


def test_show_config_lists_every_field_with_its_value_and_runs_nothing(tmp_path):
    """--show_config: every declared field of every section once, with the overrides applied,
    its help and what it accepts; exit 0, nothing written, no --workdir needed."""
    from vit_jax.data.options import DataOptions
    from vit_jax.models.vit import VisionTransformer
    from vit_jax.options import options_of
    from vit_jax.train.config import SECTIONS, TrainOptions

    flags = ["--config=digits", "--show_config", "--config.model.posemb=rope_axial"]
    out = cli.run([*flags, "--config.data.flip=True", "--config.optimizer.b1=0.8"], timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    fields = {line.split(" = ")[0]: line.split(" = ")[1] for line in out.stdout.split("\n") if line}
    declared = [o.name for o in options_of(TrainOptions)]
    declared += [f"model.{o.name}" for o in options_of(VisionTransformer)]
    declared += [f"data.{o.name}" for o in options_of(DataOptions)]
    assert set(declared) <= set(fields)
    assert {name.split(".")[0] for name in fields if "." in name} == set(SECTIONS)
    assert fields["model.posemb"].startswith("'rope_axial'  position embedding: 'none': no ")
    assert fields["model.patch_size"].startswith("(4, 4)")  # from the variant, Ti/4
    assert (
        fields["data.flip"]
        == "True  random horizontal flip in training (off for digits) (true or false)"
    )
    assert fields["optimizer.b1"].startswith("0.8  AdamW") and fields["optimizer.b1"].endswith(
        "(in [0, 1))"
    )
    assert "(one of jit, pmap)" in fields["parallel"]
    assert not os.listdir(tmp_path)
    bad = cli.run(["--config=digits", "--show_config", "--config.model.posem=x"], timeout=120)
    assert bad.returncode == 2 and "did you mean 'posemb'" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = cli.run(["--config=digits"], timeout=120)
    assert missing.returncode == 2 and "--workdir is required" in missing.stderr


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("vit_jax.tools.inspect", [], "the following arguments are required: path"),
        ("vit_jax.tools.convert", ["only_src"], "the following arguments are required: dst"),
        ("vit_jax.predict", ["--checkpoint", "c", "--top", "0", "x.png"], "--top must be at"),
        ("vit_jax.experiments.posemb_study", ["--train-sizes", "a"], "'a' is not whole numbers"),
    ],
)
def test_a_usage_mistake_on_any_command_is_one_error_line(module, argv, message, capsys):
    """argparse's own errors too: no usage block, status 2, as every other mistake."""
    import importlib

    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(argv)
    assert exit_.value.code == USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
