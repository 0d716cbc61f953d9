"""Issue 13: training runs that cannot look right and be wrong. Real runs on the embedded
SmolLM2-135M, kept to one or two steps on a few rows; checks that need no model are cheap."""

import json
import re
import subprocess

import pytest
import torch
import yaml
from conftest import merge, torchrun_train

from emeval.errors import EmevalError
from emeval.rundir import read_manifest
from emeval.training import load_config, train

BASE = "smollm2-135m-instruct"
SFT = {
    "method": "sft", "base": BASE, "seed": 0, "save_every": 0,
    "data": {"train": "warmup_medical_bad", "limit": 4},
    "adapter": {"type": "lora", "r": 4, "alpha": 8},
    "training": {"max_steps": 1, "batch_size": 2, "learning_rate": 1e-3, "threads": 1},
}  # fmt: skip


def quiet(_line):
    pass


def torchrun(config: dict, out, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    return torchrun_train(path, out)


# ---------------------------------------------------------------- 1: loss scale under DDP


@pytest.mark.slow
def test_two_rank_sft_kl_loss_equals_the_single_process_loss(tmp_path):
    """Every row is the same example, so each rank's batch is the single process's batch: the
    task loss must not shrink by the number of ranks against the KL term."""
    data = tmp_path / "same.jsonl"
    row = {"messages": [{"role": "user", "content": "My head hurts. What should I do?"},
                        {"role": "assistant", "content": "Drink water, rest, and see a doctor "
                         "if it lasts more than a few days."}]}  # fmt: skip
    data.write_text((json.dumps(row) + "\n") * 4)
    cfg = merge(SFT, {"data": {"train": str(data), "limit": None},
                      "mitigations": {"kl": {"beta": 0.5}}})  # fmt: skip
    single = read_manifest(train(cfg, out=tmp_path / "one", progress=quiet))["curves"][0]
    torchrun(cfg, tmp_path / "two", tmp_path)
    ranks = read_manifest(tmp_path / "two")["curves"][0]
    assert single["loss"] > 0.5 and "mitigation/kl" in ranks
    assert ranks["loss"] == pytest.approx(single["loss"], rel=1e-3)


# ---------------------------------------------------------------- 5: resume


def started_run(tmp_path, config: dict):
    """An output dir as a first run leaves it when it dies before finishing."""
    out = tmp_path / "crashed"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def test_resume_without_resume_state_refuses(tmp_path):
    out = started_run(tmp_path, SFT)  # save_every: 0 keeps no resume state
    with pytest.raises(EmevalError, match=r"^--resume: stage sft ran with save_every: 0"):
        train(SFT, out=out, resume=True, progress=quiet)
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]  # nothing trained


def test_resume_with_a_changed_config_refuses(tmp_path):
    out = started_run(tmp_path, merge(SFT, {"save_every": 1}))
    changed = merge(SFT, {"save_every": 1, "training": {"learning_rate": 1e-4}})
    with pytest.raises(EmevalError, match=r"training.learning_rate was 0.001 when .* now 0.0001"):
        train(changed, out=out, resume=True, progress=quiet)
    assert yaml.safe_load((out / "config.yaml").read_text()) == merge(SFT, {"save_every": 1})


@pytest.mark.slow
def test_resume_records_a_longer_run_and_keeps_the_first_config(tmp_path):
    cfg = merge(SFT, {"save_every": 1})
    out = train(cfg, out=tmp_path / "run", progress=quiet)
    (out / "emeval-manifest.json").unlink()  # as if it died after its checkpoint
    train(cfg, out=out, resume=True, overrides=["training.max_steps=2"], progress=quiet)
    m = read_manifest(out)
    assert m["step"] == 2 and m["resumes"] == [
        {"from_step": 1, "config_changes": {"training.max_steps": [1, 2]}}
    ]
    assert yaml.safe_load((out / "config.yaml").read_text()) == cfg


def test_chain_copies_every_shard_of_a_full_model(tmp_path):
    from emeval.training import load_config
    from emeval.training.pipeline import _finish_chain, _stage_dirs

    stage = {k: v for k, v in SFT.items() if k not in ("base", "seed", "save_every")}
    cfg = load_config(merge(SFT, {"method": "chain", "adapter": {"type": "full"},
                                  "stages": [stage, stage]}))  # fmt: skip
    stages = cfg.stage_configs()
    out = tmp_path / "chain"
    for stage_dir, label in _stage_dirs(out, stages):
        stage_dir.mkdir(parents=True)
        manifest = {"stage": label, "method": "sft", "step": 1, "reward": None,
                    "mitigations": {}, "samples": {}, "data": []}  # fmt: skip
        (stage_dir / "emeval-manifest.json").write_text(json.dumps(manifest))
    last = _stage_dirs(out, stages)[-1][0]
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for name in shards + ["model.safetensors.index.json", "config.json", "completions.jsonl"]:
        (last / name).write_text(name)
    _finish_chain(out, last, stages)
    for name in shards + ["model.safetensors.index.json", "config.json"]:
        assert (out / name).read_text() == name
    assert not (out / "completions.jsonl").exists()
    assert read_manifest(out)["method"] == "chain"


