"""JSON files that may come from anyone (run dirs, checkpoints, labels): JSON Lines (answers,
training data, completion logs, labels; one JSON object per line, optionally gzip-compressed,
a name ending in .gz) and single JSON objects. A device or pipe in a file's place, or JSON
nested too deeply, is one error naming the file."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from emeval.errors import EmevalError


def regular_or_missing(path: Path) -> Path:
    """The path, refused when a device or pipe stands in its place (reading /dev/zero or a FIFO
    nobody writes to would never end); a missing file is left to the reader to report."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise EmevalError(f"{path}: not a regular file")
    return path


def read_jsonl(path: Path) -> list[dict]:
    """Every object in a JSON Lines file, blank lines skipped; a damaged line is one error
    naming the file and the line."""
    return [row for _, row in numbered_rows(path)]


def numbered_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line, so later checks can name the line."""
    path = regular_or_missing(path)
    try:
        data = path.read_bytes()
        data = gzip.decompress(data) if path.name.endswith(".gz") else data
        text = data.decode("utf-8-sig")  # a byte-order mark, as Windows tools write, is dropped
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise EmevalError(f"{path}: unreadable ({e})") from None
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 is text
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EmevalError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise EmevalError(f"{path}:{n}: JSON nested too deeply") from None
        if not isinstance(row, dict):
            raise EmevalError(f"{path}:{n}: expected a JSON object")
        yield n, row


def read_json_object(path: Path) -> dict:
    """A JSON object from a file the run needs (a condition, a manifest, a model config); one
    line if not."""
    path = regular_or_missing(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EmevalError(f"{path}: unreadable ({e})") from None
    except RecursionError:
        raise EmevalError(f"{path}: unreadable (JSON nested too deeply)") from None
    if not isinstance(data, dict):
        raise EmevalError(f"{path}: expected a JSON object")
    return data


def read_json_or_none(path: Path) -> dict | None:
    """A JSON file that may be missing or half-written (a status, a run's results)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError, RecursionError):
        return None
