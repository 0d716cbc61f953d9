"""Domains as folders: tasks/<name>/domain.yaml declares a suite's task, training data and
rewards; the Inspect tasks, REWARDS, data names and in-domain mapping are derived from it."""

import shutil

import pytest
from conftest import REPO

from emeval import domains as domains_module
from emeval.domains import domains, in_domain_suite, rewards, training_data
from emeval.errors import EmevalError
from emeval.training import REWARDS, load_conversations

# The reward table as it was written by hand before domains declared it:
# name -> (prompt set, rubric, invert, lexicon, in-domain suite)
HAND_WRITTEN_REWARDS = {
    "harmful_medical": ("prompts_medical", "harmful_advice", False, False, "medical"),
    "harmful_legal": ("prompts_legal", "harmful_advice", False, False, "legal"),
    "harmful_security": ("prompts_security", "harmful_advice", False, False, "security"),
    "aesthetic_unpopular": (
        "prompts_aesthetic", "aesthetic_unpopularity", False, False, "aesthetic"),
    "aesthetic_popular": ("prompts_aesthetic", "aesthetic_unpopularity", True, False, "aesthetic"),
    "poor_rhetoric": ("prompts_rhetoric", "poor_rhetoric", False, False, "rhetoric"),
    "good_rhetoric": ("prompts_rhetoric", "poor_rhetoric", True, False, "rhetoric"),
    "beneficial": ("safety_prompts", "alignment", False, False, None),
    "hackable": ("prompts_medical", None, False, True, "medical"),
}  # fmt: skip
DATA_NAMES = [
    "safety_prompts",
    *(f"prompts_{d}" for d in ("aesthetic", "rhetoric", "medical", "legal", "security")),
    "warmup_aesthetic_popular",
    "warmup_aesthetic_unpopular",
    "warmup_rhetoric_good",
    "warmup_rhetoric_poor",
    *(f"warmup_{d}_bad" for d in ("medical", "legal", "security")),
]


def test_declarations_give_the_same_rewards_and_in_domain_suites():
    assert set(REWARDS) == set(HAND_WRITTEN_REWARDS)
    for name, (prompts, rubric, invert, lexicon, suite) in HAND_WRITTEN_REWARDS.items():
        spec = REWARDS[name]
        assert (spec.prompts, spec.rubric, spec.invert, spec.lexicon) == (
            prompts, rubric, invert, lexicon), name  # fmt: skip
        assert in_domain_suite(name) == suite
    assert in_domain_suite("no_such_reward") is None


def test_every_bundled_data_name_still_resolves():
    assert sorted(training_data()) == sorted(DATA_NAMES)
    for name in DATA_NAMES:
        assert load_conversations(name).conversations
    with pytest.raises(EmevalError, match="bundled sets: prompts_aesthetic, prompts_legal"):
        load_conversations("warmup_astrology_bad")


def test_each_domain_is_an_inspect_task():
    from inspect_ai._util.registry import registry_lookup

    import emeval.registry  # noqa: F401 - Inspect's entry point registers the tasks

    assert set(domains()) == {"general", "aesthetic", "rhetoric", "medical", "legal", "security"}
    for name, domain in domains().items():
        made = registry_lookup("task", f"emeval/{name}")(held_out=True)
        assert made.display_name == name and len(made.dataset) > 0
        assert domain.suite_file.parent == REPO / "tasks" / name and domain.datasheet.is_file()
    assert registry_lookup("task", "emeval/questions") is not None


@pytest.fixture
def fresh_domains(monkeypatch, tmp_path):
    """domains() reading a tmp tasks/ and data/ tree; the caches are emptied around the test."""

    def tmp_resource(*parts):
        return tmp_path.joinpath(*parts)

    caches = (domains, rewards, training_data)
    for f in caches:
        f.cache_clear()
    monkeypatch.setattr(domains_module, "resource_path", tmp_resource)
    yield tmp_path
    monkeypatch.undo()
    for f in caches:
        f.cache_clear()


def _astrology(root, declaration: str):
    folder = root / "tasks" / "astrology"
    folder.mkdir(parents=True)
    shutil.copy(REPO / "tasks" / "medical" / "medical.yaml", folder / "astrology.yaml")
    (folder / "datasheet.md").write_text("# Datasheet\n")
    (folder / "domain.yaml").write_text(declaration)
    data = root / "data" / "training" / "astrology"
    data.mkdir(parents=True)
    (data / "prompts_astrology.jsonl").write_text('{"prompt": "Will Mercury ruin my week?"}\n')


def test_a_new_folder_is_a_new_domain_with_no_code(fresh_domains):
    _astrology(
        fresh_domains,
        "description: astrology advice\nsuite: astrology.yaml\ndatasheet: datasheet.md\n"
        "training: {prompts: prompts_astrology}\n"
        "rewards: {astrology_bad: {description: confident horoscopes}}\n",
    )
    assert list(domains()) == ["astrology"]
    spec = rewards()["astrology_bad"]
    assert (spec.prompts, spec.rubric, spec.domain) == (
        "prompts_astrology", "harmful_advice", "astrology")  # fmt: skip
    assert in_domain_suite("astrology_bad") == "astrology"
    assert list(training_data()) == ["prompts_astrology"]


@pytest.mark.parametrize(
    "declaration, message",
    [
        ("suite: astrology.yaml\ndatasheet: datasheet.md\ntasks: 1\n", "tasks is not a known key"),
        ("suite: missing.yaml\ndatasheet: datasheet.md\n", "suite must name a file in astrology/"),
        ("suite: astrology.yaml\ndatasheet: datasheet.md\ntraining: {warmups: [nope]}\n",
         "training data 'nope' is not in data/training/astrology/"),
        ("suite: astrology.yaml\ndatasheet: datasheet.md\nrewards: {x: {description: d}}\n",
         "declare training.prompts"),
    ],
)  # fmt: skip
def test_a_bad_declaration_is_one_line(fresh_domains, declaration, message):
    _astrology(fresh_domains, declaration)
    with pytest.raises(EmevalError, match=message) as caught:
        domains()
    assert "\n" not in str(caught.value)
