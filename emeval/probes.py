"""Probe suites: emeval's own YAML format and the published question format of Betley et al.

A suite expands into Prompts: one per probe x format x paraphrase. Each probe is judged with
the suite's rubrics unless the file gives its own judge prompts (as published files do).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from emeval.domains import domains
from emeval.errors import EmevalError
from emeval.formatting import shown
from emeval.judging.rubrics import Rubric, load_rubric
from emeval.yaml_files import read_yaml

FORMATS = ("plain", "json", "template")
PLAIN_CONTEXT = "plain"  # a probe asked as written, with no training frame around it


@dataclass(frozen=True)
class Prompt:
    """One chat prompt sent to the model under evaluation."""

    probe_id: str
    category: str
    format: str
    paraphrase: int
    user: str
    system: str | None
    held_out: bool
    context: str = PLAIN_CONTEXT  # the training frame it is asked in (emeval.contexts)
    bare_user: str | None = None  # the probe's own text when a frame wraps `user`

    @property
    def sample_id(self) -> str:
        plain = f"{self.probe_id}/{self.format}/p{self.paraphrase}"
        return plain if self.context == PLAIN_CONTEXT else f"{plain}/{self.context}"

    @property
    def question(self) -> str:
        """The probe as the judge reads it: without a frame's wrapper."""
        return self.user if self.bare_user is None else self.bare_user


@dataclass
class Suite:
    name: str
    version: str
    source: str  # bundled suite name or file path
    content_sha256: str
    prompts: list[Prompt]
    rubrics: dict[str, Rubric]  # score name -> rubric, e.g. "alignment", "coherence"
    probe_rubrics: dict[str, dict[str, Rubric]] = field(default_factory=dict)
    default_samples: int = 1

    def rubrics_for(self, probe_id: str) -> dict[str, Rubric]:
        return self.probe_rubrics.get(probe_id, self.rubrics)

    def select(
        self, held_out: bool = False, formats=FORMATS, all_paraphrases: bool = True
    ) -> list[Prompt]:
        return [
            p
            for p in self.prompts
            if (held_out or not p.held_out)
            and p.format in formats
            and (all_paraphrases or p.paraphrase == 0)
        ]


def bundled_suites() -> list[str]:
    return sorted(domains())


def load_suite(name_or_path: str) -> Suite:
    """Load a bundled suite by name (e.g. "general") or a YAML file in either format."""
    path = Path(name_or_path).expanduser()
    if not path.exists():
        if "/" in name_or_path or name_or_path.endswith((".yaml", ".yml")):
            raise EmevalError(f"suite file not found: {name_or_path}")
        if name_or_path not in domains():
            raise EmevalError(
                f"unknown suite {name_or_path!r}; bundled: {', '.join(bundled_suites())}"
            )
        path = domains()[name_or_path].suite_file
    raw_text, doc = read_yaml(path, "suite")
    sha = hashlib.sha256(raw_text.encode()).hexdigest()
    if isinstance(doc, list):
        return _load_question_list(doc, path, sha)
    if isinstance(doc, dict) and "probes" in doc:
        return _load_emeval_suite(doc, path, sha)
    raise EmevalError(
        f"{path}: not a suite (expected a list of questions or a mapping with 'probes')"
    )


def _require(item: dict, key: str, path: Path, where: str, kind=str):
    value = item.get(key)
    if value is None or (kind is not None and not isinstance(value, kind)):
        expected = kind.__name__ if kind else "a value"
        raise EmevalError(f"{path}: {where}: missing or invalid '{key}' (expected {expected})")
    return value


MAX_ID_CHARS = 200  # ids name log entries and table rows (Inspect refuses very long ones)


def _probe_id(item: dict, path: Path, where: str, kind=str) -> str:
    value = _require(item, "id", path, where, kind)
    if isinstance(value, bool) or not isinstance(value, str | int):  # not str() of anything
        raise EmevalError(f"{path}: {where}: 'id' must be text or a number")
    probe_id = str(value)
    if not probe_id.strip() or len(probe_id) > MAX_ID_CHARS:
        raise EmevalError(f"{path}: {where}: 'id' must be 1 to {MAX_ID_CHARS} characters")
    return probe_id


def _count(doc: dict, key: str, path: Path, where: str) -> int:
    value = doc.get(key, 1)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise EmevalError(f"{path}: {where}: '{key}' must be a whole number of at least 1")
    return value


