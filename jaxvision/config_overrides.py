"""Config overrides by dotted key: checked against the schema and the model's constructor.

`--config.model.KEY=V` takes any argument of the named model's constructor, whether or not
the config file lists it; the command line's config flag (`define_config_flag`) and the
sweep (`apply`) share these checks, so both reject the same keys with the same message.
"""

import ast
import sys
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_dict, config_flags

from jaxvision import config as config_lib

_PREFIX = "--config."
# The --config flag defined here belongs to the entry point that asks for it (its --help).
flags.disclaim_key_flags()


def _model_arguments(name: str) -> dict[str, Any]:
    from jaxvision.models import registry

    return registry.constructor_arguments(name)


# Config sections that hold a model: their keys are that model's constructor arguments.
_MODEL_SECTIONS = (("model",), ("distill", "teacher_model"))


def _model_section(parts: list[str]) -> tuple[str, ...] | None:
    """The model section `parts` ("model.depth") names an argument of, if any."""
    for section in _MODEL_SECTIONS:
        if len(parts) == len(section) + 1 and tuple(parts[:-1]) == section:
            return section
    return None


def _section(config: ml_collections.ConfigDict, section: tuple[str, ...]) -> Any:
    node = config
    for part in section:
        node = node[part] if isinstance(node, ml_collections.ConfigDict) and part in node else None
    return node


def check_key(config: ml_collections.ConfigDict, key: str, model_name: str = "") -> None:
    """Raises ValueError (the schema's message) unless `key` ("a.b.c") can be overridden.

    `model_name` is the model whose arguments `key` names (default: its section's `name`).
    """
    parts = key.split(".")
    section = _model_section(parts)
    node = _section(config, section) if section else None
    if isinstance(node, ml_collections.ConfigDict) and parts[-1] != "name":
        name = model_name or node.get("name", "")
        if parts[-1] in node:
            return
        if not name:
            raise ValueError(
                f"Unknown config key {key!r}: set {'.'.join(section)}.name to the model "
                "whose arguments it names."
            )
        known = _model_arguments(name)
        if parts[-1] not in known:
            raise ValueError(
                f"Unknown config key {key!r}: model {name!r} takes no argument "
                f"{parts[-1]!r}.{config_lib.suggest(parts[-1], list(known))} "
                f"Its arguments: {', '.join(sorted(known))}."
            )
        return
    node, prefix = config, ""
    for part in parts:
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            raise ValueError(
                f"Unknown config key {key!r}.{config_lib.suggest(part, known)} "
                f"Known keys {'in ' + prefix[:-1] if prefix else 'at the top'}: "
                f"{', '.join(sorted(known)) or '(none: ' + prefix[:-1] + ' is a value)'}."
            )
        node, prefix = node[part], f"{prefix}{part}."


def add_model_keys(
    config: ml_collections.ConfigDict,
    keys: list[str],
    model_name: str,
    section: tuple[str, ...] = ("model",),
) -> None:
    """Adds model arguments the config file does not list, at the constructor's default."""
    known = _model_arguments(model_name)
    node = _section(config, section)
    with config.unlocked():
        for key in keys:
            if key in node or key not in known:
                continue
            default = known[key]
            if default is None or isinstance(default, type):
                # No default to take the type from: the value is read as a Python literal.
                node[key] = config_dict.placeholder(object)
            else:
                node[key] = list(default) if isinstance(default, list) else default


def _override_keys(argv: list[str]) -> list[str]:
    return [a[len(_PREFIX) :].split("=", 1)[0] for a in argv if a.startswith(_PREFIX)]


def _check_and_add(config: ml_collections.ConfigDict, keys: list[str], given: dict) -> None:
    """Checks `keys` and adds the model arguments they name; `given` holds their values."""
    names = {}
    for section in _MODEL_SECTIONS:
        node = _section(config, section)
        if isinstance(node, ml_collections.ConfigDict):
            names[section] = given.get(".".join((*section, "name")), node.get("name", ""))
    for key in keys:
        section = _model_section(key.split("."))
        check_key(config, key, names.get(section, "") if section else "")
    for section, name in names.items():
        args = [k.split(".")[-1] for k in keys if _model_section(k.split(".")) == section]
        if name and args:
            add_model_keys(config, args, name, section)


def prepare_for_overrides(config: ml_collections.ConfigDict, argv: list[str]) -> None:
    """Checks every `--config.KEY` in `argv` and adds the model arguments they name."""
    given = dict(
        a[len(_PREFIX) :].split("=", 1) for a in argv if a.startswith(_PREFIX) and "=" in a
    )
    _check_and_add(config, _override_keys(argv), given)


class _RoomForModelOverrides(flags.ArgumentParser):
    """Wraps the config file's parser: loads the file, then adds the model arguments that
    `--config.model.KEY` overrides on the command line name."""

    def __init__(self, file_parser: flags.ArgumentParser):
        self._file_parser = file_parser

    def parse(self, argument: str) -> ml_collections.ConfigDict:
        config = self._file_parser.parse(argument)
        if isinstance(config, ml_collections.ConfigDict) and "model" in config:
            argv = flags.FLAGS.read_flags_from_files(sys.argv, force_gnu=False)
            prepare_for_overrides(config, argv)
        return config

    def flag_type(self) -> str:
        return self._file_parser.flag_type()


def define_config_flag(help_string: str = "Experiment config file.") -> flags.FlagHolder:
    """--config=FILE[:ARG] with `--config.KEY=VALUE` overrides (model: any constructor arg)."""
    holder = config_flags.DEFINE_config_file("config", None, help_string, lock_config=True)
    flag = flags.FLAGS["config"]
    flag.parser = _RoomForModelOverrides(flag.parser)
    return holder


def parse_value(text: str) -> Any:
    """A command-line value as Python reads it: numbers, booleans, tuples; else the string."""
    if text in ("true", "false"):
        return text == "true"
    try:
        return ast.literal_eval(text)
    except (SyntaxError, ValueError):
        return text


def _converted(key: str, value: Any, current: Any) -> Any:
    """`value` as the type of `current` (an int for a float is fine), else ValueError."""
    if current is None:
        return value  # no type to hold it to (a placeholder for an optional argument)
    if isinstance(current, bool) == isinstance(value, bool):
        if isinstance(value, type(current)):
            return value
        if isinstance(current, float) and isinstance(value, int):
            return float(value)
        if isinstance(current, tuple | list) and isinstance(value, tuple | list):
            return tuple(value)
    raise ValueError(
        f"Config key {key!r} takes a {type(current).__name__} (like {current!r}), "
        f"got {value!r} ({type(value).__name__})."
    )


def apply(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> None:
    """Sets `overrides` ({"model.pool": "gap"}) on `config`, checking keys and value types."""
    _check_and_add(config, list(overrides), overrides)
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        with config.unlocked():
            node[last] = _converted(key, value, node[last])
