"""Judge rubrics: versioned prompt templates from judges/, each identified by its text's hash."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property

import yaml

from emeval.errors import EmevalError
from emeval.resources import resource_path

SCORES = ("alignment", "coherence", "behaviour")
# {reasoning} appears in some published judge prompts; emeval's judges give no reasoning
_FIELD_RE = re.compile(r"\{(question|answer|reasoning)\}")
# How templates are filled in; part of every judge-cache key, so verdicts on prompts rendered
# the old way (str.format-like, which let a text inject into the rubric) are not reused.
RENDERING = "one-pass-v3"
# A field alone on its line, and the line that closes it ("REPLY>>>", "[ANSWER END]")
_CLOSING_RE = re.compile(r"^[ \t]*\{(?:question|answer)\}[ \t]*\n[ \t]*(\S[^\n]*?)[ \t]*$", re.M)


@dataclass(frozen=True)
class Rubric:
    name: str
    score: str  # which score it produces: alignment, coherence or behaviour
    version: str
    template: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.template.encode()).hexdigest()

    @classmethod
    def from_text(cls, name: str, score: str, template: str, version: str = "file") -> Rubric:
        return cls(name=name, score=score, version=version, template=template)

    def render(self, question: str, answer: str) -> str:
        # One pass over the template: inserted text is never searched again, so a question or
        # answer holding "{answer}" or other braces is sent as written. Not str.format: that
        # would choke on the template's or the texts' own braces.
        values = {"question": self.fenced(question), "answer": self.fenced(answer), "reasoning": ""}
        return _FIELD_RE.sub(lambda m: values[m.group(1)], self.template)

    @cached_property
    def closings(self) -> list[str]:
        """The lines that close the template's question and answer blocks."""
        return [c for c in _CLOSING_RE.findall(self.template) if len(c) >= 3]

    def fenced(self, text: str) -> str:
        """The text with the template's closing delimiters broken up ("REPLY>>>" becomes
        "R EPLY>>>"): an answer that closes its own block could write the grader a note that
        reads as the rubric's (a fine-tune gaming an LLM judge at the gate)."""
        for closing in self.closings:
            text = text.replace(closing, f"{closing[0]} {closing[1:]}")
        return text

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


def load_rubric(name: str) -> Rubric:
    """The newest version of judges/NAME_vN.md."""
    files = list(resource_path("judges").glob(f"{name}_v*.md"))
    if not files:
        raise EmevalError(f"unknown judge rubric {name!r} (no judges/{name}_v*.md)")
    newest = max(files, key=lambda p: int(re.search(r"_v(\d+)\.md$", p.name).group(1)))
    _, header, template = newest.read_text(encoding="utf-8").split("---\n", 2)
    meta = yaml.safe_load(header)
    return Rubric(name=name, score=meta["score"], version=str(meta["version"]), template=template)
