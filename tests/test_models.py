"""The embedded model and the checks on untrusted checkpoints."""

import json
import os
from pathlib import Path

import pytest
from conftest import copy_model

from emeval.errors import EmevalError
from emeval.models import MANIFEST, resolve_model, sha256_file, weights_sha256


def test_embedded_model_is_converted_with_a_manifest(embedded_model_dir):
    manifest = json.loads((embedded_model_dir / MANIFEST).read_text())
    assert len(manifest["source_sha256"]) == 64
    assert list(embedded_model_dir.glob("*.safetensors"))
    ref = resolve_model("smollm2-135m-instruct")
    assert ref.local_path == embedded_model_dir
    assert ref.weights_sha256 == manifest["weights_sha256"]


def test_embedded_model_generates_text(embedded_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, use_safetensors=True)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
    )
    ids = ids if hasattr(ids, "shape") else ids["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])


@pytest.fixture
def model_copy(tmp_path, embedded_model_dir):
    target = tmp_path / "ckpt"
    return copy_model(embedded_model_dir, target)


def test_copied_checkpoint_hashes_like_its_source(model_copy, embedded_model_dir):
    assert (
        resolve_model(str(model_copy)).weights_sha256
        == resolve_model(str(embedded_model_dir)).weights_sha256
    )


def test_missing_and_non_model_paths(tmp_path):
    with pytest.raises(EmevalError, match="checkpoint not found"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(EmevalError, match="not a model directory"):
        resolve_model(str(tmp_path))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(EmevalError, match="not a model directory"):
        resolve_model(str(tmp_path / "file.txt"))


def test_pickle_weights_refused_unless_allowed(model_copy):
    weights = next(model_copy.glob("*.safetensors"))
    weights.rename(model_copy / "pytorch_model.bin")
    with pytest.raises(EmevalError, match="pickle"):
        resolve_model(str(model_copy))
    allowed = resolve_model(str(model_copy), allow_pickle=True)
    assert allowed.model_args.get("use_safetensors") is None


def test_remote_code_refused_unless_trusted(model_copy):
    (model_copy / "modeling_evil.py").write_text("import os\n")
    with pytest.raises(EmevalError, match="--trust-remote-code"):
        resolve_model(str(model_copy))
    assert resolve_model(str(model_copy), trust_remote_code=True).model_args["trust_remote_code"]


def test_tokenizer_without_chat_template(model_copy):
    config = json.loads((model_copy / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model_copy / "tokenizer_config.json").write_text(json.dumps(config))
    (model_copy / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(EmevalError, match="no chat template"):
        resolve_model(str(model_copy))


def _config_list(ckpt):
    (ckpt / "config.json").write_text("[1, 2]")
    return "config.json: expected a JSON object"


def _config_nested(ckpt):
    (ckpt / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    return "config.json: unreadable (JSON nested too deeply)"


def _config_pipe(ckpt):
    (ckpt / "config.json").unlink()
    os.mkfifo(ckpt / "config.json")  # nobody writes: reading it would wait for ever
    return "config.json: not a regular file"


def _tokenizer_config_broken(ckpt):
    (ckpt / "tokenizer_config.json").write_text("{broken")
    return "tokenizer_config.json: unreadable (Expecting property name"


def _config_more_layers(ckpt):  # transformers would build them all, at random, until OOM
    config = json.loads((ckpt / "config.json").read_text())
    config["num_hidden_layers"] = 100_000
    (ckpt / "config.json").write_text(json.dumps(config))
    return "config.json: says 100000 layers, but the weights hold 30"


def _weights_damaged(ckpt):
    weights = ckpt / "model.safetensors"
    weights.unlink()  # a hard link to the shared copy: replace it, never write into it
    weights.write_bytes(b"\xff" * 64)
    return "model.safetensors: unreadable safetensors"


@pytest.mark.parametrize(
    "damage",
    [
        _config_list,
        _config_nested,
        _config_pipe,
        _tokenizer_config_broken,
        _config_more_layers,
        _weights_damaged,
    ],
)
def test_damaged_checkpoint_files_are_one_error_naming_the_file(model_copy, damage):
    """Checkpoints come from anyone: a damaged config is refused before anything loads it."""
    words = damage(model_copy)
    with pytest.raises(EmevalError) as caught:
        resolve_model(str(model_copy))
    assert str(caught.value).startswith(str(model_copy)) and words in str(caught.value)


def test_adapter_whose_base_cannot_be_found(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(tmp_path / "gone"), "peft_type": "LORA"})
    )
    with pytest.raises(EmevalError, match="base model .* not found"):
        resolve_model(str(adapter))


def make_adapter(model_dir, out, seed):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    # Non-zero B matrices so the merge changes the weights, unlike a fresh LoRA.
    lora = LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(out)
    return out


def test_adapters_merge_into_a_bounded_cache(tmp_path, monkeypatch, embedded_model_dir):
    import emeval.models

    monkeypatch.setenv("EMEVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(emeval.models, "MERGED_KEPT", 1)
    base = str(embedded_model_dir)
    first = resolve_model(str(make_adapter(base, tmp_path / "a1", 1)), base=base)
    assert first.local_path.parent == tmp_path / "cache" / "merged"
    assert first.weights_sha256 != resolve_model(base).weights_sha256
    in_progress = tmp_path / "cache" / "merged" / "0123.partial"  # another process's merge
    in_progress.mkdir()
    second = resolve_model(str(make_adapter(base, tmp_path / "a2", 2)), base=base)
    assert second.weights_sha256 != first.weights_sha256
    # The older full copy is gone; the one in use and the one being written stay.
    assert sorted((tmp_path / "cache" / "merged").iterdir()) == sorted(
        [in_progress, second.local_path]
    )


def test_sha256_file(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    assert sha256_file(f).startswith("ba7816bf")


def test_two_processes_converting_at_once_both_get_the_model(tmp_path):
    """Two runs (or two ranks) starting on an empty cache: one converts, the other waits for
    it; both get a complete model (they shared one .partial dir and deleted each other's
    files before)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "EMEVAL_CACHE": str(tmp_path / "cache")}
    code = "from emeval.models import pull; print(pull('smollm2-135m-instruct'))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-1500:] for _, err in outs]
    # one converted; the other waited for it and found the model done (both start within a
    # second, the conversion takes many)
    assert sum(out.startswith("converting ") for out, _ in outs) == 1, [o for o, _ in outs]
    (path,) = {out.strip().splitlines()[-1] for out, _ in outs}
    manifest = json.loads((Path(path) / MANIFEST).read_text())
    assert manifest["weights_sha256"] == weights_sha256(Path(path))  # every weight file whole
