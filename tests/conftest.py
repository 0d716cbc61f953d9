import copy
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def sigint_as_in_a_terminal() -> None:
    """preexec_fn for a command a test interrupts with SIGINT: a shell starts background jobs
    with SIGINT ignored and children inherit that, so a test runner started in the background
    would send its Ctrl-C to a command deaf to it; a terminal's command handles it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def shared_file(*parts: str) -> Path:
    """A file from ../shared, or skip: a user's clone has no shared/ folder."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference file absent: {path}")
    return path


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    from emeval.models import pull

    return pull("smollm2-135m-instruct", quiet=True)


def copy_model(source: Path, target: Path) -> Path:
    """A checkpoint copy whose weight files are hard links (the tests rename or delete them,
    never write into them): 0.5 GB less disk per copy. Other files are real copies."""

    def link_weights(src: str, dst: str) -> str:
        if src.endswith(".safetensors"):
            try:
                os.link(src, dst)
                return dst
            except OSError:  # another filesystem: copy
                pass
        return shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_weights)
    return target


def merge(base: dict, extra: dict) -> dict:
    """base with extra laid over it, nested dicts merged key by key (test configs)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def wait_for_a_finished_sample(proc, logs_dir: Path, timeout: float = 600) -> list:
    """Poll a running eval's Inspect log until a sample has finished (or the process ended);
    return the finished samples' summaries."""
    import time
    import zipfile

    from inspect_ai.log import list_eval_logs, read_eval_log_sample_summaries

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        logs = list_eval_logs(str(logs_dir)) if logs_dir.exists() else []
        try:
            done = read_eval_log_sample_summaries(logs[0]) if logs else []
        except (ValueError, OSError, KeyError, zipfile.BadZipFile):
            done = []  # caught while Inspect rewrites the log: read it again next time
        if done:
            return done
        time.sleep(1)
    return []


def torchrun_train(config: Path, out: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`emeval train CONFIG --out OUT` under torchrun with 2 CPU ranks; asserts it exits 0.
    The ranks run in their own process group, all killed on a timeout (killing torchrun alone
    leaves them running)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "emeval.cli", "train", str(config), "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(
            f"torchrun ran past {timeout} s; stdout ends:\n{stdout[-1000:]}\n{stderr[-1000:]}"
        )
    # torchrun's own summary fills the end of stderr; the ranks' errors come before it
    clues = [line for line in stderr.splitlines() if re.search(r"rror|terminate|abort", line)]
    assert proc.returncode == 0, "\n".join(clues[:20]) + "\n" + stderr[-1000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
