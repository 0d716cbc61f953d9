"""inoculation: a system prompt put in front of every training prompt, never used at
evaluation."""

from __future__ import annotations

from emeval.training.mitigations.base import Mitigation
from emeval.training.sections import Section, Str
from emeval.yaml_files import ConfigProblem


class InoculationConfig(Section):
    system_prompt: Str = ""


class Inoculation(Mitigation):
    name = "inoculation"
    Config = InoculationConfig

    def check(self, stage) -> None:
        if not self.config.system_prompt.strip():
            raise ConfigProblem("system_prompt", "must not be empty")

    def system_prompt(self) -> str | None:
        return self.config.system_prompt
