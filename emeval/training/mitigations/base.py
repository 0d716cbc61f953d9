"""What a mitigation is to the rest of emeval: a config section and a set of hooks.

A stage builds one `Mitigation` per active section under `mitigations:` and calls its hooks at
fixed points: while the config is checked, before anything is written, when the data and the
trainer are built, and when a model is exported. Every hook has a do-nothing default, so a
mitigation overrides only the ones it needs. `run` below is the stage being trained
(`emeval.training.pipeline.StageRun`: its config, dirs, base model, data records, progress).
"""

from __future__ import annotations

from pathlib import Path

from emeval.training.sections import Section


class Mitigation:
    name: str = ""  # its key under `mitigations:`
    Config: type[Section] = Section
    last_stage_only = False  # in a chain, only the last stage may use it

    def __init__(self, config: Section):
        self.config = config

    # ------------------------------------------------------------ config checks
    # Each raises ConfigProblem with a key relative to this mitigation's section ('' for the
    # section itself).

    def check(self, stage) -> None:
        """Check the section against the stage's whole config (a TrainConfig of one stage)."""

    def ignored(self, stage, written: dict) -> list[tuple[str, str]]:
        """(key, why) for each key written in the section that this stage would not use;
        `written` is the section as written for the stage ({} when inherited)."""
        return []

    def check_start(self, stage) -> None:
        """Checks for a stage that starts from the base model (a config alone, or a chain's
        first stage)."""

    # ------------------------------------------------------------ before training

    def prepare(self, stage, base, progress) -> None:
        """Checks that need the models, run before anything is written or trained; called
        once per stage (idempotent)."""

    # ------------------------------------------------------------ data

    def system_prompt(self) -> str | None:
        """A system prompt put in front of every training prompt."""
        return None

    def sft_rows(self, run, rows: list[dict]) -> list[dict]:
        """The SFT rows (prompt/completion) after this mitigation: add, drop or reorder."""
        return rows

    # ------------------------------------------------------------ trainer

    def trainer_args(self, method: str) -> dict:
        """Arguments for TRL's SFTConfig or GRPOConfig."""
        return {}

    def needs_reference(self, method: str) -> bool:
        """Whether a term of this mitigation compares against the frozen reference model."""
        return False

    def add_terms(self, run, terms, model, tokenizer) -> None:
        """Fill in the trainer's MitigationTerms (loss terms beyond the task loss)."""

    # ------------------------------------------------------------ export

    def after_save(self, run, out: Path) -> None:
        """Edit a saved model (the final one and every checkpoint) in `out`."""

    def manifest(self, run) -> dict:
        """What the manifest records under mitigations.<name>."""
        return self.config.model_dump()
