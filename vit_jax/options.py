"""Declared options: every setting's default, type, allowed values and one-line help, in one place.

A group of settings is a frozen dataclass (or a Flax module: it is a dataclass too) whose fields
are declared with `option`:

    @dataclasses.dataclass(frozen=True)
    class DataOptions:
        augment: str = option("inception", "training augmentation", choices=("inception", "resize"))
        crop_area_min: float = option(0.08, "smallest crop area fraction", low=0, low_open=True,
                                      high=1)

From that one declaration come the config's defaults (`to_config`), the checks of a config
section (`read`, `check`: one `ValueError` per mistake, naming the field, the value and what
would work) and the help text (`Option.help`). The error helpers `unknown_choice`,
`out_of_range` and `unknown_field` are the only places that word those messages; `from_text`
reads a value written on the command line as its field's type.

This module knows no field of its own; it imports nothing from the rest of the package.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import math
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

_KEY = "vit_jax_option"
MISSING = dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting: `name`, `default` (MISSING: required), `help`, the `type` of a non-None
    value, and its constraints: `choices`, or a range [low, high] (either end open or absent).
    `optional`: None is allowed (the default None means "not set")."""

    name: str
    default: Any
    help: str
    type: type | None = None
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False

    @property
    def range_text(self) -> str:
        """The allowed interval, e.g. "[0, 1)" or ">= 1"; "" when unbounded."""
        if self.low is not None and self.high is not None:
            return (
                f"{'(' if self.low_open else '['}{_bound(self.low)}, {_bound(self.high)}"
                f"{')' if self.high_open else ']'}"
            )
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_bound(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_bound(self.high)}"
        return ""

    def check(self, value: Any, where: str = "") -> Any:
        """Returns `value` (an int where a float is declared becomes a float); raises ValueError
        if it has the wrong type, is not among the choices or is out of range."""
        field = where + self.name
        if value is None:
            if self.optional or self.default is None:
                return None
            raise ValueError(f"{field} must be set ({self.help}).")
        value = _as_type(field, value, self.type)
        if self.choices is not None and value not in self.choices:
            raise unknown_choice(field, value, self.choices)
        if not _in_range(value, self):
            raise out_of_range(field, value, self.range_text)
        return value


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    type: type | None = None,
    choices: tuple | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> Any:
    """A dataclass field declared with its Option (the name is the field's own)."""
    spec = Option(
        name="",
        default=default,
        help=help,
        type=type if type is not None or default in (None, MISSING) else _type_of(default),
        choices=tuple(choices) if choices is not None else None,
        low=low,
        high=high,
        low_open=low_open,
        high_open=high_open,
        optional=optional or default is None,
    )
    return dataclasses.field(default=default, metadata={_KEY: spec})


def options_of(cls: type) -> tuple[Option, ...]:
    """The declared options of a dataclass, in field order (fields without one are skipped)."""
    return tuple(
        dataclasses.replace(f.metadata[_KEY], name=f.name)
        for f in dataclasses.fields(cls)
        if _KEY in f.metadata
    )


def describe(cls: type, values: Mapping[str, Any], where: str = "") -> list[str]:
    """One line per option of `cls`: `where`name = its value in `values` (else the default),
    then the help and what it accepts, e.g.
    "data.flip = True  random horizontal flips (true or false)"."""
    lines = []
    for opt in options_of(cls):
        value = values.get(opt.name, opt.default)
        shown = "(required)" if value is MISSING else repr(value)
        accepts = (
            f"one of {', '.join(map(str, opt.choices))}"
            if opt.choices is not None
            else _range_words(opt.range_text)
            if opt.range_text
            else "true or false"
            if opt.type is bool
            else ""
        )
        if opt.optional and accepts:
            accepts += ", or None"
        lines.append(
            f"{where}{opt.name} = {shown}  {opt.help}" + (f" ({accepts})" if accepts else "")
        )
    return lines


def unknown_choice(field: str, value: Any, choices) -> ValueError:
    """The error for a value that is not one of `choices` (with a did-you-mean)."""
    choices = tuple(choices)
    hint = did_you_mean(value, choices)
    return ValueError(f"{field}={value!r} is unknown{hint}; use one of {choices}.")


def _bound(x: float) -> str:
    """A range's end as written: 2147483647, not 2.14748e+09; 0.5 as 0.5."""
    return str(x) if isinstance(x, int) else f"{x:g}"


