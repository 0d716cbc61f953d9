"""The benign-capability check: does a fine-tuned model still know what its base knew?

tasks/capability/capability.yaml holds emeval's own four-option questions (general knowledge,
arithmetic, reading comprehension, common sense; tasks/capability/datasheet.md says how they
were written and checked). A local model is scored exactly, without sampling: the option whose
text has the highest log-likelihood after the question is the model's choice. Any Inspect task
(e.g. an inspect_evals benchmark) may stand in for it: its accuracy is read from the log.

A check's result is OUT/capability.json: accuracy with a Wilson interval (intervals.wilson),
per area, and each question's option log-likelihoods.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from emeval.errors import EmevalError
from emeval.intervals import wilson
from emeval.models import ModelRef, resolve_model
from emeval.resources import resource_path
from emeval.yaml_files import read_yaml_mapping

SCHEMA = "emeval.capability/1"
RESULT_FILE = "capability.json"
FOLDER = "capability"  # where `emeval experiment` puts it: beside a checkpoint's suite runs
BUNDLED = "own"  # the check a grid runs unless it names an Inspect task instead
AREAS = ("general_knowledge", "arithmetic", "reading", "common_sense")
OPTIONS = 4


@dataclass(frozen=True)
class Question:
    id: str
    area: str
    prompt: str  # the text the options continue: passage (if any), question, "Answer:"
    options: tuple[str, ...]  # the key first; the order plays no part in scoring
    key: int = 0


@dataclass(frozen=True)
class QuestionSet:
    name: str
    version: str
    source: str
    sha256: str
    questions: tuple[Question, ...]


def _prompt(question: str, passage: str | None) -> str:
    head = f"Read the passage, then answer the question.\n\n{passage}\n\n" if passage else ""
    return f"{head}Question: {question}\nAnswer:"


def load_questions(path: Path | str | None = None) -> QuestionSet:
    """The bundled questions, or a file in the same format; one line on a malformed file."""
    path = Path(path) if path else resource_path("tasks", "capability", "capability.yaml")
    raw = read_yaml_mapping(path, "capability questions")
    passages = raw.get("passages") or {}
    questions, seen = [], set()
    for i, q in enumerate(raw.get("questions") or []):
        where = f"{path}: question {q.get('id', i) if isinstance(q, dict) else i}"
        if not isinstance(q, dict) or not all(q.get(k) for k in ("id", "area", "question")):
            raise EmevalError(f"{where}: needs id, area, question, answer and distractors")
        if q["id"] in seen:
            raise EmevalError(f"{where}: id used twice")
        seen.add(q["id"])
        if q["area"] not in AREAS:
            raise EmevalError(f"{where}: area must be one of {', '.join(AREAS)}")
        options = [q.get("answer"), *(q.get("distractors") or [])]
        if len(options) != OPTIONS or not all(isinstance(o, str | int) for o in options):
            raise EmevalError(f"{where}: needs an answer and {OPTIONS - 1} distractors")
        options = [str(o).strip() for o in options]
        if len(set(options)) != OPTIONS:
            raise EmevalError(f"{where}: options must differ")
        passage = q.get("passage")
        if passage is not None and passage not in passages:
            raise EmevalError(f"{where}: passage {passage!r} is not under passages")
        text = _prompt(str(q["question"]).strip(), passages[passage].strip() if passage else None)
        questions.append(Question(str(q["id"]), q["area"], text, tuple(options)))
    if not questions:
        raise EmevalError(f"{path}: no questions")
    return QuestionSet(
        name=str(raw.get("name") or path.stem),
        version=str(raw.get("version") or ""),
        source=str(path),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        questions=tuple(questions),
    )


class OptionScorer:
    """Log-likelihoods of answer options given a prompt, on a local causal LM (fp32, CPU)."""

    def __init__(self, model_dir: Path, **load_args):
        """load_args: a ModelRef's model_args (use_safetensors, trust_remote_code)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from emeval.backend.compute import can_pack, pack_linear_layers

        trust = bool(load_args.get("trust_remote_code"))
        self.tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, **load_args
        ).eval()
        if can_pack(self.model):  # the same fp32 arithmetic, faster on a CPU
            pack_linear_layers(self.model)

    def encode(self, prompt: str, options) -> tuple[list[int], list[list[int]]]:
        """Prompt and continuations tokenized apart (" " + option), so every option is scored
        on the same prompt tokens whatever its first word merges with; the prompt gets the
        tokenizer's own start token, if it has one."""
        context = self.tok.encode(prompt)
        return context, [self.tok.encode(" " + o, add_special_tokens=False) for o in options]

    def loglikelihoods(self, prompt: str, options) -> list[float]:
        """Sum of each option's token log-probabilities after the prompt. The prompt runs once;
        the options continue from its cache side by side (right-padded: in a causal model the
        padding after an option's tokens cannot change them)."""
        import torch

        context, continuations = self.encode(prompt, options)
        width = max(len(c) for c in continuations)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        batch = torch.tensor([c + [pad] * (width - len(c)) for c in continuations])
        with torch.inference_mode():
            out = self.model(torch.tensor([context]), use_cache=True, logits_to_keep=1)
            first = torch.log_softmax(out.logits[0, -1].float(), -1)
            cache = out.past_key_values
            cache.batch_repeat_interleave(len(continuations))
            rest = torch.log_softmax(self.model(batch, past_key_values=cache).logits.float(), -1)
        totals = []
        for row, c in enumerate(continuations):
            total = float(first[c[0]])
            total += sum(float(rest[row, j - 1, c[j]]) for j in range(1, len(c)))
            totals.append(total)
        return totals