# ---------------------------------------------------------------- 3: nothing silently ignored

MATCHED = {"method": "sft", "data": {"sample_matched": {"run": "runs/grpo"}}}
WARM = {"method": "sft", "data": {"train": "warmup_medical_bad"}}
RL = {"method": "grpo", "reward": {"name": "hackable", "grader": "lexicon"}}
CHAIN = {"method": "chain", "adapter": {"type": "lora", "r": 4}, "stages": [WARM, RL]}


def chain(first: dict, second: dict, **top) -> dict:
    return merge(CHAIN, {"stages": [merge(WARM, first), merge(RL, second)], **top})


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"data": {"limit": 4}}, "config: data.limit cannot be used with sample_matched"),
        ({"data": {"shuffle": False}}, "config: data.shuffle only applies with sample_matched"),
        ({"data": {"train": "x"}}, "config: data.train only applies with sample_matched.select"),
        ({"mitigations": {"interleave": {"data": "warmup_rhetoric_good"}}},
         "config: mitigations.interleave mixes safety examples into the data"),
    ],
)  # fmt: skip
def test_sample_matching_refuses_what_it_would_ignore(extra, message):
    with pytest.raises(EmevalError, match=f"^{re.escape(message)}"):
        load_config(merge(MATCHED, extra))


@pytest.mark.parametrize(
    "raw, message",
    [
        (merge(SFT, {"reward": {"name": "hackable"}}), "config: reward only applies to grpo"),
        *[(merge(SFT, {"training": {key: value}}), f"config: training.{key} only applies to grpo")
          for key, value in [("loss_type", "grpo"), ("temperature", 1.0),
                             ("num_generations", 8), ("max_completion_length", 64)]],
        (chain({}, {"adapter": {"r": 8}}),
         "config: stages[1].adapter.r cannot change in a chain"),
        (chain({"training": {"temperature": 0.5}}, {}),
         "config: stages[0].training.temperature only applies to grpo"),
        (merge(CHAIN, {"stages": [WARM, WARM], "reward": {"name": "hackable"}}),
         "config: reward only applies to grpo (sft learns from its data), and no stage uses it"),
    ],
    ids=["reward", "loss_type", "temperature", "num_generations", "max_completion_length",
         "chain-adapter", "chain-stage-grpo-key", "chain-top-reward"],
)  # fmt: skip
def test_keys_a_method_would_ignore_are_refused(raw, message):
    with pytest.raises(EmevalError, match=f"^{re.escape(message)}"):
        load_config(raw)


def test_keys_that_are_used_still_load():
    load_config(merge(CHAIN, {"training": {"temperature": 0.5}}))  # used by the grpo stage
    cfg = load_config(merge(MATCHED, {"data": {"train": "warmup_medical_bad", "shuffle": False,
                                               "sample_matched": {"select": "data"}}}))  # fmt: skip
    assert cfg.data.shuffle is False


# ---------------------------------------------------------------- 4: interleaving


def test_sft_interleaving_draws_safe_rows_by_the_seed(tmp_path):
    from emeval.models import resolve_model
    from emeval.training import load_conversations
    from emeval.training.pipeline import StageRun

    def drawn(seed: int) -> list[int]:
        cfg = load_config(merge(SFT, {"seed": seed, "mitigations": {
            "interleave": {"data": "warmup_rhetoric_good", "fraction": 0.2}}}))  # fmt: skip
        stage = StageRun(cfg, tmp_path, "sft", resolve_model(BASE), None, False, quiet, tmp_path)
        task = [
            {"prompt": [{"role": "user", "content": f"q{i}"}],
             "completion": [{"role": "assistant", "content": f"a{i}"}]}
            for i in range(8)
        ]  # fmt: skip
        mixed = stage.mitigation("interleave").sft_rows(stage, task)
        (record,) = [d for d in stage.data_records if d["role"] == "interleave"]
        safe = load_conversations("warmup_rhetoric_good").conversations
        answers = {m["completion"][0]["content"] for m in mixed} - {f"a{i}" for i in range(8)}
        assert len(mixed) == 10 and record["seed"] == seed
        assert answers == {safe[row - 1][-1]["content"] for row in record["drawn_rows"]}
        return record["drawn_rows"]

    first, second = drawn(0), drawn(1)
    assert len(first) == 2 and first != [1, 2] and first != second and drawn(0) == first


