"""JSON Lines files (answers, training data, completion logs): one JSON object per line."""

from __future__ import annotations

import json
from pathlib import Path

from emeval.errors import EmevalError


def read_jsonl(path: Path) -> list[dict]:
    """Every object in a JSON Lines file, blank lines skipped; a damaged line is one error
    naming the file and the line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EmevalError(f"{path}: unreadable ({e})") from None
    rows = []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 is text
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EmevalError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise EmevalError(f"{path}:{n}: expected a JSON object")
        rows.append(row)
    return rows
