"""Reading a user's YAML file (grid, policy, training config) with one-line errors, applying
`--set KEY=VALUE` overrides to it, laying one config mapping over another, and checking
it against a pydantic model."""

import copy
from pathlib import Path
from types import UnionType
from typing import Annotated, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emeval.errors import EmevalError

M = TypeVar("M", bound=BaseModel)


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


class StrictModel(BaseModel):
    """A user's config section: no unknown keys, no type coercion ("5" is not 5, true not 1).
    A field's description says what it must be, for the one-line error."""

    model_config = ConfigDict(strict=True, extra="forbid")


PositiveInt = Annotated[int, Field(ge=1, description="a positive integer")]
PositiveOrNull = Annotated[int | None, Field(ge=1, description="a positive integer or null")]


class EvaluationBlock(StrictModel):
    """An `evaluation:` block (a gate policy's, an experiment grid's): how its checkpoints are
    run; RunSettings.from_evaluation makes the run. Each file keeps its own defaults."""

    suite: str
    judge: str
    samples: PositiveOrNull
    limit: PositiveOrNull
    max_tokens: PositiveInt
    temperature: Annotated[float, Field(ge=0, description="0 (greedy) or more")]


def validated(model: type[M], raw: dict, label: str) -> M:
    """raw checked by a pydantic model; the first problem becomes one line naming the key and
    what it must be, e.g. "policy: increase.alpha must be a number between 0 and 1 (got 2)"."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        error = e.errors()[0]
    loc = error["loc"]
    if error["type"] == "extra_forbidden":
        known = ", ".join(sorted(getattr(_model_at(model, loc[:-1]), "model_fields", ())))
        raise EmevalError(f"{label}: {_dotted(loc)} is not a known key (known: {known})")
    if error["type"] == "missing":
        raise EmevalError(f"{label}: {_dotted(loc)} is required")
    field_loc, expected = _description(model, loc)
    if expected is None:
        field_loc = loc
        if error["type"] in ("model_type", "dict_type"):
            expected = "a mapping"
        elif error["type"] == "literal_error":
            expected = "one of " + error["ctx"]["expected"].replace(" or ", ", ")
        else:
            expected = error["msg"].removeprefix("Input should be ")
    raise EmevalError(f"{label}: {_dotted(field_loc)} must be {expected} (got {error['input']!r})")


def _dotted(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _inner(annotation):
    """The model, list or dict type inside Optional[...] (None when there is none)."""
    if _is_model(annotation):
        return annotation
    if get_origin(annotation) in (list, dict):
        return annotation
    if get_origin(annotation) in (Union, UnionType):
        return next(filter(None, map(_inner, get_args(annotation))), None)
    return None


def _model_at(model: type[BaseModel], loc: tuple):
    """The model (or list/dict type) found at loc: a field's type, or an element's; None
    past a plain value."""
    current = model
    for part in loc:
        if _is_model(current):
            info = current.model_fields.get(part)
            current = info and _inner(info.annotation)
        elif get_origin(current) in (list, dict):
            current = _inner(get_args(current)[-1])
        else:
            return None
    return current


def _is_model(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _description(model: type[BaseModel], loc: tuple) -> tuple[tuple, str | None]:
    """The innermost field on loc (an element of a list is its list's) and its description."""
    found: tuple[tuple, str | None] = (loc, None)
    for i, part in enumerate(loc):
        current = _model_at(model, loc[:i])
        if _is_model(current) and part in current.model_fields:
            found = (loc[: i + 1], current.model_fields[part].description)
    return found
