"""Settings for every command-line tool: one mechanism, used by train.py, sample.py and the `gpt.*` tools.

Each tool declares its settings as a dataclass whose fields carry a default and a one-line help
(`setting(default, "help")`). `parse_args` builds one from, in increasing priority:

    the dataclass defaults  <  a TOML file (first positional argument, or --config)  <  --name=value flags

Flags are written `--name=value` or `--name value`; dashes may stand for underscores (`--max-iters`).
A boolean flag given alone means true (`--compile`), and `--name=false` turns it off. A list setting
(`stop`) may be repeated. Unknown names and values of the wrong type are `UserError`s naming the setting.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
import types
import typing
from pathlib import Path
from typing import Any

from gpt.errors import UserError

_MISSING = dataclasses.MISSING


def setting(default: Any, help: str) -> Any:
    """A dataclass field with a default and a one-line meaning (shown by --help)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


# ---------------------------------------------------------------------------------------------------
# Types: each setting's annotation is one of bool, int, float, str, list[str] | list[int], or X | None.


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _type_name(tp: Any) -> str:
    inner, optional = _unwrap_optional(tp)
    if typing.get_origin(inner) is list:
        name = f"list of {_type_name(typing.get_args(inner)[0])}s"
    else:
        name = {bool: "true/false", int: "integer", float: "number", str: "string"}.get(inner, str(inner))
    return name + (" or none" if optional else "")


def _convert(name: str, tp: Any, value: Any, *, from_text: bool) -> Any:
    """Convert `value` (a command-line string, or a TOML value) to the setting's type, or raise UserError."""
    inner, optional = _unwrap_optional(tp)
    bad = UserError(f"setting {name} expects {_article(_type_name(tp))}, got {value!r}")
    if optional and (value is None or (from_text and str(value).lower() in ("none", "null", ""))):
        return None
    if typing.get_origin(inner) is list:
        item_type = typing.get_args(inner)[0]
        items = value if isinstance(value, list) else [value]
        if from_text and item_type in (int, float):  # numbers may also come as one list: --depths 1,2,3
            items = [part for item in items for part in str(item).split(",") if part.strip()]
        return [_convert(name, item_type, v, from_text=from_text) for v in items]
    if inner is bool:
        if isinstance(value, bool):
            return value
        if from_text and str(value).lower() in ("true", "1", "yes", "on"):
            return True
        if from_text and str(value).lower() in ("false", "0", "no", "off"):
            return False
        raise bad
    if inner is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if from_text:
            try:
                return int(str(value))
            except ValueError:
                pass
        raise bad
    if inner is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            result = float(value)
        elif from_text:
            try:
                result = float(str(value))
            except ValueError:
                raise bad from None
        else:
            raise bad
        if math.isnan(result):
            raise bad
        return result
    if inner is str:
        if isinstance(value, str):
            return value
        if from_text:
            return str(value)
        raise bad
    raise TypeError(f"unsupported setting type {tp!r} for {name}")  # a bug in a config class


def _article(type_name: str) -> str:
    return ("an " if type_name[0] in "aeiou" else "a ") + type_name


# ---------------------------------------------------------------------------------------------------
# Building a config from dicts, TOML files and the command line.


def _unknown(cls: type, name: str, where: str) -> UserError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else " (see --help for the list)"
    return UserError(f"unknown setting {name!r} {where}{hint}")


def from_dict(cls: type, values: dict[str, Any], *, where: str = "", base: Any = None) -> Any:
    """A `cls` with `values` (already typed, e.g. from TOML) applied over `base` or the defaults."""
    types_ = _field_types(cls)
    current = dataclasses.asdict(base) if base is not None else {}
    for name, value in values.items():
        key = name.replace("-", "_")
        if key not in types_:
            raise _unknown(cls, name, where)
        current[key] = _convert(key, types_[key], value, from_text=False)
    return cls(**current)


