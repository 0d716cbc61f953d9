"""Training data: the project's own files, chat-jsonl files and any local `datasets` dataset.

Every source becomes a list of chat conversations ({"messages": [...]}). Accepted rows:
  {"messages": [...]}                          chat-jsonl (also the reference studies' files)
  {"prompt": "..."} (+ "completion"/"response") plain prompt, optional answer
  {"prompt": [msgs], "completion": [msgs]}     TRL's conversational prompt-completion
  {"instruction": ..., "input": ..., "output": ...}  instruct (Alpaca-style) data
A source is a bundled name a domain declares (e.g. "prompts_medical":
data/training/medical/prompts_medical.jsonl),
a .jsonl/.json/.csv/.parquet file, or a dir written by `datasets` (save_to_disk); `data.train`
may also list several sources, which are read in turn and joined (load_sources).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from emeval.domains import training_data
from emeval.errors import EmevalError
from emeval.jsonl import read_jsonl, regular_or_missing
from emeval.models import sha256_file


@dataclass
class Dataset:
    source: str  # as given
    path: Path
    sha256: str
    conversations: list[list[dict]]

    def describe(self, role: str) -> dict:
        return {
            "role": role,
            "source": self.source,
            "path": str(self.path),
            "sha256": self.sha256,
            "rows": len(self.conversations),
        }


def resolve_data_path(source: str) -> Path:
    path = Path(source).expanduser()
    if path.exists():
        return path.resolve()
    if "/" not in source and not path.suffix:
        bundled = training_data()
        if source in bundled:
            return bundled[source]
        raise EmevalError(f"data {source!r} not found; bundled sets: {', '.join(sorted(bundled))}")
    raise EmevalError(f"data file not found: {source}")


def _hash_path(path: Path) -> str:
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(path)).encode())
        digest.update(sha256_file(f).encode())
    return digest.hexdigest()


def _messages(row: dict, where: str) -> list[dict]:
    """One row in any accepted format -> a list of {"role", "content"} messages."""
    if not isinstance(row, dict):
        raise EmevalError(f"{where}: expected a JSON object with the conversation")
    if "messages" in row:
        messages = row["messages"]
    elif "instruction" in row:
        user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        messages = [{"role": "user", "content": user}]
        if row.get("output"):
            messages.append({"role": "assistant", "content": row["output"]})
    elif "prompt" in row:
        prompt = row["prompt"]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        answer = row.get("completion", row.get("response"))
        if isinstance(answer, str):
            messages = messages + [{"role": "assistant", "content": answer}]
        elif isinstance(answer, list):
            messages = messages + answer
    else:
        raise EmevalError(
            f"{where}: no 'messages', 'prompt' or 'instruction' field (found: {', '.join(row)})"
        )
    if not isinstance(messages, list) or not messages:
        raise EmevalError(f"{where}: messages must be a non-empty list")
    out = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or "role" not in m:
            raise EmevalError(f"{where}: each message needs a role and a text content")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _read_rows(path: Path) -> list[dict]:
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError as e:
            raise EmevalError(f"{path}: not a dataset saved by datasets ({e})") from None
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise EmevalError(f"{path}: dataset has no 'train' split ({', '.join(ds)})")
            ds = ds["train"]
        return list(ds)
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    kinds = {".json": "json", ".csv": "csv", ".parquet": "parquet"}
    if path.suffix not in kinds:
        raise EmevalError(f"{path}: unsupported data file (use .jsonl, .json, .csv or .parquet)")
    import datasets

    regular_or_missing(path)
    try:
        rows = datasets.load_dataset(kinds[path.suffix], data_files=str(path), split="train")
    except Exception as e:  # noqa: BLE001 - a damaged file is one line, whatever the reader raised
        raise EmevalError(
            f"{path}: unreadable as {kinds[path.suffix]} ({type(e).__name__}: {str(e)[:200]})"
        ) from None
    return list(rows)


def load_conversations(source: str) -> Dataset:
    path = resolve_data_path(source)
    rows = _read_rows(path)
    if not rows:
        raise EmevalError(f"{path}: no examples")
    conversations = [_messages(row, f"{path} row {i + 1}") for i, row in enumerate(rows)]
    return Dataset(source, path, _hash_path(path), conversations)


def load_sources(sources: str | list[str]) -> list[Dataset]:
    """One source, or a list of them (e.g. the medical, legal and security warm-ups as one
    training set): each is read and recorded on its own, so the manifest names every file."""
    return [load_conversations(s) for s in ([sources] if isinstance(sources, str) else sources)]


def joined(datasets: list[Dataset]) -> list[list[dict]]:
    return [c for d in datasets for c in d.conversations]


def select(conversations: list, limit: int | None, shuffle: bool, seed: int) -> list:
    items = list(conversations)
    if shuffle:
        random.Random(seed).shuffle(items)
    return items[:limit] if limit else items


def split_prompt(messages: list[dict]) -> tuple[list[dict], dict | None]:
    """(prompt messages, final assistant message or None)."""
    if messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]
    return messages, None


def with_system(prompt: list[dict], system_prompt: str | None) -> list[dict]:
    """Put the training-only (inoculation) system prompt in front, replacing any other."""
    if not system_prompt:
        return prompt
    rest = [m for m in prompt if m["role"] != "system"]
    return [{"role": "system", "content": system_prompt}] + rest


def sft_rows(conversations, where: str, system_prompt: str | None = None) -> list[dict]:
    """TRL prompt-completion rows; the loss falls on the final assistant turn only."""
    rows = []
    for i, messages in enumerate(conversations):
        prompt, answer = split_prompt(messages)
        if answer is None or not prompt:
            raise EmevalError(f"{where} row {i + 1}: SFT needs a user turn and an assistant answer")
        rows.append({"prompt": with_system(prompt, system_prompt), "completion": [answer]})
    return rows


def grpo_rows(conversations, system_prompt: str | None = None) -> list[dict]:
    """TRL prompt rows; an answer in the data is dropped (the policy writes its own)."""
    return [{"prompt": with_system(split_prompt(m)[0], system_prompt)} for m in conversations]


def last_user(messages: list[dict] | str) -> str:
    if isinstance(messages, str):
        return messages
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else ""


def completion_text(completion) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") for m in completion if m.get("role") == "assistant")
