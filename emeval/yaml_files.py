"""Reading a user's YAML file (grid, policy, training config) with one-line errors, applying
`--set KEY=VALUE` overrides to it, and laying one config mapping over another."""

import copy
from pathlib import Path

import yaml

from emeval.errors import EmevalError


def read_yaml_mapping(path: Path | str, label: str) -> dict:
    """The mapping in a YAML file; an empty file is an empty mapping. label names the file's role
    in errors, e.g. "policy: gate.yaml is not valid YAML (...)"."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise EmevalError(f"{label}: cannot read {path} ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise EmevalError(f"{label}: {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise EmevalError(f"{label}: {path} must hold a mapping of keys to values")
    return raw


def apply_overrides(raw: dict, overrides: list[str], example: str) -> None:
    """Apply `--set KEY=VALUE` items in place: KEY is a dotted path (missing levels are
    created), VALUE is parsed as YAML. example shows a valid item in the error message."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise EmevalError(f"--set {item!r}: expected KEY=VALUE, e.g. {example}")
        node = raw
        *parents, last = key.strip().split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = yaml.safe_load(value)


def deep_merge(base: dict, override: dict | None, null_deletes: bool = False) -> dict:
    """base with override laid over it, nested mappings merged key by key (neither is
    changed). null_deletes: a null in override removes the key (a chain stage's
    'mitigations: null'); otherwise a null is a value like any other."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if value is None and null_deletes:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value, null_deletes)
        else:
            out[key] = copy.deepcopy(value)
    return out
