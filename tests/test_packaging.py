"""A non-editable install carries tasks/, judges/ and data/ and finds them there."""

import os
import subprocess
import sys
import zipfile

from conftest import REPO


def test_wheel_carries_tasks_judges_and_data(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            "-q",
        ],  # fmt: skip
        check=True,
        timeout=300,
    )
    wheel = next(tmp_path.glob("emeval-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "emeval/_bundled/tasks/general/domain.yaml",
        "emeval/_bundled/judges/alignment_v1.md",
        "emeval/_bundled/tasks/general/general.yaml",
        "emeval/_bundled/data/training/medical/warmup_medical_bad.jsonl",
        "emeval/_bundled/judges/offline_v5/reader.safetensors",  # the default judge's weights
        "emeval/_bundled/judges/offline_v5/validation.json",
    ):
        assert expected in names
    assert any(n.endswith("entry_points.txt") for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # from the unpacked wheel alone (no checkout on the path) the bundled files resolve
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "from emeval.probes import load_suite; import emeval.resources as r; "
            "s = load_suite('general'); print(r.resource_path('tasks'), len(s.prompts))",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert str(site / "emeval" / "_bundled" / "tasks") in probe.stdout


def test_missing_gguf_reader_is_one_line(tmp_path):
    """The embedded model's first conversion without accelerate (the quick-start bug) says
    what to install in one line; the import is blocked in the child process only."""
    code = (
        "import sys; sys.modules['accelerate'] = None\n"
        "import importlib.util as u; find = u.find_spec\n"
        "u.find_spec = lambda n, *a: None if n == 'accelerate' else find(n, *a)\n"
        "from emeval.cli import main; sys.exit(main(['models', 'pull', 'smollm2-135m-instruct']))"
    )
    env = {**os.environ, "EMEVAL_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "emeval: error: converting SmolLM2-135M-Instruct.Q4_1.gguf needs accelerate: "
        "pip install accelerate"
    ]


def test_unforeseen_failure_is_one_line_with_its_traceback_saved(tmp_path, monkeypatch, capsys):
    from emeval import cli
    from emeval.commands import models

    def broken(args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(models, "list_models", broken)
    monkeypatch.setattr(cli.tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("EMEVAL_DEBUG", raising=False)
    assert cli.main(["models", "list"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("emeval: error: RuntimeError: boom (")
    saved = next(tmp_path.glob("emeval-crash-*.txt")).read_text()
    assert "Traceback" in saved and "second line" in saved