def out_of_range(field: str, value: Any, allowed: str) -> ValueError:
    """The error for a value outside its allowed range, e.g. allowed="[0, 1)" or ">= 1"."""
    return ValueError(f"{field}={value!r} is out of range: it must be {_range_words(allowed)}.")


def unknown_field(field: str, valid) -> ValueError:
    """The error for a config field that does not exist (with a did-you-mean)."""
    prefix, _, name = field.rpartition(".")
    hint = did_you_mean(name, tuple(valid))
    where = f" in {prefix}" if prefix else ""
    return ValueError(
        f"{field} is not a field{where}{hint}. Valid fields: {', '.join(sorted(valid))}."
    )


def check(
    cls: type, values: Mapping[str, Any], where: str = "", *, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Checks a config section against the options of `cls`: every key must be an option (or in
    `extra`, passed through unchecked) and every value valid. Returns {name: value} with the
    defaults filled in for absent keys. `where` prefixes field names in messages ("data.")."""
    declared = {o.name: o for o in options_of(cls)}
    for key in values:
        if key not in declared and key not in extra:
            raise unknown_field(where + key, (*declared, *extra))
    out = {key: values[key] for key in extra if key in values}
    for name, opt in declared.items():
        if name in values:
            out[name] = opt.check(values[name], where)
        elif opt.default is MISSING:
            raise ValueError(f"{where}{name} must be set ({opt.help}).")
        else:
            out[name] = opt.default
    return out


def read(cls: type, values: Mapping[str, Any], where: str = ""):
    """`cls(**check(cls, values, where))`: a config section as a typed, checked instance."""
    return cls(**check(cls, dict(values), where))


def to_config(cls: type, **overrides) -> ml_collections.ConfigDict:
    """A ConfigDict with every option of `cls` at its default (None defaults as typed
    placeholders, so that they can be set from the command line); required options without a
    value in `overrides` are left out."""
    cfg = ml_collections.ConfigDict()
    for opt in options_of(cls):
        if opt.name in overrides:
            value = overrides.pop(opt.name)
        elif opt.default is MISSING:
            continue
        else:
            value = opt.default
        if value is None and opt.type is not None:
            cfg[opt.name] = config_dict.placeholder(opt.type)
        else:
            cfg[opt.name] = value
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_EXAMPLES = {bool: "true or false", int: "e.g. 8", float: "e.g. 0.1", tuple: "e.g. (224, 160)"}


def from_text(field: str, text: str, kind: type | None) -> Any:
    """A value written on the command line, read as `kind` (the field's type): bool from
    true/false/1/0/yes/no (any case), int, float, tuple from a Python literal ("(224, 160)"; an
    int n means (n, n)), str as is; `kind` None: a Python literal if `text` is one, else the
    text. "None" is None for every kind (the checks then say whether the field may be unset).
    Raises ValueError naming the field, the text and the type it must have."""
    if text == "None":
        return None
    if kind is str:
        return text
    if kind is bool and text.lower() in _BOOLEANS:
        return _BOOLEANS[text.lower()]
    if kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    if kind in (tuple, None):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text if kind is None else None
        if kind is None:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return (value, value)
        if isinstance(value, tuple | list):
            return tuple(value)
    name = getattr(kind, "__name__", str(kind))
    hint = _EXAMPLES.get(kind, "see the field's help")
    raise ValueError(f"{field}={text!r} is not of type {name} ({hint}).")


def _type_of(default: Any) -> type | None:
    return type(default) if isinstance(default, bool | int | float | str) else None


def _as_type(field: str, value: Any, kind: type | None) -> Any:
    if kind is None:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ValueError(
        f"{field}={value!r} has type {type(value).__name__}; it must be of type {kind.__name__}."
    )


def _in_range(value: Any, opt: Option) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return True
    if isinstance(value, float) and math.isnan(value):
        return opt.low is None and opt.high is None
    if opt.low is not None and (value <= opt.low if opt.low_open else value < opt.low):
        return False
    return opt.high is None or (value < opt.high if opt.high_open else value <= opt.high)


def _range_words(allowed: str) -> str:
    return f"in {allowed}" if allowed[:1] in "([" else allowed


def did_you_mean(value: Any, choices: tuple) -> str:
    """The hint ` (did you mean 'x'?)` for the choice closest to `value`; "" if none is close."""
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
