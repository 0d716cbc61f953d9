"""kl: a KL penalty to the frozen reference (the model the stage starts from).

GRPO uses TRL's own term (its `beta`); SFT adds beta * KL(policy || reference) over the
vocabulary at every answer token (`kl_to_reference` in terms.py).
"""

from __future__ import annotations

from pydantic import Field

from emeval.training.mitigations.base import Mitigation
from emeval.training.sections import Number, Section


class KLConfig(Section):
    beta: Number = Field(0.05, gt=0)


class KL(Mitigation):
    name = "kl"
    Config = KLConfig

    def trainer_args(self, method: str) -> dict:
        return {"beta": self.config.beta} if method == "grpo" else {}

    def needs_reference(self, method: str) -> bool:
        return method == "sft"  # under GRPO, TRL keeps its own reference

    def add_terms(self, run, terms, model, tokenizer) -> None:
        from emeval.training.mitigations.terms import KLTerm

        if run.cfg.method == "sft":
            terms.losses.append(KLTerm(self.name, self.config.beta))
