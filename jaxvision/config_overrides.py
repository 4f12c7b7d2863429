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


def check_key(config: ml_collections.ConfigDict, key: str, model_name: str = "") -> None:
    """Raises ValueError (the schema's message) unless `key` ("a.b.c") can be overridden."""
    parts = key.split(".")
    if parts[0] == "model" and len(parts) == 2:
        name = model_name or config.model.name
        known = _model_arguments(name)
        if parts[1] != "name" and parts[1] not in config.model and parts[1] not in known:
            raise ValueError(
                f"Unknown config key {key!r}: model {name!r} takes no argument "
                f"{parts[1]!r}.{config_lib.suggest(parts[1], list(known))} "
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


def add_model_keys(config: ml_collections.ConfigDict, keys: list[str], model_name: str) -> None:
    """Adds model arguments the config file does not list, at the constructor's default."""
    known = _model_arguments(model_name)
    with config.unlocked():
        for key in keys:
            if key in config.model or key not in known:
                continue
            default = known[key]
            if default is None or isinstance(default, type):
                # No default to take the type from: the value is read as a Python literal.
                config.model[key] = config_dict.placeholder(object)
            else:
                config.model[key] = list(default) if isinstance(default, list) else default


def _override_keys(argv: list[str]) -> list[str]:
    return [a[len(_PREFIX) :].split("=", 1)[0] for a in argv if a.startswith(_PREFIX)]


def _model_name_in(argv: list[str], default: str) -> str:
    for arg in argv:
        if arg.startswith(f"{_PREFIX}model.name="):
            default = arg.split("=", 1)[1]
    return default


def prepare_for_overrides(config: ml_collections.ConfigDict, argv: list[str]) -> None:
    """Checks every `--config.KEY` in `argv` and adds the model arguments they name."""
    name = _model_name_in(argv, config.model.name)
    keys = _override_keys(argv)
    for key in keys:
        check_key(config, key, name)
    model_keys = [k.split(".", 1)[1] for k in keys if k.startswith("model.") and k.count(".") == 1]
    add_model_keys(config, model_keys, name)


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
    name = overrides.get("model.name", config.model.name)
    for key in overrides:
        check_key(config, key, name)
    model_keys = [k.split(".", 1)[1] for k in overrides if k.startswith("model.")]
    add_model_keys(config, model_keys, name)
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        with config.unlocked():
            node[last] = _converted(key, value, node[last])
