"""Reading a user's YAML file (grid, policy, training config) with one-line errors, applying
`--set KEY=VALUE` overrides to it, laying one config mapping over another, and checking
it against a pydantic model."""

import copy
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emeval.errors import EmevalError
from emeval.formatting import shown

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: Path | str, label: str) -> tuple[str, Any]:
    """A YAML file's text and what it holds, or one line: label names the file's role, e.g.
    "policy: gate.yaml is not valid YAML (...)"."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        return text, yaml.safe_load(text)
    except OSError as e:
        raise EmevalError(f"{label}: cannot read {path} ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise EmevalError(
            f"{label}: {path} is not UTF-8 text ({e.reason} at byte {e.start})"
        ) from None
    except yaml.YAMLError as e:
        raise EmevalError(f"{label}: {path} is not valid YAML ({str(e).splitlines()[0]})") from None


def read_yaml_mapping(path: Path | str, label: str) -> dict:
    """The mapping in a YAML file; an empty file is an empty mapping."""
    raw = read_yaml(path, label)[1] or {}
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


class ConfigProblem(ValueError):
    """A check across values failed, raised from a validator: `key` (relative to the raising
    section; '' for the section itself) and the rest of the sentence."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key, self.message = key, message


def validated(model: type[M], raw: dict, label: str) -> M:
    """raw checked by a pydantic model, or one line naming the key and what it must be."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise one_line(e, model, label) from None


def one_line(
    error: ValidationError, root: type[BaseModel], label: str, prefix: str = ""
) -> EmevalError:
    """The first problem pydantic found in a user's config as one line, e.g. "policy:
    increase.alpha must be a number between 0 and 1 (got 2)". prefix goes before the key (a
    chain stage's "stages[1].")."""
    first = error.errors()[0]
    loc, kind, got = tuple(first["loc"]), first["type"], first.get("input")
    problem = (first.get("ctx") or {}).get("error")

    def line(path: str, message: str) -> EmevalError:
        return config_error(label, prefix + path, message)

    if isinstance(problem, ConfigProblem):
        path = _where(root, loc)[0]
        return line(_join(path, problem.key), problem.message)
    if kind == "extra_forbidden":
        path, tp, _ = _where(root, loc[:-1])
        known = ", ".join(sorted(keys_of(_model_in(tp) or root)))
        return line(_join(path, str(loc[-1])), f"is not a known key (known: {known})")
    path, tp, described = _where(root, loc)
    if kind == "missing":
        return line(path, "is required")
    if described is not None:  # a field that says what it must be speaks for its elements too
        path, expected = described
    elif kind == "literal_error" and not isinstance(got, str):
        expected = "a string"
    elif kind == "greater_than":
        expected = "positive"
    elif kind == "greater_than_equal":
        return line(path, f"must not be negative (got {shown(got)})")
    else:
        expected = type_name(tp)
    return line(path, f"must be {expected} (got {shown(got)})")


def config_error(label: str, key: str, message: str) -> EmevalError:
    """'LABEL: KEY MESSAGE' (no space before a message that starts with ':')."""
    sep = "" if message.startswith(":") or not key else " "
    return EmevalError(f"{label}: {key}{sep}{message}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path and key else path or key


def type_name(tp) -> str:
    """How a config value of this type is described: 'an integer', 'a list of strings'..."""
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    origin = get_origin(tp)
    if origin is Annotated:
        return type_name(get_args(tp)[0])
    if tp in names:
        return names[tp]
    if origin is list:
        return f"a list of {type_name(get_args(tp)[0]).split(' ', 1)[1]}s"
    if origin in (Union, UnionType):
        return " or ".join(type_name(a) for a in get_args(tp) if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(tp))
    if tp is dict or origin is dict or _model_in(tp) is not None:
        return "a mapping"
    return str(tp)


def keys_of(model: type[BaseModel]) -> dict[str, Any]:
    """{key as written in YAML: field} of a section."""
    return {f.alias or name: f for name, f in model.model_fields.items()}


def _options(tp) -> tuple:
    """The members of a union (Annotated stripped), or the type itself."""
    if get_origin(tp) is Annotated:
        return _options(get_args(tp)[0])
    if get_origin(tp) in (Union, UnionType):
        return tuple(a for member in get_args(tp) for a in _options(member))
    return (tp,)


def _model_in(tp) -> type[BaseModel] | None:
    """The section class inside an annotation (X, X | None), if any."""
    found = [a for a in _options(tp) if isinstance(a, type) and issubclass(a, BaseModel)]
    return found[0] if len(found) == 1 else None


def _item(tp, part):
    """The type of element `part` of the list (an index) or dict inside an annotation, if any."""
    kind = list if isinstance(part, int) else dict
    found = [a for a in _options(tp) if get_origin(a) is kind]
    return get_args(found[0])[-1] if len(found) == 1 else None


def _where(root: type[BaseModel], loc: tuple) -> tuple[str, Any, tuple[str, str] | None]:
    """Follow an error location through the models: the dotted path, the annotation there,
    and (path, description) of the innermost field on the way that has a description. Stops
    at what it cannot follow (a union's member tags)."""
    path, tp, described = "", root, None
    for part in loc:
        model, item = _model_in(tp), _item(tp, part)
        if model is not None and part in keys_of(model):
            field = keys_of(model)[part]
            path, tp = _join(path, str(part)), field.annotation
            described = (path, field.description) if field.description else described
        elif item is not None:
            path, tp = f"{path}[{part}]" if isinstance(part, int) else _join(path, str(part)), item
        else:
            break
    return path, tp, described
