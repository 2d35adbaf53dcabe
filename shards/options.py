"""Command-line options built from a stage's config dataclass: each option is written once, as a field.

``add_config_arguments(parser, Config)`` adds one option per field of ``Config``: the flag is the
field's name with dashes (``clip_len`` -> ``--clip-len``), the type and default come from the field,
and the help text is the field's docstring (the string literal under it). The usual shapes map
without help:

    field                              command line
    x: int = 3 / float / str           --x VALUE
    x: int | None = None               --x VALUE (absent: None)
    x: bool = False                    --x
    x: bool = True                     --no-x
    x: tuple[str, ...]                 --x A B ... (repeatable; adds up)
    x: tuple[int, int]                 --x A B
    x: str (no default)                --x VALUE, required

A ``Flag`` in ``flags`` changes what does not fit (a positional, a repeated ``--prompt`` that fills
``prompts``, a parser such as ``1G`` for bytes). ``config_from_args(Config, args)`` reads the parsed
values back into a ``Config``.

A config made of sections (the training run's: ``data``, ``model``, ``optim``, ...) is given the same
way, one option per field, named by its dotted path (``add_section_arguments``): ``--optim.lr 1e-4``,
``--data.train A B``, ``--model.gradient-checkpointing`` (true) or ``--model.gradient-checkpointing
false``. Those values are read as YAML scalars, as a recipe file would hold them, and
``settings_from_args`` hands them to the config's own loader, which checks them all at once.
Every option may be spelt with ``_`` or ``-`` (``normalize_option_names``).

The module imports nothing heavy: ``videobert --help`` stays fast.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import yaml


@dataclass(frozen=True)
class Flag:
    """How one field appears on the command line where the default mapping does not fit."""

    name: str | None = None
    """The option (``--prompt``); None: from the field's name."""
    positional: bool = False
    help: str | None = None
    """Help text; None: the field's docstring."""
    type: Callable[[str], Any] | None = None
    nargs: str | int | None = None
    action: str | None = None
    metavar: str | tuple[str, ...] | None = None
    choices: tuple[Any, ...] | None = None
    hidden: bool = False
    """Parsed but not listed in ``--help``."""


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, flags: Mapping[str, Flag] | None = None,
                         exclude: tuple[str, ...] = ()) -> None:
    """One option per field of the dataclass ``cls`` (see the module doc)."""
    flags = flags or {}
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        flag = flags.get(f.name, Flag())
        names, options = _argument(f, hints[f.name], flag, docs.get(f.name, ""))
        parser.add_argument(*names, **options)


def config_from_args(cls: type, args: argparse.Namespace, **values: Any) -> Any:
    """A ``cls`` from the parsed options (``values`` set fields that have no option)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in values or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        values[f.name] = tuple(value) if isinstance(value, list) and _is_tuple(hints[f.name]) else value
    return cls(**values)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body (inherited ones included)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body
        for node, following in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and _is_docstring(following):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _argument(f: dataclasses.Field, hint: Any, flag: Flag, doc: str) -> tuple[list[str], dict[str, Any]]:
    default = _default(f)
    required = default is dataclasses.MISSING
    inner = _without_none(hint)
    switch_off = inner is bool and not flag.action and default is True
    text = flag.help or (f"off: {_sentence(doc)}" if switch_off and doc else doc)
    options: dict[str, Any] = {"help": argparse.SUPPRESS if flag.hidden else _help(text, default)}
    name = flag.name or "--" + f.name.replace("_", "-")
    if inner is bool and not flag.action:
        name = flag.name or ("--no-" if switch_off else "--") + f.name.replace("_", "-")
        options["action"] = "store_false" if switch_off else "store_true"
    else:
        options.update(_value_options(inner, flag))
    if options.get("action") in ("extend", "append") and not flag.hidden and not flag.positional:
        options["help"] += " (repeatable)"
    if flag.positional:
        return [f.name], options | ({} if required else {"nargs": "?", "default": default})
    options["dest"] = f.name
    if required:
        options["required"] = True
    elif options.get("action") not in ("store_true", "store_false"):
        options["default"] = list(default) if isinstance(default, tuple) else default  # argparse adds to lists
        if options.get("action") == "extend" and default:
            options["action"] = _ExtendReplacingDefault
    return [name], options


class _ExtendReplacingDefault(argparse.Action):
    """``extend`` for a list with a non-empty default: the option's first use replaces the default
    (``--rows encoder`` means that row alone), later uses add to what was given."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(namespace, self.dest, None)
        kept = [] if given is None or given is self.default else list(given)
        setattr(namespace, self.dest, kept + list(values))


