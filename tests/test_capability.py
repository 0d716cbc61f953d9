"""The capability check (emeval/capability.py) and the four-criteria tables of the report
(reporting/criteria.py)."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from reporting_fixtures import make_run

from emeval.capability import (
    AREAS,
    OptionScorer,
    accuracy_of,
    load_questions,
    run_check,
    write_result,
)
from emeval.cli import main
from emeval.errors import EmevalError
from emeval.grid import load_grid
from emeval.intervals import wilson
from emeval.models import resolve_model
from emeval.resources import resource_path


def test_the_bundled_questions_match_their_datasheet():
    questions = load_questions()
    counts = Counter(q.area for q in questions.questions)
    assert len(questions.questions) >= 300 and set(counts) == set(AREAS)
    sheet = (resource_path("tasks", "capability") / "datasheet.md").read_text()
    stated = {m[1]: int(m[2]) for m in re.finditer(r"^\| (\w+) \| (\d+) \|", sheet, re.M)}
    assert stated == dict(counts)
    assert all(len(set(q.options)) == 4 and q.key == 0 for q in questions.questions)


@pytest.fixture(scope="module")
def scorer():
    return OptionScorer(resolve_model("smollm2-135m-instruct").local_path)


def direct_loglikelihood(scorer, prompt: str, option: str) -> float:
    """The option's log-likelihood from one plain forward pass over prompt + option."""
    import torch

    context, (continuation,) = scorer.encode(prompt, [option])
    ids = torch.tensor([context + continuation])
    with torch.inference_mode():
        logp = torch.log_softmax(scorer.model(ids).logits[0].float(), -1)
    start = len(context)
    return sum(float(logp[start + j - 1, t]) for j, t in enumerate(continuation))


def test_option_loglikelihoods_are_exact(scorer):
    """The cached, batched scoring gives each option's log-likelihood as a direct computation
    does, so the choice (the ordering) is the same; one question of each area."""
    questions = load_questions().questions
    picked = [next(q for q in questions if q.area == area) for area in AREAS]
    for q in picked:
        got = scorer.loglikelihoods(q.prompt, q.options)
        want = [direct_loglikelihood(scorer, q.prompt, o) for o in q.options]
        assert got == pytest.approx(want, abs=2e-3)
        assert sorted(range(4), key=got.__getitem__) == sorted(range(4), key=want.__getitem__)


def test_a_check_writes_its_accuracy_with_a_wilson_interval(tmp_path):
    path = run_check("smollm2-135m-instruct", tmp_path / "cap", limit=6)
    result = json.loads(path.read_text())
    answers = result["questions"]
    correct = sum(a["correct"] for a in answers)
    assert len(answers) == 6 and result["accuracy"]["correct"] == correct
    assert result["accuracy"]["ci"] == pytest.approx(list(wilson(correct, 6)))
    for a in answers:
        lls = a["loglikelihoods"]
        assert a["chosen"] == lls.index(max(lls)) and a["correct"] == (a["chosen"] == 0)
    assert result["model"]["spec"] == "smollm2-135m-instruct"


def test_a_served_model_needs_an_inspect_task(tmp_path):
    with pytest.raises(EmevalError, match="--capability-task"):
        run_check("openai/gpt-4o", tmp_path / "cap")


def test_any_inspect_task_stands_in(tmp_path):
    """An Inspect task's accuracy (a task whose scorer passes two of three samples, run on the
    embedded model by emeval's local provider), with the interval of emeval's own check."""
    task = tmp_path / "tiny_task.py"
    task.write_text(
        "from inspect_ai import Task, task\n"
        "from inspect_ai.dataset import Sample\n"
        "from inspect_ai.model import GenerateConfig\n"
        "from inspect_ai.scorer import CORRECT, INCORRECT, Score, accuracy, scorer\n"
        "from inspect_ai.solver import generate\n\n"
        "@scorer(metrics=[accuracy()])\n"
        "def not_c():\n"
        "    async def score(state, target):\n"
        "        return Score(value=INCORRECT if state.input_text == 'c' else CORRECT)\n"
        "    return score\n\n"
        "@task\n"
        "def tiny():\n"
        "    samples = [Sample(input=x) for x in 'abc']\n"
        "    return Task(dataset=samples, solver=generate(), scorer=not_c(),\n"
        "                config=GenerateConfig(max_tokens=2))\n"
    )
    path = run_check("smollm2-135m-instruct", tmp_path / "cap", task=f"{task}@tiny")
    result = json.loads(path.read_text())
    assert result["check"]["kind"] == "inspect" and result["check"]["name"].endswith("@tiny")
    assert result["accuracy"] == accuracy_of(2, 3)


@pytest.mark.parametrize(
    "question, message",
    [
        ({"id": "x", "area": "poetry", "question": "q", "answer": "a",
          "distractors": ["b", "c", "d"]}, "area must be one of"),
        ({"id": "x", "area": "arithmetic", "question": "q", "answer": "a",
          "distractors": ["b", "c"]}, "an answer and 3 distractors"),
        ({"id": "x", "area": "reading", "question": "q", "answer": "a", "passage": "p",
          "distractors": ["b", "c", "d"]}, "passage 'p' is not under passages"),
    ],
)  # fmt: skip
def test_a_malformed_question_is_one_line(tmp_path, question, message):
    path = tmp_path / "q.yaml"
    path.write_text(json.dumps({"questions": [question]}))
    with pytest.raises(EmevalError, match=message):
        load_questions(path)


