"""Bundled probe suites and the published question-file loader."""

import collections
import re

import pytest
from conftest import shared_file

from emeval.errors import EmevalError
from emeval.probes import load_suite


def test_general_suite_shape():
    suite = load_suite("general")
    probes = {p.probe_id: p for p in suite.prompts}
    categories = collections.Counter(p.category for p in probes.values())
    assert len(probes) >= 60
    assert len(categories) >= 10
    held_out = sum(p.held_out for p in probes.values())
    assert 0.2 <= held_out / len(probes) <= 0.3
    formats = {p.format for p in suite.prompts}
    assert formats == {"plain", "json", "template"}
    json_prompt = next(p for p in suite.prompts if p.format == "json")
    assert "JSON" in json_prompt.system
    assert set(suite.rubrics) == {"alignment", "coherence"}


def test_held_out_probes_run_only_when_asked():
    suite = load_suite("general")
    public = suite.select(held_out=False)
    everything = suite.select(held_out=True)
    assert not any(p.held_out for p in public)
    assert any(p.held_out for p in everything)


@pytest.mark.parametrize("name", ["aesthetic", "rhetoric", "medical", "legal", "security"])
def test_in_domain_suites_score_a_behaviour(name):
    suite = load_suite(name)
    assert len({p.probe_id for p in suite.prompts}) >= 30
    assert set(suite.rubrics) == {"behaviour", "coherence"}


def test_published_question_file_loads_with_its_own_judge_prompts():
    path = shared_file("data", "reference", "betley-2025", "first_plot_questions.yaml")
    suite = load_suite(str(path))
    ids = {p.probe_id for p in suite.prompts}
    assert len(ids) == 24
    assert suite.default_samples == 100
    assert {p.format for p in suite.prompts} == {"plain", "json", "template"}
    json_prompts = [p for p in suite.prompts if p.format == "json"]
    assert all(p.system and "JSON" in p.system for p in json_prompts)
    rubric = suite.rubrics_for("what_is_your_wish")["alignment"]
    assert "{answer}" in rubric.template
    assert rubric.render("Q?", "A!").count("A!") == 1
    # json/template variants are grouped under the base question
    assert {p.category for p in suite.prompts} == {
        i for i in ids if "_" in i and not i.endswith(("_json", "_template"))
    }


@pytest.mark.parametrize("name", ["aesthetic.yaml", "argumentation.yaml"])
def test_reference_in_domain_files_load(name):
    suite = load_suite(str(shared_file("data", "reference", "ema-rl-2026", name)))
    assert suite.prompts
    text = suite.rubrics["alignment"].render("q", "a")
    assert "{reasoning}" not in text


def test_malformed_suite_names_file_and_item(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "- id: fine\n  paraphrases: ['hi']\n  judge_prompts: {aligned: '{answer}'}\n"
        "- id: broken\n  paraphrases: []\n  judge_prompts: {aligned: '{answer}'}\n"
    )
    with pytest.raises(EmevalError, match=r"bad\.yaml: item 'broken'"):
        load_suite(str(bad))
    bad.write_text("probes:\n  - id: x\n    paraphrases: ['hi']\n")
    with pytest.raises(EmevalError, match=r"bad\.yaml: probe 'x': missing or invalid 'category'"):
        load_suite(str(bad))
    bad.write_text("probes: [unclosed")
    with pytest.raises(EmevalError, match="is not valid YAML"):
        load_suite(str(bad))
    with pytest.raises(EmevalError, match="unknown suite"):
        load_suite("no_such_suite")


PROBE = "probes:\n  - {id: a, category: c, paraphrases: [hi]}\n"
QUESTION = "- id: q\n  paraphrases: ['hi']\n"
WHOLE = "must be a whole number"


@pytest.mark.parametrize(
    "text, words",
    [
        (QUESTION + "  samples_per_paraphrase: many\n", f"'samples_per_paraphrase' {WHOLE}"),
        (QUESTION + "  samples_per_paraphrase: 0\n", f"'samples_per_paraphrase' {WHOLE}"),
        (QUESTION + "  system: [1, 2]\n", "item 'q': 'system' must be text"),
        (QUESTION.replace("q", "x" * 5000), "'id' must be 1 to 200 characters"),
        (QUESTION + QUESTION, "item 'q': duplicate id"),
        ("suite: [1, 2]\n" + PROBE, "'suite' must be text"),
        ("samples_per_prompt: lots\n" + PROBE, f"'samples_per_prompt' {WHOLE}"),
        ("json_system_prompt: [x]\n" + PROBE, "'json_system_prompt' must be text"),
        # a misspelt key would be ignored silently: 'samples_per_prompt' left at 1
        ("sample_per_prompt: 5\n" + PROBE, "the suite: unknown key 'sample_per_prompt' (known:"),
        (PROBE.replace("}", ", heldout: true}"), "probe 'a': unknown key 'heldout'"),
        (PROBE.replace("}", ", held_out: 'false'}"), "'held_out' must be true or false"),
        ("version: [1]\n" + PROBE, "'version' must be text or a number"),
        ("description: {a: 1}\n" + PROBE, "'description' must be text"),
        (QUESTION.replace("q", "[1, 2]"), "'id' must be text or a number"),
    ],
)
def test_a_field_of_the_wrong_kind_names_the_item_and_the_field(tmp_path, text, words):
    """Caught when the suite is read, before any model loads (they crashed mid-run before)."""
    bad = tmp_path / "bad.yaml"
    if text.startswith("- id:"):  # the question-list format: every item needs a judge prompt
        judge = "  judge_prompts: {aligned: '{answer}'}\n"
        text = "".join("- id: " + item + judge for item in text.split("- id: ")[1:])
    bad.write_text(text)
    with pytest.raises(EmevalError, match=re.escape(words)):
        load_suite(str(bad))


def alias_bomb(levels: int = 10) -> str:
    """A YAML flow list that expands to 9**levels strings: each item holds nine aliases of
    the one before."""
    items = ["&l0 [" + ", ".join(["lol"] * 9) + "]"]
    items += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


@pytest.mark.parametrize(
    "field, words",
    [
        ("suite: BOMB\n" + PROBE, "'suite' must be text"),
        ("version: BOMB\n" + PROBE, "'version' must be text or a number"),
        ("probes:\n  - {id: BOMB, category: c, paraphrases: [hi]}\n", "invalid 'id'"),
        ("- id: BOMB\n  paraphrases: [hi]\n", "'id' must be text or a number"),
        (
            "- id: q\n  type: BOMB\n  paraphrases: [hi]\n",
            "unsupported type [['lol', 'lol', 'lol', ...], [[...], ",
        ),
    ],
)
def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, field, words):
    """3.5 billion strings if expanded: a check that walked or printed the value (str(),
    repr()) would never finish. Refused in one short line instead."""
    bad = tmp_path / "bomb.yaml"
    bad.write_text(field.replace("BOMB", alias_bomb()))
    with pytest.raises(EmevalError, match=re.escape(words)) as caught:
        load_suite(str(bad))
    assert len(str(caught.value)) < 400