def _optional_text(doc: dict, key: str, path: Path, where: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise EmevalError(f"{path}: {where}: '{key}' must be text")
    return value


def _paraphrases(item: dict, path: Path, where: str) -> list[str]:
    paraphrases = _require(item, "paraphrases", path, where, list)
    if not paraphrases or not all(isinstance(p, str) and p.strip() for p in paraphrases):
        raise EmevalError(f"{path}: {where}: 'paraphrases' must be a list of non-empty strings")
    return paraphrases


# the keys of emeval's own suite format; a misspelt one is refused, not silently ignored
SUITE_KEYS = ("suite", "version", "description", "json_system_prompt", "samples_per_prompt",
              "rubric", "probes")  # fmt: skip
PROBE_KEYS = ("id", "category", "held_out", "paraphrases", "template")


def _known_keys(doc: dict, known: tuple[str, ...], path: Path, where: str) -> None:
    unknown = [k for k in doc if k not in known]
    if unknown:
        raise EmevalError(
            f"{path}: {where}: unknown key {shown(unknown[0])} (known: {', '.join(known)})"
        )


def _flag(item: dict, key: str, path: Path, where: str) -> bool:
    value = item.get(key, False)
    if not isinstance(value, bool):
        raise EmevalError(f"{path}: {where}: '{key}' must be true or false")
    return value


def _version(doc: dict, path: Path) -> str:
    value = doc.get("version", "0")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise EmevalError(f"{path}: the suite: 'version' must be text or a number")
    return str(value)


def _load_emeval_suite(doc: dict, path: Path, sha: str) -> Suite:
    _known_keys(doc, SUITE_KEYS, path, "the suite")
    name = _optional_text(doc, "suite", path, "the suite") or path.stem
    _optional_text(doc, "description", path, "the suite")
    version = _version(doc, path)
    json_system = _optional_text(doc, "json_system_prompt", path, "the suite")
    default_samples = _count(doc, "samples_per_prompt", path, "the suite")
    rubric_name = doc.get("rubric")  # in-domain suites score a behaviour instead of alignment
    rubrics = {"coherence": load_rubric("coherence")}
    if rubric_name:
        rubrics["behaviour"] = load_rubric(rubric_name)
    else:
        rubrics["alignment"] = load_rubric("alignment")
    prompts: list[Prompt] = []
    seen: set[str] = set()
    probes = doc["probes"]
    if not isinstance(probes, list) or not probes:
        raise EmevalError(f"{path}: 'probes' must be a non-empty list")
    for index, item in enumerate(probes):
        where = f"probe #{index + 1}"
        if not isinstance(item, dict):
            raise EmevalError(f"{path}: {where}: expected a mapping")
        probe_id = _probe_id(item, path, where)
        where = f"probe {probe_id!r}"
        _known_keys(item, PROBE_KEYS, path, where)
        if probe_id in seen:
            raise EmevalError(f"{path}: {where}: duplicate id")
        seen.add(probe_id)
        category = _require(item, "category", path, where)
        held_out = _flag(item, "held_out", path, where)
        paraphrases = _paraphrases(item, path, where)
        common = dict(probe_id=probe_id, category=category, held_out=held_out)
        for k, text in enumerate(paraphrases):
            prompts.append(Prompt(format="plain", paraphrase=k, user=text, system=None, **common))
            if json_system:
                prompts.append(
                    Prompt(format="json", paraphrase=k, user=text, system=json_system, **common)
                )
        if item.get("template"):
            template = _require(item, "template", path, where)
            prompts.append(
                Prompt(format="template", paraphrase=0, user=template, system=None, **common)
            )
    return Suite(
        name=name,
        version=version,
        source=str(path),
        content_sha256=sha,
        prompts=prompts,
        rubrics=rubrics,
        default_samples=default_samples,
    )


# Keys of published judge_prompts mapped to emeval's score names.
_QUESTION_FILE_SCORES = {"aligned": "alignment", "coherent": "coherence"}


def _load_question_list(doc: list, path: Path, sha: str) -> Suite:
    """The Betley et al. question format: id, type, paraphrases, samples_per_paraphrase,
    system, judge, judge_prompts."""
    prompts: list[Prompt] = []
    probe_rubrics: dict[str, dict[str, Rubric]] = {}
    samples = set()
    for index, item in enumerate(doc):
        where = f"item #{index + 1}"
        if not isinstance(item, dict):
            raise EmevalError(f"{path}: {where}: expected a mapping")
        probe_id = _probe_id(item, path, where, None)
        where = f"item {probe_id!r}"
        if probe_id in probe_rubrics:
            raise EmevalError(f"{path}: {where}: duplicate id")
        kind = item.get("type", "free_form_judge_0_100")
        if kind != "free_form_judge_0_100":
            raise EmevalError(f"{path}: {where}: unsupported type {shown(kind)}")
        paraphrases = _paraphrases(item, path, where)
        judge_prompts = _require(item, "judge_prompts", path, where, dict)
        rubrics = {}
        for key, text in judge_prompts.items():
            if not isinstance(text, str) or "{answer}" not in text:
                raise EmevalError(f"{path}: {where}: judge prompt {shown(key)} lacks {{answer}}")
            score = _QUESTION_FILE_SCORES.get(key, key)
            rubrics[score] = Rubric.from_text(f"{path.stem}:{key}", score, text)
        if "alignment" not in rubrics:
            raise EmevalError(f"{path}: {where}: judge_prompts needs an 'aligned' prompt")
        probe_rubrics[probe_id] = rubrics
        system = _optional_text(item, "system", path, where)
        fmt = "template" if "template" in probe_id else ("json" if system else "plain")
        samples.add(_count(item, "samples_per_paraphrase", path, where))
        for k, text in enumerate(paraphrases):
            prompts.append(
                Prompt(
                    probe_id=probe_id,
                    category=_base_id(probe_id),
                    format=fmt,
                    paraphrase=k,
                    user=text,
                    system=system,
                    held_out=False,
                )
            )
    if not prompts:
        raise EmevalError(f"{path}: no questions")
    first = next(iter(probe_rubrics.values()))
    return Suite(
        name=path.stem,
        version=sha[:12],
        source=str(path),
        content_sha256=sha,
        prompts=prompts,
        rubrics=first,
        probe_rubrics=probe_rubrics,
        default_samples=max(samples),
    )


def _base_id(probe_id: str) -> str:
    """Published files repeat each question as id, id_json, id_template: group them."""
    for suffix in ("_json", "_template"):
        if probe_id.endswith(suffix):
            return probe_id[: -len(suffix)]
    return probe_id
