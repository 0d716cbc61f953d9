"""Locate the bundled tasks/, judges/ and data/ folders, in a checkout or an installed wheel."""

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def resource_path(*parts: str) -> Path:
    """Path of a bundled resource such as resource_path("data", "probes")."""
    # A wheel carries them in emeval/_bundled; a checkout (or editable install) at the repo root.
    for root in (_PACKAGE_DIR / "_bundled", _PACKAGE_DIR.parent):
        candidate = root.joinpath(*parts)
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"bundled resource not found: {'/'.join(parts)}")


def cache_dir(*parts: str) -> Path:
    """emeval's cache (converted models, judge calls), under $EMEVAL_CACHE or ~/.cache/emeval."""
    import os

    root = Path(os.environ.get("EMEVAL_CACHE", Path.home() / ".cache" / "emeval"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
