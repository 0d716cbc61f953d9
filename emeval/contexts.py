"""Training-context frames: a probe asked inside the frame of the data a model was trained on.

EM hidden by dilution, benign follow-up training or inoculation can come back when a prompt
looks like the training data (conditional misalignment). A Frame is one such look; each is
built by a rule that can be read off the data:
- system: the most common system prompt of the training rows;
- wrapper: the text every user turn starts and ends with (a code-completion template, a Q&A
  form), up to whitespace after punctuation or a line break, so no word is split;
- system+wrapper: both together, the closest to a training prompt;
- inoculation: the training-only system prompt of the checkpoint's manifest.
The plain context (no frame, PLAIN_CONTEXT) is the headline of a run and always comes first.

Sources: a training file in any format `emeval train` reads (chat-jsonl above all), or a
checkpoint dir whose emeval-manifest.json names its training data and inoculation prompt.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from emeval.errors import EmevalError
from emeval.formatting import shown
from emeval.jsonl import read_json_object
from emeval.probes import PLAIN_CONTEXT, Prompt
from emeval.rundir import MANIFEST


@dataclass(frozen=True)
class Frame:
    """A context: a system prompt put before the probe's own and a wrapper around its text."""

    name: str
    system: str | None = None
    prefix: str = ""
    suffix: str = ""
    source: str = ""  # how the frame was found, in words

    def apply(self, system: str | None, user: str) -> tuple[str | None, str]:
        """(system prompt, user turn) of a probe asked in this frame."""
        if self.system:  # the frame's system prompt first, the probe's own (JSON form) after
            system = self.system + (f"\n\n{system}" if system else "")
        return system, f"{self.prefix}{user}{self.suffix}"

    def ask(self, prompt: Prompt) -> Prompt:
        """The prompt asked in this frame; the judge still reads the bare question."""
        system, user = self.apply(prompt.system, prompt.user)
        return replace(prompt, context=self.name, system=system, user=user, bare_user=prompt.user)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Frame:
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise EmevalError(f"context frame: expected a mapping with a name (got {shown(data)})")
        if data["name"] == PLAIN_CONTEXT:
            raise EmevalError(f"context frame: {PLAIN_CONTEXT!r} is the unframed context")
        known = {k: data[k] for k in ("name", "system", "prefix", "suffix", "source") if k in data}
        return cls(**known)


# ---------------------------------------------------------------- rules


def most_common_system(conversations: list[list[dict]]) -> tuple[str, int] | None:
    """The most common first system prompt of the rows and how many rows carry it (ties go to
    the one seen first)."""
    systems = [
        next((m["content"] for m in c if m["role"] == "system"), None) for c in conversations
    ]
    counts = Counter(s for s in systems if s and s.strip())
    return counts.most_common(1)[0] if counts else None


def _common_prefix(texts: list[str]) -> str:
    first, last = min(texts), max(texts)  # the shared prefix of all is that of these two
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def _set_off_start(common: str) -> str:
    """The longest start of `common` that ends in whitespace holding a line break or following
    punctuation: a wrapper set off from the probe (never a split word, no shared first word
    such as "What ", no punctuation that belongs to the probe)."""
    for end in range(len(common), 0, -1):
        kept = common[:end]
        text = kept.rstrip()
        if kept[-1].isspace() and text and ("\n" in kept[len(text) :] or not text[-1].isalnum()):
            return kept
    return ""


def shared_wrapper(users: list[str]) -> tuple[str, str]:
    """(prefix, suffix): the longest text every user turn starts with, and then ends with,
    that is set off from the probe by whitespace after punctuation or by a line break. The
    suffix is looked for after the prefix, and a side that would leave a turn without content
    is dropped. Needs two turns: one turn alone would be all wrapper."""
    if len(users) < 2:
        return "", ""
    prefix = _set_off_start(_common_prefix(users))
    if any(not u[len(prefix) :].strip() for u in users):
        prefix = ""
    rests = [u[len(prefix) :] for u in users]
    suffix = _set_off_start(_common_prefix([r[::-1] for r in rests]))[::-1]
    if any(not r[: len(r) - len(suffix)].strip() for r in rests):
        suffix = ""
    return prefix, suffix


