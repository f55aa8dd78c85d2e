"""A training config from the command line, as `vit-train` (vit_jax/main.py) and `vit-memory`
read it:

    --config=digits                     a packaged config: configs/digits.py of the repository,
                                        installed with the package as vit_jax/configs/digits.py
    --config=path/to/my_config.py       any config file (a `get_config(arg=None)` function)
    --config=digits:posemb=rope_axial   ARG after the first colon goes to get_config(ARG)
    --config.model.posemb=rope_axial    any field (also `--config.FIELD VALUE`); the value is
                                        read as the field's type (`options.from_text`)
    --config.model.drop_path_rate=0.1   timm's names are read as ours and stored as ours
                                        (model.stochastic_depth; `config.timm_to_ours`)

A path that exists is a file; otherwise a name is looked up among the packaged configs. Every
mistake raises one ValueError saying what is wrong and how to fix it: a config that does not
exist (naming the packaged ones), a field that does not exist (with a did-you-mean), a value
that is not of the field's type. The values themselves are checked by `validate`
(vit_jax/train/config.py), once, before anything runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence

import ml_collections

from vit_jax.models import zoo
from vit_jax.options import did_you_mean, from_text, unknown_field
from vit_jax.train.config import SIZE_FIELDS, config_from_file, timm_to_ours

PREFIX = "--config."
HELP = {"-h", "-?", "--help", "--helpshort"}  # absl's own --help exits with status 1
_TYPES = (bool, int, float, str, tuple)


def usage(doc: str, flag_values, module) -> str:
    """A command's --help text: its module docstring `doc` and the flags that `module` defines
    in `flag_values` (not absl's own)."""
    own = flag_values.module_help(module).strip().split("\n", 1)[1]
    return "\n\n".join([doc.rstrip(), "Flags:", own])


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Takes the overrides out of a command line: (the other arguments, [(FIELD, VALUE)]) from
    `--config.FIELD=VALUE` and `--config.FIELD VALUE`, in their order."""
    rest, overrides = [], []
    args = iter(argv)
    for arg in args:
        if not arg.startswith(PREFIX):
            rest.append(arg)
            continue
        field, sep, value = arg[len(PREFIX) :].partition("=")
        if not sep:
            value = next(args, "--")
            if value.startswith("--"):
                raise ValueError(f"{arg} has no value: write {arg}=VALUE.")
        overrides.append((field, value))
    return rest, overrides


def packaged_configs() -> dict[str, str]:
    """{name: path} of the configs that come with the package: vit_jax/configs/ when installed,
    the repository's configs/ in a source checkout."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    folder = os.path.join(package, "configs")
    if not os.path.isdir(folder):
        folder = os.path.join(os.path.dirname(package), "configs")
    files = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return {f[:-3]: os.path.join(folder, f) for f in files if f.endswith(".py") and f[0] != "_"}


def config_file(name_or_path: str) -> str:
    """The file of --config=NAME_OR_PATH: the path if it is a file, else the packaged config of
    that name."""
    if os.path.isfile(name_or_path):
        return name_or_path
    packaged = packaged_configs()
    if name_or_path in packaged:
        return packaged[name_or_path]
    stem = os.path.splitext(os.path.basename(name_or_path))[0]
    hint = f" (did you mean {stem!r}?)" if stem in packaged else did_you_mean(stem, packaged)
    raise ValueError(
        f"--config={name_or_path} is neither a file nor a packaged config{hint}: give the path "
        f"of a config file, or one of the packaged configs: {', '.join(packaged)}."
    )


def load(spec: str, overrides: Iterable[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
    """The config of `--config=SPEC` (NAME_OR_PATH[:ARG]) with the overrides applied, locked
    (no field can be added)."""
    name_or_path, sep, arg = spec.partition(":")
    config = config_from_file(config_file(name_or_path), arg if sep else None)
    config.lock()
    overrides = list(overrides)
    for field, text in overrides:
        override(config, field, text)
    if note := variant_note(config, [field for field, _ in overrides]):
        print(f"note: {note}", file=sys.stderr)
    return config


def variant_note(config: ml_collections.ConfigDict, overridden: Sequence[str]) -> str | None:
    """What a `--config.model.variant` override does not do: sizes that the config file sets
    itself (and the command line does not) win over the variant's; None if there are none."""
    asked = {  # model fields set on the command line, timm's names read as ours
        zoo.TIMM_FIELDS.get(field[len("model.") :], field[len("model.") :])
        for field in overridden
        if field.startswith("model.")
    }
    if "variant" not in asked or "model" not in config:
        return None
    if not isinstance(config.model.variant, str):  # unset: the config's check says so
        return None
    try:
        zoo.decode_variant(config.model.variant)
    except ValueError:  # an unknown variant: the config's check says so, without this note
        return None
    kept = {
        name: config.model.get(name)
        for name in SIZE_FIELDS
        if config.model.get(name) is not None and name not in asked
    }
    if not kept:
        return None
    sizes = ", ".join(f"{name}={value}" for name, value in kept.items())
    unset = " ".join(f"--config.model.{name}=None" for name in kept)
    return (
        f"model.variant={config.model.variant!r} gives the patch size, but the config sets "
        f"{sizes} itself, and those stay; for the variant's sizes add {unset} (or pass the "
        "variant as the config's argument if it takes one, e.g. --config=digits:variant=S/4)."
    )


def override(config: ml_collections.ConfigDict, field: str, text: str) -> None:
    """Sets the dotted `field` of `config` from its command-line text, read as the field's type.
    In the model section timm's names are read as ours."""
    *sections, key = field.split(".")
    holder = config
    for depth, name in enumerate(sections):
        if name not in holder:
            raise unknown_field(".".join(sections[: depth + 1]), holder.keys())
        holder = holder[name]
        if not isinstance(holder, ml_collections.ConfigDict):
            raise ValueError(f"{'.'.join(sections[: depth + 1])} is a value, not a section.")
    is_model = sections == ["model"]
    key = zoo.TIMM_FIELDS.get(key, key) if is_model else key
    if key not in holder:
        raise unknown_field(field, [*holder.keys(), *(zoo.TIMM_FIELDS if is_model else ())])
    kind = holder.get_type(key)
    if isinstance(kind, type) and issubclass(kind, ml_collections.ConfigDict):
        raise ValueError(f"{field} is a section: set its fields, --config.{field}.FIELD=VALUE.")
    value = from_text(field, text, kind if kind in _TYPES else None)
    for name, ours in (timm_to_ours({key: value}) if is_model else {key: value}).items():
        holder[name] = ours
