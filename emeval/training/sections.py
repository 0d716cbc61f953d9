"""The building blocks of the training config: pydantic sections and their one-line errors.

Every section (and every mitigation's config) is a `Section`: unknown keys are refused, and
values are taken as written (no "3" for 3, no true for 1). A problem becomes one EmevalError
that names the key and what it must be, e.g. "config: mitigations.kl.beta must be a number".
Checks that need more than one value raise `ConfigProblem` from a validator; its key is
relative to the section that raised it.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Strict,
    ValidationError,
    model_validator,
)

from emeval.errors import EmevalError


def _number_from_text(value):
    # YAML reads 5e-6 (no dot) as a string; accept it when it parses as a number
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Number = Annotated[float, Strict(), BeforeValidator(_number_from_text)]


class Section(BaseModel):
    """A mapping of the config; `kl:` with `true` switches a mitigation's section on."""

    model_config = ConfigDict(extra="forbid", validate_default=False)

    @model_validator(mode="before")
    @classmethod
    def _switched_on(cls, value):
        return {} if value is None or value is True else value


class ConfigProblem(ValueError):
    """A check across values failed: `key` (relative to the raising section; '' for the section
    itself) and the rest of the sentence."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key, self.message = key, message


def config_error(path: str, message: str) -> EmevalError:
    sep = "" if message.startswith(":") or not path else " "
    return EmevalError(f"config: {path}{sep}{message}")


def check_positive(value, key: str, allow_zero: bool = False) -> None:
    """Raise ConfigProblem unless value is None or above zero (or zero, when allowed)."""
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigProblem(key, "must not be negative" if allow_zero else "must be positive")


# ---------------------------------------------------------------- pydantic errors -> one line


def type_name(tp) -> str:
    """How a config value of this type is described: 'an integer', 'a list of strings'..."""
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return type_name(typing.get_args(tp)[0])
    if tp in names:
        return names[tp]
    if origin is list:
        return f"a list of {type_name(typing.get_args(tp)[0]).split(' ', 1)[1]}s"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if tp is dict or origin is dict or (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return "a mapping"
    return str(tp)


def _model_in(tp) -> type[BaseModel] | None:
    """The section class inside an annotation (X, X | None), if any."""
    found = [a for a in _options(tp) if isinstance(a, type) and issubclass(a, BaseModel)]
    return found[0] if len(found) == 1 else None


def _options(tp) -> tuple:
    """The members of a union, or the type itself."""
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    return typing.get_args(tp) if union else (tp,)


def _list_item(tp):
    options = _options(tp)
    lists = [a for a in options if typing.get_origin(a) is list]
    return typing.get_args(lists[0])[0] if len(lists) == 1 else None


def keys_of(model: type[BaseModel]) -> dict[str, Any]:
    """{key as written in YAML: field} of a section."""
    return {f.alias or name: f for name, f in model.model_fields.items()}


def _where(root: type[BaseModel], loc: tuple) -> tuple[str, Any]:
    """Follow an error location through the sections: (dotted path, annotation there). Stops
    at a union's member tags."""
    path, tp = "", root
    for part in loc:
        model = _model_in(tp)
        if isinstance(part, int) and _list_item(tp) is not None:
            path, tp = f"{path}[{part}]", _list_item(tp)
        elif model is not None and part in keys_of(model):
            path, tp = f"{path}.{part}" if path else part, keys_of(model)[part].annotation
        else:
            break
    return path, tp


def translate(error: ValidationError, root: type[BaseModel], prefix: str) -> EmevalError:
    """The first problem pydantic found, as one line naming the key."""
    first = error.errors()[0]
    loc, kind = tuple(first["loc"]), first["type"]
    problem = (first.get("ctx") or {}).get("error")
    if isinstance(problem, ConfigProblem):
        path, _ = _where(root, loc)
        if problem.key:
            path = f"{path}.{problem.key}" if path else problem.key
        return config_error(prefix + path, problem.message)
    if kind == "extra_forbidden":
        path, tp = _where(root, loc[:-1])
        model = _model_in(tp) or root
        known = ", ".join(sorted(keys_of(model)))
        key = f"{path}.{loc[-1]}" if path else str(loc[-1])
        return config_error(prefix + key, f"is not a known key (known: {known})")
    path, tp = _where(root, loc)
    if kind == "literal_error" and not isinstance(first["input"], str):
        return config_error(prefix + path, "must be a string")
    if kind == "literal_error":
        return config_error(prefix + path, f"must be {type_name(tp)} (got {first['input']!r})")
    if kind == "greater_than":
        return config_error(prefix + path, "must be positive")
    if kind == "greater_than_equal":
        return config_error(prefix + path, "must not be negative")
    return config_error(prefix + path, f"must be {type_name(tp)}")