def load_toml(path: str | Path) -> dict[str, Any]:
    """The settings in a TOML file, flattened: tables ([model], [optimizer], ...) are only for grouping."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None
    flat: dict[str, Any] = {}

    def walk(table: dict[str, Any]) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                walk(value)
            else:
                flat[key] = value

    walk(data)
    return flat


def to_toml(config: Any) -> str:
    """The config as TOML text that `load_toml` reads back to the same values (None settings are left out)."""
    lines = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None:
            lines.append(f"# {f.name} = (none)")
            continue
        lines.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_string(s: str) -> str:
    escaped = s.replace("\\", "\\\\").replace('"', '\\"')
    for ch, esc in (("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")):
        escaped = escaped.replace(ch, esc)
    escaped = "".join(c if c.isprintable() or c in "\\" else f"\\u{ord(c):04x}" for c in escaped)
    return f'"{escaped}"'


def parse_args(
    cls: type, argv: list[str] | None = None, *, prog: str = "", description: str = "", base: Any = None,
    explicit: set[str] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Parse a command line into a `cls`, starting from `base` (default: the dataclass defaults).

    Returns the config and the settings given explicitly on the command line (name -> typed value).
    A resumed training run passes its saved settings as `base`, so the TOML file and flags override them.
    `explicit`, when given, receives the names set by the TOML file or the flags (those a rule that derives
    settings from others, like gpt/scaling.py's, must leave as they are).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    types_ = _field_types(cls)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(cls, prog=prog, description=description))
        raise SystemExit(0)

    config_path: str | None = None
    flags: list[tuple[str, str | None]] = []  # (name, value or None when the flag stood alone)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            if config_path is None and arg.endswith(".toml"):
                config_path = arg
                i += 1
                continue
            raise UserError(f"unexpected argument {arg!r}: settings are written --name=value (see --help)")
        body = arg[2:]
        if "=" in body:
            name, value = body.split("=", 1)
        else:
            name, value = body, None
            key = name.replace("-", "_")
            is_bool = _unwrap_optional(types_.get(key, str))[0] is bool
            next_is_value = i + 1 < len(argv) and not (argv[i + 1].startswith("--") and len(argv[i + 1]) > 2)
            # An unknown name takes the next word as its value too, so that a mistyped `--max_new_token 10`
            # is reported as the unknown setting it is (with a suggestion), not as a stray '10'.
            if key == "config" or (key not in types_ and next_is_value) or (key in types_ and not is_bool):
                if not next_is_value:
                    raise UserError(f"setting {key} needs a value: --{key}=VALUE")
                value = argv[i + 1]
                i += 1
            elif is_bool and next_is_value and argv[i + 1].lower() in ("true", "false"):
                value = argv[i + 1]
                i += 1
        key = name.replace("-", "_")
        if key == "config" and "config" not in types_:
            config_path = value
        else:
            flags.append((key, value))
        i += 1

    base = cls() if base is None else base
    if config_path is not None:
        from_file = load_toml(config_path)
        base = from_dict(cls, from_file, where=f"in {config_path}", base=base)
        if explicit is not None:
            explicit.update(name.replace("-", "_") for name in from_file)

    overrides: dict[str, Any] = {}
    for key, value in flags:
        if key not in types_:
            raise _unknown(cls, key, "on the command line")
        tp = types_[key]
        inner, _ = _unwrap_optional(tp)
        if value is None:  # a boolean flag on its own
            typed: Any = True
        else:
            typed = _convert(key, tp, value, from_text=True)
        if typing.get_origin(inner) is list and key in overrides:
            typed = overrides[key] + typed  # repeated list flags accumulate
        overrides[key] = typed
    config = dataclasses.replace(base, **overrides)
    if explicit is not None:
        explicit.update(overrides)
    return config, overrides


def help_text(cls: type, *, prog: str = "", description: str = "") -> str:
    types_ = _field_types(cls)
    lines = []
    if prog:
        lines.append(f"usage: {prog} [CONFIG.toml] [--name=value | --name value ...]")
    if description:
        lines += ["", description.strip()]
    lines += ["", "settings (type; default):"]
    width = max(len(f.name) for f in dataclasses.fields(cls)) + 2
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not _MISSING else f.default_factory()  # type: ignore[misc]
        shown = _toml_value(default) if default not in (None, []) else "none"
        lines.append(f"  --{f.name:<{width}}{f.metadata.get('help', '')} [{_type_name(types_[f.name])}; {shown}]")
    lines += ["", "A TOML file may set any of these; flags on the command line override it. A true/false setting",
              "given alone (--name) means true. Dashes may stand for underscores (--max-iters)."]
    return "\n".join(lines)
