"""Reading a user's YAML file (grid, policy, training config) with one-line errors."""

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