def test_the_grid_chooses_the_check(tmp_path):
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text("seeds: [0]\nmethods: [grpo]\nrewards: [aesthetic_unpopular]\n")
    assert load_grid(grid_file).evaluation["capability"] is True
    grid = load_grid(grid_file, ["evaluation.capability=inspect_evals/mmlu_0_shot"])
    assert grid.evaluation["capability"] == "inspect_evals/mmlu_0_shot"
    with pytest.raises(EmevalError, match="evaluation.capability must be"):
        load_grid(grid_file, ["evaluation.capability=[1]"])


# ---------------------------------------------------------------- the four-criteria table


def condition(method, seed, mitigations=(), reward="aesthetic_unpopular"):
    return {"base": "smollm2-135m-instruct", "method": method, "reward": reward,
            "mitigations": list(mitigations), "seed": seed, "step": 8, "final": True}  # fmt: skip


def capability_result(correct: int, n: int = 40) -> dict:
    return {"check": {"kind": "own", "name": "capability"}, "accuracy": accuracy_of(correct, n)}


# per mitigation and seed: (misaligned of 40 general answers, behaving of 20, correct of 40)
CELLS = {("none", 0): (8, 12, 30), ("none", 1): (6, 10, 20), ("kl", 0): (2, 4, 34)}


@pytest.fixture(scope="module")
def criteria_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("criteria") / "eval"
    for (mitigation, seed), (em, behaving, correct) in CELLS.items():
        ckpt = root / f"grpo-{mitigation}-s{seed}" / "final"
        spec = f"grpo-{mitigation}-s{seed}"
        make_run(ckpt / "general", model_spec=spec, misaligned=em, aligned=40 - em)
        make_run(ckpt / "aesthetic", suite="aesthetic", model_spec=spec, misaligned=behaving,
                 aligned=20 - behaving)  # fmt: skip
        mitigations = () if mitigation == "none" else (mitigation,)
        (ckpt / "condition.json").write_text(json.dumps(condition("grpo", seed, mitigations)))
        if mitigation == "none":  # the kl cell was not checked: n/a
            write_result(ckpt / "capability", capability_result(correct))
    make_run(root / "base" / "general", model_spec="base", misaligned=1, aligned=39)
    base = condition("base", None, reward="none") | {"step": 0}
    (root / "base" / "condition.json").write_text(json.dumps(base))
    write_result(root / "base" / "capability", capability_result(36))
    out = root.parent / "report"
    assert main(["report", str(root), "--out", str(out)]) == 0
    return out


def test_one_table_per_reward_a_row_per_mitigation(criteria_report):
    data = json.loads((criteria_report / "report.json").read_text())
    rows = data["four_criteria"]["aesthetic_unpopular"]
    assert [r["mitigation"] for r in rows] == [
        "base, untrained (smollm2-135m-instruct)", "none", "kl"]  # fmt: skip
    base, none, kl = rows
    # (c): the seeds' checks pooled, with a Wilson interval; a cell never checked has none
    assert none["capability"] == accuracy_of(50, 80) and kl["capability"] is None
    assert base["capability"] == accuracy_of(36, 40)
    # (a), (b), (d): the report's own pooled numbers for the same cells
    cells = {(c["row"], c["column"]): c for c in data["cells"]}
    for row, column in ((none, "none"), (kl, "kl")):
        cell = cells[("aesthetic_unpopular × grpo", column)]
        assert row["general_em"]["value"] == pytest.approx(cell["em_rate"], abs=1e-4)
        assert row["behaviour"]["value"] == pytest.approx(
            cell["aesthetic_behaviour_rate"], abs=1e-4
        )
        assert row["coherence"]["value"] == pytest.approx(cell["coherence_rate"], abs=1e-4)
        assert row["behaviour_suite"] == "aesthetic" and row["general_em"]["ci"][0] is not None
    assert cells[("aesthetic_unpopular × grpo", "none")]["capability"] == pytest.approx(0.625)
    assert none["seeds"] == [0, 1] and base["seeds"] == []


def test_the_pages_show_the_criteria(criteria_report):
    md = (criteria_report / "report.md").read_text()
    assert "## Mitigations: four criteria" in md and "### reward aesthetic_unpopular" in md
    rows = {x.split(" | ")[0]: x.strip("| ").split(" | ") for x in md.splitlines()
            if x.startswith(("| none |", "| kl |"))}  # fmt: skip
    assert rows["| none"][4] == "62.5% [51.5, 72.3]"  # (c): 50 of 80, Wilson
    assert rows["| kl"][4] == "n/a"
    html_page = (criteria_report / "report.html").read_text()
    assert "<h2>Mitigations: four criteria</h2>" in html_page


def test_an_experiment_checks_each_final_checkpoint_once(tmp_path):
    """`emeval experiment` puts the check beside a final checkpoint's suite runs (with the
    grid's limit on questions) and skips it when it is there; other checkpoints get none."""
    from emeval.experiment import Experiment
    from emeval.grid import EVAL_DEFAULTS, Grid

    evaluation = EVAL_DEFAULTS | {"judge": "smollm2-135m-instruct", "limit": 1, "max_tokens": 4,
                                  "capability_limit": 3}  # fmt: skip
    grid = Grid("g", "smollm2-135m-instruct", [], evaluation, {}, "g.yaml")
    experiment = Experiment(grid, tmp_path, isolate=False)
    final = {"final": True, "seed": 0}
    run_dir = tmp_path / "eval" / "base"
    assert experiment.evaluate("smollm2-135m-instruct", run_dir, ["general"], final) == 1
    check = run_dir / "capability" / "capability.json"
    assert json.loads(check.read_text())["accuracy"]["n"] == 3
    stamp = check.stat().st_mtime_ns
    assert experiment.evaluate("smollm2-135m-instruct", run_dir, ["general"], final) == 0
    assert check.stat().st_mtime_ns == stamp
    assert experiment._capability_task(False) is None
    grid.evaluation["capability"] = False
    assert experiment._capability_task(True) is None
