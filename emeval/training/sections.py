"""The building blocks of the training config: pydantic sections.

Every section (and every mitigation's config) is a `Section`: unknown keys are refused, and
values are taken as written (no "3" for 3, no true for 1). A problem becomes one EmevalError
that names the key and what it must be (`yaml_files.one_line`), e.g. "config:
mitigations.kl.beta must be a number (got 'x')". Checks that need more than one value raise
`yaml_files.ConfigProblem` from a validator; its key is relative to the section that raised it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Strict, model_validator

from emeval import yaml_files
from emeval.errors import EmevalError
from emeval.yaml_files import ConfigProblem


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


def config_error(path: str, message: str) -> EmevalError:
    return yaml_files.config_error("config", path, message)


def check_positive(value, key: str, allow_zero: bool = False) -> None:
    """Raise ConfigProblem unless value is None or above zero (or zero, when allowed)."""
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigProblem(key, "must not be negative" if allow_zero else "must be positive")
