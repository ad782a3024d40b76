"""Config loading and validation against workflow/schemas/config.schema.yaml.

Validation fills in defaults and fails before any job runs, with a message that names
the offending key, the value and what is allowed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config that breaks the schema or an internal consistency rule."""


def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _validator_with_defaults(schema: dict[str, Any]) -> Any:
    from jsonschema import Draft202012Validator, validators

    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Any, instance: Any, schema: Any) -> Iterator[Any]:
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    # JSON Schema counts 2.0 as an integer; a count given as a float is a config error here.
    types = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, x: isinstance(x, int) and not isinstance(x, bool)
    )
    cls = validators.extend(Draft202012Validator, {"properties": set_defaults}, type_checker=types)
    return cls(schema)


def _key(path: Any) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _describe(error: Any) -> str:
    """One line naming the key, the value and what the schema allows."""
    key = _key(error.absolute_path)
    sch = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties":
        allowed = sorted(sch.get("properties", {}))
        extra = error.message.split("(")[-1].rstrip(")") if "(" in error.message else ""
        hint = f"; allowed keys: {allowed}" if allowed else ""
        return f"config key {key!r}: unknown key(s) {extra}{hint}"
    if error.validator == "required":
        return f"config key {key!r}: {error.message}"
    if error.validator == "enum":
        return (
            f"config key {key!r}: {error.instance!r} is not allowed; allowed values: {sch['enum']}"
        )
    if error.validator == "oneOf" and key.endswith("layers"):
        return (
            f"config key {key!r}: {error.instance!r}; "
            "allowed: 'all' or a non-empty list of layer names"
        )
    return f"config key {key!r}: {error.message}"


def validate_config(config: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``config`` in place (defaults filled) and return it; raise ConfigError otherwise."""
    if not isinstance(config, dict):
        raise ConfigError("config must be a mapping of keys to values")
    validator = _validator_with_defaults(schema or load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), e.path))
    if errors:
        lines = "\n  ".join(_describe(e) for e in errors[:10])
        raise ConfigError(f"invalid config ({len(errors)} problem(s)):\n  {lines}")
    _check_consistency(config)
    return config


def _check_consistency(config: dict[str, Any]) -> None:
    if config["data"]["dataset"] == "cifar10" and (
        config.get("architectures") or "pretrain" in config
    ):
        raise ConfigError(
            "config key 'data.dataset': 'cifar10' is only supported by the structure-discovery "
            "study (section `gates`); the LeNet architectures and the pretrain study take "
            "28x28 grey images"
        )
    pruning = config.get("pruning", {})
    if pruning.get("with_replacement") and "random" not in pruning.get("methods", []):
        raise ConfigError(
            "config key 'pruning.with_replacement': true only applies to method 'random', "
            f"which is not in pruning.methods={pruning.get('methods')}; set it to false"
        )
    if "greedy_node" in pruning.get("methods", []) and config["architectures"]:
        from prunetime import catalog

        if not any(
            catalog.applies("greedy_node", a["model"]) for a in config["architectures"].values()
        ):
            raise ConfigError(
                "config key 'pruning.methods': 'greedy_node' prunes fully connected "
                "architectures only, and every architecture in 'architectures' "
                f"({sorted(config['architectures'])}) has conv layers"
            )
    if config["eval"]["size"] > config["data"]["n_val"]:
        raise ConfigError(
            f"config key 'eval.size': {config['eval']['size']} exceeds data.n_val="
            f"{config['data']['n_val']} (the evaluation set is a subset of the validation split)"
        )
    for key in ("results_dir", "data_dir"):
        value = Path(config[key])
        if value.is_absolute() or ".." in value.parts:
            raise ConfigError(
                f"config key {key!r}: {config[key]!r} must be a relative path inside the project"
            )
    if config["pruning"]["layers"] != "all":
        from prunetime import catalog

        for name, arch in config["architectures"].items():
            names = catalog.weight_names(arch["model"])
            bad = [
                n
                for n in config["pruning"]["layers"]
                if n not in names and f"{n}.weight" not in names
            ]
            if bad:
                raise ConfigError(
                    f"config key 'pruning.layers': {bad} not in architecture {name!r}; "
                    f"allowed: {names}"
                )


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    return validate_config(yaml.safe_load(p.read_text()) or {})