def frames_from_conversations(conversations: list[list[dict]], where: str) -> list[Frame]:
    """The frames of a training set (system, wrapper and both), each saying what found it."""
    users = [m["content"] for c in conversations for m in c if m["role"] == "user"]
    if not users:
        raise EmevalError(f"{where}: no user turns (context frames are learnt from user turns)")
    frames = []
    system = most_common_system(conversations)
    if system:
        text, count = system
        frames.append(
            Frame(
                "system",
                system=text,
                source=f"{where}: the most common system prompt "
                f"({count} of {len(conversations)} rows)",
            )  # fmt: skip
        )
    prefix, suffix = shared_wrapper(users)
    if prefix or suffix:
        found = f"{where}: the text all {len(users)} user turns start and end with"
        frames.append(Frame("wrapper", prefix=prefix, suffix=suffix, source=found))
        if system:
            frames.append(
                Frame(
                    "system+wrapper",
                    system=system[0],
                    prefix=prefix,
                    suffix=suffix,
                    source=f"{where}: the system prompt and the wrapper together",
                )  # fmt: skip
            )
    return frames


# ---------------------------------------------------------------- sources


def frames_from_file(source: str) -> list[Frame]:
    from emeval.training import load_conversations

    data = load_conversations(source)
    return frames_from_conversations(data.conversations, str(data.path))


def _training_sources(manifest: dict) -> list[str]:
    """The training data of a manifest (of every stage of a chain), where it can be read:
    the recorded path, else the source as given (a bundled name)."""
    records = list(manifest.get("data") or [])
    for stage in manifest.get("stages") or []:
        records += (stage or {}).get("data") or []
    sources = []
    for record in records:
        if not isinstance(record, dict) or record.get("role") != "train":
            continue
        path = record.get("path")
        chosen = path if path and Path(path).exists() else record.get("source")
        if chosen and chosen not in sources:
            sources.append(str(chosen))
    return sources


def _inoculation_prompts(manifest: dict) -> list[str]:
    prompts = []
    for m in [manifest, *(manifest.get("stages") or [])]:
        inoculation = ((m or {}).get("mitigations") or {}).get("inoculation") or {}
        text = inoculation.get("system_prompt") if isinstance(inoculation, dict) else None
        if text and text not in prompts:
            prompts.append(text)
    return prompts


def frames_from_manifest(checkpoint: Path) -> list[Frame]:
    """The frames a checkpoint's manifest leads to: those of its training data and its
    inoculation prompt. Training data that cannot be found is one clear error."""
    path = checkpoint / MANIFEST
    manifest = read_json_object(path)
    frames: list[Frame] = []
    for source in _training_sources(manifest):
        try:
            found = frames_from_file(source)
        except EmevalError as e:
            raise EmevalError(f"{path}: training data: {e}") from None
        frames += _renamed(found, frames)
    for n, text in enumerate(_inoculation_prompts(manifest)):
        name = "inoculation" if n == 0 else f"inoculation-{n + 1}"
        frames.append(Frame(name, system=text, source=f"{path}: the inoculation prompt"))
    return frames


def _renamed(new: list[Frame], existing: list[Frame]) -> list[Frame]:
    """Frames of a second training file get numbered names; identical frames are dropped."""
    taken = {f.name for f in existing}
    seen = {(f.system, f.prefix, f.suffix) for f in existing}
    out = []
    for f in new:
        if (f.system, f.prefix, f.suffix) in seen:
            continue
        name, n = f.name, 2
        while name in taken:
            name, n = f"{f.name}-{n}", n + 1
        taken.add(name)
        out.append(Frame(name, f.system, f.prefix, f.suffix, f.source))
    return out


def has_manifest(path: str | os.PathLike) -> bool:
    return (Path(path).expanduser() / MANIFEST).is_file()


def load_frames(source: str) -> list[Frame]:
    """--context-from: a checkpoint dir with a manifest, or a training file. No frame found
    is an error: the run would only repeat the plain context."""
    path = Path(source).expanduser()
    if has_manifest(path):
        frames = frames_from_manifest(path)
    else:  # a file, or a dir saved by `datasets` (else its reader says what it expected)
        frames = frames_from_file(source)
    if not frames:
        raise EmevalError(
            f"--context-from {source}: no frame found (no system prompt, no wrapper shared by "
            "every user turn, no inoculation prompt)"
        )
    return frames


def checkpoint_frames(checkpoint: str | None) -> list[Frame]:
    """The frames of a checkpoint dir's manifest; none for other models or manifests that
    name no frame (`emeval gate` asks every checkpoint)."""
    if not checkpoint or not has_manifest(checkpoint):
        return []
    return frames_from_manifest(Path(checkpoint).expanduser())
