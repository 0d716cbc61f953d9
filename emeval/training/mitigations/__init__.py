"""In-training defences against emergent misalignment, one plug-in per file.

Each module defines a `Mitigation` subclass (base.py): its key under `mitigations:`, its config
section and the hooks the pipeline calls. Adding one: a new file here and a line in
MITIGATIONS below; the config section, its checks, the stage's wiring and the manifest follow.
terms.py holds the tensor maths the loss terms share (imported only when training starts).
"""

from __future__ import annotations

from pydantic import create_model

from emeval.training.mitigations.base import Mitigation
from emeval.training.mitigations.inoculation import Inoculation
from emeval.training.mitigations.interleave import Interleave
from emeval.training.mitigations.interleave_onpolicy import OnPolicy
from emeval.training.mitigations.kl import KL
from emeval.training.mitigations.ldifs import LDIFS
from emeval.training.mitigations.safelora import SafeLoRA
from emeval.training.sections import Section

MITIGATIONS: dict[str, type[Mitigation]] = {
    m.name: m for m in (KL, LDIFS, SafeLoRA, Interleave, OnPolicy, Inoculation)
}


class _Active(Section):
    def active(self) -> list[str]:
        """The names of the mitigations switched on, in registry order."""
        return [name for name in MITIGATIONS if getattr(self, name) is not None]

    def plugins(self) -> list[Mitigation]:
        """One Mitigation per active section, holding that section."""
        return [MITIGATIONS[name](getattr(self, name)) for name in self.active()]


# the `mitigations:` section: one optional key per registered mitigation
MitigationsConfig = create_model(
    "MitigationsConfig",
    __base__=_Active,
    **{name: (m.Config | None, None) for name, m in MITIGATIONS.items()},
)

__all__ = ["MITIGATIONS", "Mitigation", "MitigationsConfig"]
