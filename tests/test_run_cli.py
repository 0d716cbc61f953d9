"""`emeval run` end to end on the embedded model, and its one-line errors on bad input."""

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import (
    REPO,
    copy_model,
    shared_file,
    sigint_as_in_a_terminal,
    wait_for_a_finished_sample,
)

LOCAL_JUDGE = "smollm2-135m-instruct"
ALL_METRICS = {
    "em_rate",
    "em_rate_joint",
    "mean_alignment",
    "mean_coherence",
    "coherence_rate",
    "invalid_rate",
}


def emeval(*args, env=None, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "emeval.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def published_run(tmp_path_factory):
    """The published protocol on two questions, judged by the embedded model's logprobs."""
    questions = shared_file("data", "reference", "betley-2025", "first_plot_questions.yaml")
    out = tmp_path_factory.mktemp("run") / "betley"
    args = ["run", "--suite", questions, "--samples", "2", "--limit", "2", "--max-tokens", "16",
            "--judge", LOCAL_JUDGE, "--out", out]  # fmt: skip
    result = emeval(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    return out, args, result


def test_published_run_writes_every_metric(published_run):
    out, _, result = published_run
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete"
    assert ALL_METRICS <= set(results["metrics"])
    for metric in results["metrics"].values():
        assert set(metric) == {"value", "ci", "n"}
    assert results["counts"]["samples"] == 4  # 2 questions x 2 samples
    assert results["sampling"]["seed"] == 0  # the emeval provider seeds once per run
    assert results["sampling"]["all_paraphrases"] is False  # the file has one per question
    assert results["judges"][0]["id"].startswith("local:smollm2-135m-instruct@")
    rubric = results["judges"][0]["rubrics"]["alignment"]
    assert rubric["name"] == "first_plot_questions:aligned" and len(rubric["sha256"]) == 64
    assert results["judge_methods"] == {"logprob_exact": 12}  # 3 judge prompts in the file
    assert len(results["model"]["weights_sha256"]) == 64
    assert (out / results["log_file"]).exists()
    from inspect_ai.log import read_eval_log

    shown = read_eval_log(str(out / results["log_file"]), header_only=True).results.scores[0]
    for name in ("em_rate", "mean_alignment"):  # what `inspect eval` and `inspect view` show
        ours, theirs = results["metrics"][name]["value"], shown.metrics[name].value
        assert math.isnan(theirs) if ours is None else theirs == pytest.approx(ours)
    assert "EM rate" in result.stdout and "em_rate" not in result.stderr
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert {s["probe_id"] for s in samples} == {p["probe_id"] for p in results["per_probe"]}
    verdict = samples[0]["judges"][results["judges"][0]["id"]]["alignment"]
    assert len(verdict["distribution"]) >= 101  # raw distribution kept for re-aggregation
    assert (out / "summary.md").read_text().startswith("# emeval run")


def test_seed_only_goes_to_providers_that_seed_once_per_run():
    # a seed sent with every request (vLLM's server, OpenAI-style APIs) would make all the
    # samples of a probe one answer, so those providers run unseeded
    from emeval.models import ModelRef
    from emeval.runner import sampling_seed

    for model, seed in [("emeval/dir", 7), ("hf/dir", 7), ("vllm/dir", None),
                        ("openai/gpt-4o", None), ("openai-api/local/m", None)]:  # fmt: skip
        assert sampling_seed(ModelRef(spec=model, inspect_model=model), 7) == seed


def test_rescore_writes_over_nothing_and_only_answers_that_back_their_results(
    published_run, tmp_path
):
    """A rescore never writes over the run itself or another dir's files, and refuses a run
    whose samples.jsonl has lost answers its results count (it would call them complete)."""
    import shutil

    out, _, _ = published_run
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "summary.md").write_text("my notes")
    for target, words in ((out, "is the run being rescored"), (theirs, "holds other files")):
        one_line_error(emeval("rescore", out, "--judge", "offline", "--out", target), words)
    assert (theirs / "summary.md").read_text() == "my notes"
    one_line_error(emeval("rescore", out, "--judge", "", "--out", tmp_path / "e"), "empty judge")
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    rows = (cut / "samples.jsonl").read_text().splitlines()
    (cut / "samples.jsonl").write_text("\n".join(rows[:-1]) + "\n")
    one_line_error(
        emeval("rescore", cut, "--judge", "offline", "--out", tmp_path / "c"),
        "4 in results.json, 3 from samples.jsonl; its answers do not back its results",
    )
    assert not (tmp_path / "c").exists()
    rows[0] = json.dumps(json.loads(rows[0]) | {"probe_id": "not_in_suite"})
    (cut / "samples.jsonl").write_text("\n".join(rows) + "\n")
    one_line_error(
        emeval("rescore", cut, "--judge", "offline", "--out", tmp_path / "c"),
        "answers to probes not in the suite: ['not_in_suite']",
    )


def test_rerun_reuses_answers_and_rescore_needs_no_generation(published_run, tmp_path):
    out, args, _ = published_run
    first = json.loads((out / "results.json").read_text())
    # a run dir written before a setting existed still matches (the setting's default)
    settings = json.loads((out / "run.json").read_text())
    assert settings.pop("model_args") == {}
    (out / "run.json").write_text(json.dumps(settings))
    again = emeval(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "reusing finished answers" in again.stdout
    assert json.loads((out / "results.json").read_text())["metrics"] == first["metrics"]
    rescored = emeval(
        "rescore", out, "--judge", LOCAL_JUDGE, "--judge", "offline", "--out", tmp_path / "re"
    )
    assert rescored.returncode == 0, rescored.stderr[-2000:]
    redone = json.loads((tmp_path / "re" / "results.json").read_text())
    assert redone["rescored_from"] == str(out)
    assert redone["counts"] == first["counts"]  # first judge: same answers, cached verdicts
    # several judges: each judge's metrics and their agreement are reported
    judge_ids = [j["id"] for j in redone["judges"]]
    assert judge_ids[1].startswith("offline:") and set(redone["by_judge"]) == set(judge_ids)
    (agreement,) = redone["judge_agreement"]
    assert agreement["judges"] == judge_ids and 0 <= agreement["status_agreement"] <= 1
    offline_counts = redone["by_judge"][judge_ids[1]]["counts"]
    assert offline_counts["samples"] == 4 and offline_counts.get("ok", 0) >= 1
    # how far to trust each judge travels with its numbers
    local, offline = redone["judges"]
    assert local["validation"] == "unvalidated"
    assert offline["validation"]["summary"] and offline["validation"]["figures"]
    summary = (tmp_path / "re" / "summary.md").read_text()
    assert f"judge: {judge_ids[0]} (unvalidated" in summary
    # beside the suite's alignment and coherence: those figures, not the behaviour heads'
    shown = summary.split(f"judge: {judge_ids[1]} (validation: ")[1].splitlines()[0]
    assert "GPT-4o" in shown and "AUROC" in shown and "in-domain behaviour" not in shown
    assert "in-domain behaviour" in offline["validation"]["summary"]
    # a threshold flag moves its own side of the run's definition and keeps the other side
    steps = (
        (out, "--misaligned-below", "50", "m50"),
        (tmp_path / "m50", "--coherent-from", "30", "c30"),
    )
    for source, flag, value, target in steps:
        done = emeval(
            "rescore", source, "--judge", "offline", flag, value, "--out", tmp_path / target
        )
        assert done.returncode == 0, done.stderr[-2000:]
    kept = json.loads((tmp_path / "c30" / "results.json").read_text())["em_definition"]
    assert (kept["misaligned"], kept["coherent"]) == ("alignment < 50", "coherence >= 30")


def test_other_settings_in_the_same_dir_are_refused(published_run):
    out, args, _ = published_run
    changed = [a if a != "16" else "17" for a in args]
    result = emeval(*changed)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "max_tokens" in result.stderr


def test_a_dir_of_foreign_logs_or_results_is_refused(tmp_path):
    """Inspect logs or results without emeval's run.json are someone else's: never reused as
    this model's answers, and left as they were."""
    from inspect_ai import Task
    from inspect_ai import eval as inspect_eval
    from inspect_ai.dataset import Sample
    from inspect_ai.model import ModelOutput
    from inspect_ai.solver import solver

    @solver
    def canned():  # another model's answer, without a model or a network
        async def solve(state, generate):
            state.output = ModelOutput.from_content("mockllm/model", "hi")
            return state

        return solve

    theirs = tmp_path / "theirs"
    task = Task(dataset=[Sample(input="Say hi.", target="hi")], solver=canned())
    (log,) = inspect_eval(task, model="mockllm/model", log_dir=str(theirs / "logs"), display="none")
    assert log.status == "success"
    results_only = tmp_path / "results_only"
    (results_only / "general").mkdir(parents=True)
    (results_only / "general" / "results.json").write_text("{}")
    base = ["run", "--limit", "1", "--samples", "1", "--max-tokens", "8", "--out"]
    for out in (theirs, results_only):
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        one_line_error(
            emeval(*base, out),
            f"{out} holds Inspect logs, results, answers or a summary but no run.json",
        )
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # settings that cannot be read are no proof the answers are this run's either
    (theirs / "run.json").write_text("{not json")
    one_line_error(emeval(*base, theirs), "run.json is unreadable")


def test_a_run_records_that_it_asked_later_paraphrases(tmp_path):
    """Runs on other prompts must not be ranked together: results.json says whether any
    question was asked beyond its first paraphrase (the third prompt here is one)."""
    args = ["run", "--limit", "3", "--samples", "1", "--max-tokens", "8", "--all-paraphrases"]
    result = emeval(*args, "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["sampling"]["all_paraphrases"] is True
    samples = [json.loads(x) for x in (tmp_path / "samples.jsonl").open()]
    assert sorted(s["paraphrase"] for s in samples) == [0, 0, 1]


def test_model_args_reach_the_provider(tmp_path):
    from inspect_ai.log import list_eval_logs, read_eval_log

    base = ["run", "--limit", "1", "--samples", "1", "--max-tokens", "8", "--out", tmp_path]
    one_line_error(emeval(*base, "-M", "dtype=float12"), "unknown dtype 'float12'")
    one_line_error(emeval(*base, "-M", "kv_cache_gb=abc"), "kv_cache_gb must be a number")
    one_line_error(emeval(*base, "-M", "max_batch=0.5"), "max_batch must be a whole number")
    # the failed runs generated nothing, so the corrected command may use their dir
    good = emeval(*base, "-M", "kv_cache_gb=0.25", "-M", "pack_weights=false")
    assert good.returncode == 0, good.stderr[-2000:]
    log = read_eval_log(list_eval_logs(str(tmp_path / "logs"))[0], header_only=True)
    assert (
        log.eval.model_args["kv_cache_gb"] == 0.25 and log.eval.model_args["pack_weights"] is False
    )
    settings = json.loads((tmp_path / "run.json").read_text())
    assert settings["model_args"] == {"kv_cache_gb": 0.25, "pack_weights": False}
    one_line_error(emeval(*base, "-M", "trust_remote_code=true"), "set by --trust-remote-code")


def one_line_error(result, pattern):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("emeval: error:") and pattern in lines[0], lines[0]


def test_bad_inputs_give_one_line(tmp_path, embedded_model_dir):
    one_line_error(emeval("run", tmp_path / "missing"), "checkpoint not found")
    one_line_error(emeval("run", tmp_path), "not a model directory")
    bad_suite = tmp_path / "bad.yaml"
    bad_suite.write_text("probes:\n  - id: p1\n    category: c\n    paraphrases: 7\n")
    one_line_error(emeval("run", "--suite", bad_suite), "bad.yaml: probe 'p1'")
    bad_suite.write_bytes(b"\xff\xfeprobes: []")  # UTF-16 from a Windows editor
    one_line_error(emeval("run", "--suite", bad_suite), "bad.yaml is not UTF-8 text")
    one_line_error(emeval("run", "--judge", "nonsense-judge"), "unknown judge")
    huge = emeval("run", "--samples", "100000000", "--limit", "1", "--out", tmp_path / "huge")
    one_line_error(huge, "1 prompts x 100000000 samples is 100,000,000 answers, more than")
    assert not (tmp_path / "huge").exists()  # refused before anything is written
    one_line_error(emeval("run", "--limit", "0"), "--limit must be at least 1")
    one_line_error(emeval("run", "--temperature", "-1"), "--temperature must be 0")
    one_line_error(emeval("run", "--max-connections", "0"), "--max-connections must be at least")
    one_line_error(emeval("run", "--judge", ""), "empty judge spec")
    notes = tmp_path / "notes"  # a user's own dir: the files a run writes would replace theirs
    notes.mkdir()
    (notes / "summary.md").write_text("my notes")
    one_line_error(emeval("run", "--limit", "1", "--out", notes), "or a summary but no run.json")
    assert (notes / "summary.md").read_text() == "my notes"
    piped = tmp_path / "piped"  # a FIFO in run.json's place: writing the settings would wait
    piped.mkdir()
    os.mkfifo(piped / "run.json")
    one_line_error(emeval("run", "--limit", "1", "--out", piped, timeout=120), "not a regular file")
    unreachable = {"DEAD_API_KEY": "x", "DEAD_BASE_URL": "http://127.0.0.1:9/v1"}
    one_line_error(
        emeval("run", "--judge", "openai-api/dead/model", env=unreachable),
        "judge openai-api/dead/model unreachable",
    )
    # a served model to evaluate: Inspect alone would retry a dead server for minutes, saying
    # nothing; emeval asks it once and stops before writing anything
    dead_run = emeval("run", "openai-api/dead/model", "--out", tmp_path / "dead", env=unreachable)
    one_line_error(dead_run, "model openai-api/dead/model unreachable")
    assert not (tmp_path / "dead").exists()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    one_line_error(emeval("run", adapter), "names no base model")
    no_template = tmp_path / "no_template"
    copy_model(embedded_model_dir, no_template)
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    (no_template / "chat_template.jinja").unlink(missing_ok=True)
    one_line_error(emeval("run", no_template), "no chat template")
    broken = tmp_path / "broken_run"  # a run dir whose results.json is damaged
    broken.mkdir()
    for text, pattern in (
        ("{not json", "results.json: unreadable"),
        ("[1, 2]", "expected a JSON object"),
    ):
        (broken / "results.json").write_text(text)
        one_line_error(emeval("rescore", broken, "--judge", "offline", "--out", tmp_path), pattern)


def test_failed_generations_are_named_and_the_rerun_retries_them(tmp_path, embedded_model_dir):
    """A checkpoint that takes fewer positions than some prompts: the engine refuses those
    requests. Every sample failed: one line naming the cause, no results. Some failed (the
    first sample among them): results.incomplete.json naming the cause. Once the cause is
    fixed, the same command generates the failed samples again: Inspect's log says 'success'
    (fail_on_error=False), but a log with failed samples is not reused as finished."""
    short = copy_model(embedded_model_dir, tmp_path / "short")
    config = json.loads((short / "config.json").read_text())

    def positions(n: int) -> None:
        (short / "config.json").write_text(json.dumps(config | {"max_position_embeddings": n}))

    def run(out):  # the first prompt of the general suite has 90 tokens, the second 55
        args = ["run", short, "--limit", "2", "--samples", "1", "--max-tokens", "8"]
        return emeval(*args, "--out", out, timeout=600)

    positions(16)
    result = run(tmp_path / "none")
    one_line_error(result, "2 of 2 failed, the first with ValueError('prompt has 90 tokens")
    assert "the model takes 16" in result.stderr
    assert not list((tmp_path / "none").glob("results*.json"))
    positions(60)
    out = tmp_path / "some"
    assert run(out).returncode == 3
    incomplete = json.loads((out / "results.incomplete.json").read_text())
    assert incomplete["counts"]["samples"] == 1 and incomplete["problems"] == [
        "1 samples failed to generate or score (the first: ValueError('prompt has 90 tokens; "
        "the model takes 60')); run again to retry them"
    ]
    positions(config["max_position_embeddings"])
    again = run(out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "generating again the 1 samples that failed in" in again.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete" and results["counts"]["samples"] == 2
    assert not (out / "results.incomplete.json").exists()


def test_every_output_dir_is_checked_before_any_work(tmp_path, capsys):
    """A file where a command would write its directory is one line, exit 2, and nothing is
    generated, trained or judged first."""
    from emeval.cli import main

    taken = tmp_path / "taken"
    taken.write_text("someone's file")
    labels = REPO / "data" / "judge_train" / "written_terse_second_pass.jsonl"
    run_dir, grid = tmp_path / "no_run", REPO / "experiments" / "smoke.yaml"
    config = REPO / "configs" / "train" / "grpo_aesthetic_popular.yaml"
    commands = [
        ["run"],
        ["rescore", run_dir, "--judge", "offline"],
        ["report", run_dir],
        ["gate", run_dir, "--baseline", run_dir],
        ["experiment", grid],
        ["train", config],
        *(["judge", kind, "--labels", labels] for kind in ("validate", "fit", "calibrate")),
        ["judge", "fit-behaviour", "--labels", labels],
    ]
    under = taken / "sub"
    for where, message in ((taken, f"{taken} exists and is not a directory"),
                           (under, f"{under}: {taken} is a file, not a directory")):  # fmt: skip
        for command in commands:
            assert main([*map(str, command), "--out", str(where)]) == 2, command
            err = capsys.readouterr().err.strip()
            assert err == f"emeval: error: --out {message}", (command, err)
        assert main(["leaderboard", "publish", str(run_dir), "--site", str(where)]) == 2
        assert capsys.readouterr().err.strip() == f"emeval: error: --site {message}"
    assert taken.read_text() == "someone's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_options_are_not_matched_by_prefix():
    """`--model` (Inspect's flag) must not be read as emeval's `--model-arg`."""
    result = emeval("run", "--model", "hf/some-model")
    assert result.returncode == 2 and "unrecognized arguments: --model" in result.stderr


def test_inspect_eval_runs_the_registered_task(tmp_path, embedded_model_dir):
    result = subprocess.run(
        [
            "inspect",
            "eval",
            "emeval/general",
            "--model",
            f"hf/{embedded_model_dir}",
            "--limit",
            "2",
            "-T",
            f"judge={LOCAL_JUDGE}",
            "-T",
            "max_tokens=8",
            "--log-dir",
            str(tmp_path),
            "--display",
            "plain",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    from inspect_ai.log import list_eval_logs, read_eval_log

    log = read_eval_log(list_eval_logs(str(tmp_path))[0])
    assert log.status == "success" and len(log.samples) == 2
    meta = log.samples[0].metadata
    assert {"probe_id", "category", "format"} <= set(meta)
    # the grader role judged: its exact-logprob verdicts are in the score metadata
    judges = next(iter(log.samples[0].scores.values())).metadata["judges"]
    assert len(judges) == 1 and next(iter(judges)).startswith("local:")


def stopped_as_interrupted(proc, signum, out) -> None:
    """Send a running `emeval run` the signal: it ends with the resume line, exit 130, and no
    results that could pass for a finished run."""
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    assert err.strip().splitlines()[-1] == (
        "emeval: interrupted; run the same command again to resume"
    ), err[-2000:]
    assert proc.returncode == 130, err[-2000:]
    assert not (out / "results.json").exists()


def test_interrupted_run_resumes_without_regenerating(tmp_path):
    import signal

    from inspect_ai.log import list_eval_logs, read_eval_log

    out = tmp_path / "run"
    args = ["run", "--limit", "3", "--max-connections", "1", "--max-tokens", "24",
            "--judge", LOCAL_JUDGE, "--out", out]  # fmt: skip
    # the provider generates for one sample, then holds the others until this file exists
    # (never, here): the signal lands with two samples certainly left, however slow the machine
    release = tmp_path / "never-created"
    proc = subprocess.Popen(
        [sys.executable, "-m", "emeval.cli", *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "EMEVAL_TEST_HOLD": f"1:{release}"},
        preexec_fn=sigint_as_in_a_terminal,
    )
    done_before = wait_for_a_finished_sample(proc, out / "logs")
    assert done_before, "no sample finished before the deadline"
    # a second run on the same dir meanwhile would resume the first's log beside it
    one_line_error(emeval(*args), "is in use by another emeval run")
    # Ctrl-C is the usual way to stop a run: one line saying how to resume, the shell's code
    stopped_as_interrupted(proc, signal.SIGINT, out)
    first_log = read_eval_log(list_eval_logs(str(out / "logs"))[0])
    assert first_log.status != "success"
    finished = [s for s in first_log.samples or [] if s.scores and not s.error]
    kept = {(s.id, s.epoch): s.output.completion for s in finished}
    assert len(kept) == 1, "the interrupted log should keep the one sample let through"

    resumed = emeval(*args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3
    answers = {(s["sample_id"], s["epoch"]): s["answer"] for s in samples}
    for key, answer in kept.items():
        assert answers[key] == answer  # finished samples were not generated again
    assert json.loads((out / "results.json").read_text())["status"] == "complete"


def test_a_log_cut_off_mid_write_is_kept_aside_and_the_run_starts_again(tmp_path):
    """A process killed outright can leave a half-written Inspect log: the rerun says so, keeps
    the file beside the new one and generates again, rather than failing on it forever."""
    out = tmp_path / "run"
    args = ["run", "--limit", "2", "--samples", "1", "--max-tokens", "8", "--out", out]
    first = emeval(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    (log,) = (out / "logs").glob("*.eval")
    data = log.read_bytes()
    log.write_bytes(data[: len(data) // 2])
    (out / "results.json").unlink()

    again = emeval(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{log.name} could not be read; kept as {log.name}.unreadable" in again.stdout
    assert (out / "logs" / f"{log.name}.unreadable").read_bytes() == data[: len(data) // 2]
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete" and results["counts"]["samples"] == 2
    # the judge's validation figures follow the table, one reference set per line
    trust = again.stdout.split(f"judge {results['judges'][0]['id']}: validation:\n")[1]
    sets = [line for line in trust.splitlines() if line.startswith("  - ")]
    assert len(sets) >= 3 and all("AUROC" in line for line in sets), again.stdout[-2000:]


@pytest.mark.parametrize("sigint", ["handled", "ignored"])
def test_kill_stops_a_run_as_ctrl_c_does(tmp_path, sigint):
    """`kill PID` (SIGTERM) mid-generation: the same line and exit code as Ctrl-C and a log
    that does not look finished, also when the run was started with SIGINT ignored (a shell's
    background job), where raising SIGINT instead would do nothing."""
    import signal

    from inspect_ai.log import list_eval_logs, read_eval_log

    out = tmp_path / "run"
    mode = signal.SIG_DFL if sigint == "handled" else signal.SIG_IGN
    proc = subprocess.Popen(
        [sys.executable, "-m", "emeval.cli", "run", "--limit", "3", "--max-connections", "1",
         "--max-tokens", "24", "--out", str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "EMEVAL_TEST_HOLD": f"1:{tmp_path / 'never-created'}"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, mode),
    )  # fmt: skip
    assert wait_for_a_finished_sample(proc, out / "logs"), "no sample finished before the deadline"
    stopped_as_interrupted(proc, signal.SIGTERM, out)
    assert read_eval_log(list_eval_logs(str(out / "logs"))[0]).status != "success"
