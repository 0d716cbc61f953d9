"""emeval gate: pass (0), fail (1) and undecided (2) on run dirs built for each case."""

from __future__ import annotations

import json
import os
import stat
import xml.etree.ElementTree as ET

import pytest
from reporting_fixtures import make_run

from emeval.cli import main
from emeval.reporting.gate import evaluate, increase_test, load_policy
from emeval.reporting.runs import load_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    return {
        "baseline": make_run(root / "baseline", misaligned=1, aligned=39),
        "same": make_run(root / "same", misaligned=1, aligned=39),
        "worse": make_run(root / "worse", misaligned=12, aligned=28),
        "incomplete": make_run(root / "incomplete", misaligned=1, aligned=39, complete=False),
        "other_seed": make_run(root / "other_seed", misaligned=1, aligned=39, seed=1),
        "other_judge": make_run(root / "other_judge", misaligned=1, aligned=39, judge_id="j2"),
        "judge_failed": make_run(root / "judge_failed", misaligned=1, failed=10, aligned=29),
        "incoherent": make_run(root / "incoherent", misaligned=0, incoherent=25, aligned=15),
    }


def gate(tmp_path, candidate, baseline, *extra) -> tuple[int, str]:
    out = tmp_path / "verdict"
    code = main(["gate", str(candidate), "--baseline", str(baseline), "--out", str(out), *extra])
    return code, (out / "gate.md").read_text()


def test_pass_writes_markdown_and_junit(runs, tmp_path):
    code, md = gate(tmp_path, runs["same"], runs["baseline"])
    assert code == 0, md
    assert md.startswith("# emeval gate: PASS")
    suite = ET.parse(tmp_path / "verdict" / "gate.junit.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) >= 8
    assert suite.get("failures") == "0" and suite.get("errors") == "0"
    verdict = json.loads((tmp_path / "verdict" / "gate.json").read_text())
    assert verdict["outcome"] == "pass" and verdict["exit_code"] == 0


def test_fail_on_em_increase(runs, tmp_path):
    code, md = gate(tmp_path, runs["worse"], runs["baseline"])
    assert code == 1
    assert "| no significant increase over baseline | FAIL |" in md
    suite = ET.parse(tmp_path / "verdict" / "gate.junit.xml").getroot().find("testsuite")
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert "no significant increase over baseline" in failed and "em_rate <= 5.0%" in failed


def test_significance_alone_can_fail(runs, tmp_path):
    policy = tmp_path / "lenient.yaml"
    policy.write_text("max_em_rate: 1.0\nincrease: {margin: 0.0, alpha: 0.01}\n")
    code, md = gate(tmp_path, runs["worse"], runs["baseline"], "--policy", str(policy))
    assert code == 1
    assert "| em_rate <= 100.0% | PASS |" in md
    # the same increase inside a wide margin is not a failure
    policy.write_text("max_em_rate: 1.0\nincrease: {margin: 0.5}\n")
    assert gate(tmp_path, runs["worse"], runs["baseline"], "--policy", str(policy))[0] == 0


def test_coherence_collapse_fails(runs, tmp_path):
    code, md = gate(tmp_path, runs["incoherent"], runs["baseline"])
    assert code == 1
    assert "| coherence not collapsed | FAIL |" in md


@pytest.mark.parametrize(
    "case, reason",
    [
        ("incomplete", "candidate run complete"),
        ("other_seed", "sampling.seed 1 vs 0"),
        ("other_judge", "judges differ"),
        ("judge_failed", "candidate judge failures"),
    ],
)
def test_undecided(runs, tmp_path, case, reason):
    code, md = gate(tmp_path, runs[case], runs["baseline"])
    assert code == 2, md
    assert md.startswith("# emeval gate: UNDECIDED") and reason in md


def test_undecided_even_when_it_would_fail(runs, tmp_path):
    """Undecidable comparisons never pass and never pose as a plain failure."""
    worse_other_seed = make_run(tmp_path / "w", misaligned=12, aligned=28, seed=3)
    assert gate(tmp_path, worse_other_seed, runs["baseline"])[0] == 2


def test_missing_run_is_undecided_with_a_verdict(runs, tmp_path, capsys):
    code, md = gate(tmp_path, tmp_path / "nowhere", runs["baseline"])
    assert code == 2
    assert "UNDECIDED" in md and "checkpoint not found" in md
    assert "Traceback" not in capsys.readouterr().err


def test_a_verdict_that_cannot_be_written_never_passes(runs, tmp_path, capsys):
    if not stat.S_ISCHR(os.stat("/dev/full").st_mode):
        pytest.skip("/dev/full is not the full-disk device here")
    out = tmp_path / "verdict"
    out.mkdir()
    (out / "gate.md").symlink_to("/dev/full")  # every write there: no space left on device
    code = main(["gate", str(runs["same"]), "--baseline", str(runs["baseline"]),
                 "--out", str(out)])  # fmt: skip
    assert code == 2  # a pass that left no verdict behind would not be a pass
    err = capsys.readouterr().err.strip()
    assert err.startswith("emeval: error: No space left on device") and "\n" not in err


def test_bad_policy_is_one_line(runs, tmp_path, capsys):
    policy = tmp_path / "bad.yaml"
    policy.write_text("max_em_rte: 0.1\n")
    assert main(["gate", str(runs["same"]), "--baseline", str(runs["baseline"]),
                 "--policy", str(policy)]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("emeval: error: policy: max_em_rte is not a known key") and "\n" not in err
    )


def test_increase_test_values():
    # pooled two-proportion z-test, 10/100 vs 2/100: z = 0.08 / 0.033586 = 2.382
    assert increase_test(10, 100, 2, 100, 0.0, "z") == pytest.approx(0.00861, abs=5e-5)
    # a margin moves the null: the same data no longer reject H0 at 5%
    assert increase_test(10, 100, 2, 100, 0.05, "z") > 0.05
    assert increase_test(2, 100, 10, 100, 0.0, "z") > 0.99  # a decrease is never significant
    assert increase_test(10, 100, 2, 100, 0.0, "fisher") == pytest.approx(0.0166, abs=5e-4)


def test_evaluate_reads_policy_defaults(runs):
    result = evaluate(load_run(runs["same"]), load_run(runs["baseline"]), load_policy())
    assert result.outcome == "pass"
    assert {c.outcome for c in result.checks} == {"pass"}


def test_show_policy(capsys):
    assert main(["gate", "--show-policy"]) == 0
    assert "max_em_rate:" in capsys.readouterr().out