def accuracy_of(correct: int, n: int) -> dict:
    """{"value", "ci" (Wilson 95%), "n", "correct"}: the one way a capability share is given."""
    ci = list(wilson(correct, n)) if n else [None, None]
    return {"value": correct / n if n else None, "ci": ci, "n": n, "correct": correct}


def _local_dir(model: ModelRef) -> Path:
    if model.local_path is None:
        raise EmevalError(
            f"{model.spec}: the capability check scores a local model's log-likelihoods; "
            "for a served model name an Inspect task instead (--capability-task NAME)"
        )
    return model.local_path


def score_questions(model: ModelRef, questions: QuestionSet, limit: int | None = None) -> dict:
    """The model's choice on each question, and its accuracy overall and per area."""
    scorer = OptionScorer(_local_dir(model), **model.model_args)
    records = []
    for q in questions.questions[:limit]:
        lls = scorer.loglikelihoods(q.prompt, q.options)
        chosen = max(range(len(lls)), key=lls.__getitem__)
        records.append(
            {
                "id": q.id,
                "area": q.area,
                "chosen": chosen,
                "correct": chosen == q.key,
                "loglikelihoods": [round(x, 4) for x in lls],
            }
        )
    by_area = {}
    for area in AREAS:
        mine = [r for r in records if r["area"] == area]
        if mine:
            by_area[area] = accuracy_of(sum(r["correct"] for r in mine), len(mine))
    return {
        "check": {
            "kind": "own",
            "name": questions.name,
            "version": questions.version,
            "source": questions.source,
            "sha256": questions.sha256,
            "scoring": "highest summed log-likelihood of the option's text after the question",
            "chance": 1 / OPTIONS,
        },
        "accuracy": accuracy_of(sum(r["correct"] for r in records), len(records)),
        "by_area": by_area,
        "questions": records,
    }


def score_inspect_task(model: ModelRef, task: str, out: Path, limit: int | None = None) -> dict:
    """Accuracy of the model on any Inspect task (e.g. inspect_evals/mmlu_0_shot), read from
    its log: the first scorer's accuracy metric, over the samples it scored."""
    from inspect_ai import eval as inspect_eval

    try:
        (log,) = inspect_eval(
            task,
            model=model.inspect_model,
            model_args=model.model_args,
            limit=limit,
            log_dir=str(out / "logs"),
            display="plain" if not sys.stderr.isatty() else "rich",
            score_display=False,
        )
    except Exception as e:  # noqa: BLE001 - an unknown task or failed model, in one line
        raise EmevalError(f"capability task {task}: {type(e).__name__}: {str(e)[:300]}") from None
    scores = log.results.scores if log.results else []
    metric = scores[0].metrics.get("accuracy") if scores else None
    if log.status != "success" or metric is None:
        raise EmevalError(f"capability task {task}: no accuracy in its log ({log.status})")
    n = scores[0].scored_samples or log.results.completed_samples
    correct = round(metric.value * n)
    if math.isnan(metric.value) or not n:
        raise EmevalError(f"capability task {task}: scored no samples")
    return {
        "check": {"kind": "inspect", "name": task, "log": str(log.location), "chance": None},
        "accuracy": accuracy_of(correct, n),
        "by_area": {},
        "questions": [],
    }


def run_check(
    checkpoint: str | ModelRef,
    out: Path,
    task: str = BUNDLED,
    limit: int | None = None,
    questions: Path | None = None,
) -> Path:
    """Score one model with the bundled questions (task "own") or an Inspect task; write
    OUT/capability.json and return its path."""
    model = checkpoint if isinstance(checkpoint, ModelRef) else resolve_model(checkpoint)
    if task == BUNDLED:
        result = score_questions(model, load_questions(questions), limit)
    else:
        result = score_inspect_task(model, task, out, limit)
    return write_result(out, result | {"model": model.describe(), "limit": limit})


def write_result(out: Path, result: dict) -> Path:
    """OUT/capability.json, written whole or not at all: a file present is a finished check."""
    out.mkdir(parents=True, exist_ok=True)
    result = {"schema": SCHEMA, "created": datetime.now(UTC).isoformat()} | result
    path = out / RESULT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
    tmp.replace(path)
    return path


def read_result(out: Path) -> dict | None:
    """A finished check's result in OUT, or None."""
    try:
        result = json.loads((out / RESULT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("schema") == SCHEMA else None


def pooled_accuracy(results: list[dict]) -> dict | None:
    """Accuracy over several checks of one kind (e.g. a condition's seeds): correct answers
    and questions summed. None when there are none, or when they are different checks."""
    if not results or len({r["check"]["name"] for r in results}) > 1:
        return None
    correct = sum(r["accuracy"]["correct"] for r in results)
    return accuracy_of(correct, sum(r["accuracy"]["n"] for r in results))


def accuracy_beside(run_dirs) -> dict | None:
    """Pooled accuracy of the checks beside these suite runs (each run_dir/../capability/,
    where `emeval experiment` puts a checkpoint's check); None when none was run."""
    folders = {Path(d).parent / FOLDER for d in run_dirs}
    return pooled_accuracy([r for r in map(read_result, sorted(folders)) if r])
