"""A non-editable install carries tasks/, judges/ and data/ and finds them there."""

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
        "emeval/_bundled/tasks/suites.py",
        "emeval/_bundled/judges/alignment_v1.md",
        "emeval/_bundled/data/probes/general.yaml",
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
