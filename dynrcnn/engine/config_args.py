"""The argparse bridge of the run configurations: one --option per dataclass field.

Every field of `TrainConfig` / `EvalConfig` (nested `DynamicConfig` included) is settable
from the command line through `add_dataclass_args` + `dataclass_from_args`, so the CLI never
lists options by hand and a new field is available everywhere at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import typing
from fractions import Fraction
from typing import Any, Dict, Optional, Sequence, Tuple, Type, TypeVar

from dynrcnn.engine.config import config_from_dict

T = TypeVar("T")

_SEP = "__"  # dest of a nested field: dynamic__k_iou


def _number(text: str) -> float:
    """A float that also accepts fractions such as 8/12 (the schedule's natural unit)."""
    return float(Fraction(text)) if "/" in text else float(text)


def _optional(convert: Any) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null", "") else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _json_dict(text: str) -> Dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _unwrap_optional(hint: Any) -> Tuple[Any, bool]:
    args = typing.get_args(hint)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def field_docs(cls: Type[Any]) -> Dict[str, str]:
    """Per-field help from a dataclass docstring's `name, name: text` lines (continuation
    lines indented deeper), as DynamicConfig and TrainConfig write them."""
    docs: Dict[str, str] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    current: list = []
    for line in (cls.__doc__ or "").splitlines():
        match = re.match(r"^ {4}([a-z_][\w, ]*): (.*)$", line)
        keys = [k.strip() for k in match.group(1).split(",")] if match else []
        if match and keys and all(k in names for k in keys):
            current = keys
            for key in keys:
                docs[key] = match.group(2).strip()
        elif current and line.startswith(" " * 8) and line.strip():
            for key in current:
                docs[key] += " " + line.strip()
        else:
            current = []
    return docs


def add_dataclass_args(parser: argparse.ArgumentParser, cls: Type[Any], prefix: str = "",
                       _dest: str = "",
                       choices: Optional[Dict[str, Sequence[str]]] = None,
                       several: Sequence[str] = ()) -> None:
    """Add one --option per field of dataclass `cls` (nested dataclasses get a prefix:
    --dynamic-k-iou). Booleans get --x / --no-x; tuples take several values; dicts take a
    JSON object; Optional fields accept 'none'. `choices` maps field names to their
    allowed values (listed in --help); fields in `several` take one or more values (a
    list: the study's --iterations A B).

    No option has a parser default (argparse.SUPPRESS): the namespace holds exactly the
    options given on the command line, so `dataclass_from_args` can lay them over a config
    file, which lies over the dataclass defaults (shown in --help). An option given with
    the default's value therefore still overrides the file."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} ({prefix.rstrip('-') or 'main'})")
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        hint, optional = _unwrap_optional(hints[f.name])
        flag = "--" + prefix + f.name.replace("_", "-")
        dest = _dest + f.name
        if dataclasses.is_dataclass(hint):
            add_dataclass_args(parser, hint, prefix=prefix + f.name.replace("_", "-") + "-",
                               _dest=dest + _SEP)
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
            else f.default
        allowed = (choices or {}).get(f.name)
        doc = f.metadata.get("help", docs.get(f.name, "")).rstrip(".")
        if allowed:
            doc = (doc + "; " if doc else "") + "one of " + ", ".join(allowed)
        doc = (doc + " " if doc else "") + f"(default: {default!r})"
        doc = doc.replace("%", "%%")
        common = {"dest": dest, "default": argparse.SUPPRESS, "help": doc}
        origin = typing.get_origin(hint)
        if hint is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif origin in (tuple, list):
            item = typing.get_args(hint)[0]
            convert = _number if item is float else item
            group.add_argument(flag, nargs="+", type=convert, metavar=item.__name__.upper(),
                               **common)
        elif origin is dict or hint is dict:
            group.add_argument(flag, type=_json_dict, metavar="JSON", **common)
        else:
            convert = _number if hint is float else hint
            if optional:
                convert = _optional(convert)
            if allowed:
                common["choices"] = list(allowed) + ([None] if optional else [])
            nargs = {"nargs": "+"} if f.name in several else {}
            if nargs:
                common["help"] = common["help"].replace(" (default:", "; one or more values "
                                                        "(default:", 1)
            group.add_argument(flag, type=convert, metavar=hint.__name__.upper(), **common,
                               **nargs)


def given_fields(cls: Type[Any], args: argparse.Namespace, prefix: str = "") -> Dict[str, Any]:
    """The fields of `cls` given on the command line (a namespace of add_dataclass_args),
    as a dict in config_to_dict's shape (nested dataclasses as partial dicts)."""
    hints = typing.get_type_hints(cls)
    values = vars(args)
    out: Dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint, _ = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(hint):
            nested = given_fields(hint, args, prefix=prefix + f.name + _SEP)
            if nested:
                out[f.name] = nested
            continue
        if prefix + f.name not in values:
            continue
        value = values[prefix + f.name]
        if typing.get_origin(hint) is tuple and value is not None:
            value = tuple(value)
        out[f.name] = value
    return out


def dataclass_from_args(cls: Type[T], args: argparse.Namespace,
                        base: Optional[Dict[str, Any]] = None) -> T:
    """Build `cls` from the options given in `args` (see add_dataclass_args), laid over
    `base` (e.g. a config file's fields), laid over the dataclass defaults."""
    merged = dict(base or {})
    for key, value in given_fields(cls, args).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and \
                dataclasses.is_dataclass(_unwrap_optional(typing.get_type_hints(cls)[key])[0]):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return config_from_dict(cls, merged)