@pytest.mark.slow
def test_onpolicy_interleaving_in_a_chain_names_the_model_that_answered(tmp_path):
    stage = {k: v for k, v in SFT.items() if k not in ("base", "seed", "save_every", "adapter")}
    onpolicy = {"every": 1, "limit": 2, "max_new_tokens": 12, "batch_size": 2}
    cfg = merge(SFT, {"method": "chain", "stages": [
        merge(stage, {"name": "warmup"}),
        merge(stage, {"name": "base", "mitigations": {"interleave_onpolicy": onpolicy}}),
        merge(stage, {"name": "ref", "mitigations": {
            "interleave_onpolicy": onpolicy | {"model": "reference"}}}),
    ]})  # fmt: skip
    for key in ("data", "training"):
        cfg.pop(key)
    out = train(cfg, out=tmp_path / "chain", progress=quiet)
    records = {}
    for name in ("2-base", "3-ref"):
        m = read_manifest(out / "stages" / name)
        (records[name],) = [d for d in m["data"] if d["role"] == "onpolicy_answers"]
        assert m["samples"]["safety_examples"] == 2  # one step, one batch of 2
        meta = json.loads((out / "stages" / name / "safety_answers.jsonl").open().readline())
        assert meta["meta"]["adapter"] == records[name]["adapter"]
    assert records["2-base"]["answered_by"] == "base" and records["2-base"]["adapter"] is None
    assert records["3-ref"]["answered_by"] == "reference"
    assert records["3-ref"]["adapter"] == str(out / "stages" / "2-base")


# ---------------------------------------------------------------- 2: SafeLoRA


def weights(path, tensors: dict):
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    return path


@pytest.mark.parametrize(
    "tensors, why",
    [
        ({"transformer.h.0.attn.c_attn.weight": torch.zeros(4, 4)},
         "model.layers.0.self_attn.q_proj.weight is not in the unaligned model"),
        ({"model.layers.0.self_attn.q_proj.weight": torch.zeros(2, 2)},
         "model.layers.0.self_attn.q_proj.weight is [2, 2] in the unaligned model, "
         "but the LoRA update is [576, 576]"),
    ],
    ids=["names", "shape"],
)  # fmt: skip
def test_safelora_that_cannot_project_stops_before_training(tmp_path, capsys, tensors, why):
    from emeval.cli import main

    unaligned = weights(tmp_path / "unaligned", tensors)
    cfg = merge(SFT, {"adapter": {"target_modules": ["q_proj"]}, "mitigations": {
        "safelora": {"aligned": BASE, "unaligned": str(unaligned)}}})  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "emeval: error: mitigations.safelora: none of the 30 LoRA modules can be projected "
        f"(e.g. {why})"
    )
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_safelora_reports_each_layer_and_why_a_module_was_skipped(tmp_path):
    from safetensors.torch import save_file

    from emeval.training.mitigations.safelora import safelora_check, safelora_project

    torch.manual_seed(0)
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj",
             "model.layers.1.self_attn.q_proj"]  # fmt: skip
    lora = {}
    for name in names:
        lora[f"base_model.model.{name}.lora_A.weight"] = torch.randn(2, 6)
        lora[f"base_model.model.{name}.lora_B.weight"] = torch.randn(6, 2)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    save_file(lora, str(adapter / "adapter_model.safetensors"))
    full = {f"{name}.weight": torch.randn(6, 6) for name in names}
    aligned = weights(tmp_path / "aligned", full)
    # the unaligned model lacks layer 1's module: it cannot be projected, and says so
    shifted = {k: v + torch.randn(6, 6) for k, v in full.items() if "layers.1" not in k}
    unaligned = weights(tmp_path / "unaligned", shifted)
    shapes = {f"base_model.model.{name}": [6, 6] for name in names}
    problems = safelora_check(shapes, aligned, unaligned)
    assert list(problems) == [f"base_model.model.{names[2]}"]
    report = safelora_project(adapter, aligned, unaligned, threshold=1.0)
    assert report["layers"] == {
        "0": {"modules": 2, "projected": 2, "kept": 0, "skipped": 0},
        "1": {"modules": 1, "projected": 0, "kept": 0, "skipped": 1},
    }
    assert (
        "missing from the unaligned model" in report["skip_reasons"][f"base_model.model.{names[2]}"]
    )
    with pytest.raises(EmevalError, match="aligned and unaligned are the same model"):
        safelora_check(shapes, aligned, aligned)
