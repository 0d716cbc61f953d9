"""ldifs: lambda * the mean squared distance between the policy's hidden features and the
frozen reference's, at chosen decoder layers, over all input tokens (`ldifs_term` in
terms.py)."""

from __future__ import annotations

from pydantic import Field

from emeval.training.mitigations.base import Mitigation
from emeval.training.sections import Int, Number, Section, Str
from emeval.yaml_files import ConfigProblem


class LDIFSConfig(Section):
    weight: Number = Field(0.1, alias="lambda", gt=0)
    layers: list[Int] | Str = "all"  # decoder layer indices, or 'all'


class LDIFS(Mitigation):
    name = "ldifs"
    Config = LDIFSConfig
    layers_used: list[int] = []  # the configured layers as indices, once the model is known

    def check(self, stage) -> None:
        layers = self.config.layers
        if isinstance(layers, str) and layers != "all":
            raise ConfigProblem("layers", "must be 'all' or a list of layer indices")
        if isinstance(layers, list) and not layers:
            raise ConfigProblem("layers", "must not be empty")

    def needs_reference(self, method: str) -> bool:
        return True

    def add_terms(self, run, terms, model, tokenizer) -> None:
        from emeval.training.mitigations.terms import LDIFSTerm, select_layers

        self.layers_used = select_layers(model, self.config.layers)
        terms.losses.append(LDIFSTerm(self.name, self.config.weight, self.layers_used))

    def manifest(self, run) -> dict:
        return super().manifest(run) | {"layers_used": self.layers_used}
