import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


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