def _value_options(hint: Any, flag: Flag) -> dict[str, Any]:
    options: dict[str, Any] = {}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and args[-1] is Ellipsis:  # a list of values, repeatable
        options.update(action="extend", nargs="+", type=args[0])
    elif origin is tuple:  # a fixed number of values
        options.update(nargs=len(args), type=args[0])
    elif hint in (int, float, str):
        options["type"] = hint
    for key in ("type", "nargs", "action", "metavar", "choices"):
        if getattr(flag, key) is not None:
            options[key] = getattr(flag, key)
    if options.get("action") == "append":
        options.pop("nargs", None)
    if options.get("type") is str:
        del options["type"]
    return options


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _sentence(doc: str) -> str:
    """A docstring as help text: no reST literals, no final period, lower-case start (unless a name)."""
    text = doc.replace("``", "").strip().rstrip(".")
    first = text.split(" ", 1)[0]
    return text[:1].lower() + text[1:] if len(first) == 1 or first[1:].islower() else text


def _help(doc: str, default: Any) -> str:
    text = _sentence(doc).replace("%", "%%")
    if default is None or default is dataclasses.MISSING or isinstance(default, bool) or default == () \
            or "default" in doc.lower():
        return text
    shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
    return f"{text} (default {shown})".strip()


def _without_none(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _is_tuple(hint: Any) -> bool:
    return typing.get_origin(_without_none(hint)) is tuple


# ---------------------------------------------------------------------------------------------
# configs made of sections: one option per field, named by its dotted path

SETTING = "setting:"
"""Prefix of the ``dest`` of a section option: the parsed namespace keeps them apart from the rest."""


def add_section_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                          group: argparse._ActionsContainer | None = None) -> None:
    """``--section.field VALUE`` for every field of the dataclass ``cls`` and of its sections (each
    section an argument group in ``--help``); absent options are absent from the namespace."""
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint, dotted = hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(hint):
            section = parser.add_argument_group(f"{dotted} (section)", _sentence(hint.__doc__ or "") or None)
            add_section_arguments(parser, hint, dotted + ".", section)
            continue
        (group or parser).add_argument("--" + dotted.replace("_", "-"), dest=SETTING + dotted, default=argparse.SUPPRESS,
                                       metavar=f.name.upper(), help=_help(docs.get(f.name, ""), _default(f)),
                                       **_setting_shape(hint))


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted key -> value of the section options given on the command line, in the order of the class."""
    return {k[len(SETTING):]: v for k, v in vars(args).items() if k.startswith(SETTING)}


def _setting_shape(hint: Any) -> dict[str, Any]:
    inner = _without_none(hint)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if inner is bool:
        return {"nargs": "?", "const": True, "type": yaml_value}
    if origin is list or (origin is tuple and args[-1] is Ellipsis):
        return {"nargs": "+", "type": yaml_value, "action": _ListOrOne}
    if origin is tuple:
        return {"nargs": len(args), "type": yaml_value}
    return {"type": yaml_value}


class _ListOrOne(argparse.Action):
    """A list option given one YAML list (``--data.train '[a, b]'``) keeps that list."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values[0] if len(values) == 1 and isinstance(values[0], list) else list(values))


def yaml_value(text: str) -> Any:
    """A command-line value read as a YAML scalar (``1e-4``, ``true``, ``[a, b]``); text that is not
    valid YAML stays text, for the config's loader to report against its field."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except (yaml.YAMLError, RecursionError):
        return text


def normalize_option_names(argv: Sequence[str]) -> list[str]:
    """``--clip_len`` -> ``--clip-len``, ``--optim.micro_batch_size=8`` -> ``--optim.micro-batch-size=8``:
    options are registered with dashes and may be typed as the config files spell the fields."""
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg.partition("=")
            arg = name.replace("_", "-") + eq + value
        out.append(arg)
    return out


def parse_bytes(text: str) -> int:
    """``1G``, ``500M``, ``64k`` or a plain number of bytes (powers of 1024)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        if value and value[-1] in units:
            return int(float(value[:-1]) * units[value[-1]])
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 1G, 500M or 1048576") from None
