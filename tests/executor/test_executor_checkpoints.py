"""HF checkpoints in and out of `plan run` (slow: spawns processes; transformers builds the
tiny checkpoints locally, nothing is downloaded).

In: a LlamaForCausalLM and a LlamaForSequenceClassification reward model saved by
transformers, loaded with --load under tp 2 and pp 2 on 2 processes, give transformers'
logits and scores within LOGIT_ATOL (fp32). Out: `--save` after a 2-iteration PPO on 2
processes (actor trained at pp 2: an index of two stage files; critic at tp 2: one file
gathered over TP) writes exactly the trained shards, and transformers' from_pretrained of the
saved actor and critic gives our engine's logits and values within LOGIT_ATOL. Bad --load and
--save inputs are one line, exit 2, before any rank starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import checkpoint_workers as C
import pytest
import torch
from safetensors.torch import load_file, save_file

from planner.cli.main import main
from planner.domain.model_files import resolve_model, spec_from_hf_config
from planner.domain.modelspec import ModelSpec
from planner.domain.plan import plan_to_mapping, save_plan
from planner.sharding.param_shards import model_params, shard_slice
from runtime.checkpoint_save import hf_config
from runtime.device import CPU_FP32
from runtime.executor import launcher
from runtime.executor.checkpoints import spec_difference
from runtime.executor.config import RunConfig
from runtime.launch import run_distributed
from runtime.params import load_hf_params

transformers = pytest.importorskip("transformers")

# fp32 sums in another order (transformers' kernels vs ours, a tp split summing its halves
# apart) differ by a few ulp per layer; 1e-5 is the bound, logits here are ~0.1-1.
LOGIT_ATOL = 1e-5
HANG_GUARD_S = 200  # a spawn that takes longer than this is hung, not slow


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    return C.save_transformers_models(tmp_path_factory.mktemp("hf"))


def _hf_reference(dirs: dict[str, Path]) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = C.token_ids()
    with torch.no_grad():
        lm = transformers.AutoModelForCausalLM.from_pretrained(dirs["lm"])
        reward = transformers.AutoModelForSequenceClassification.from_pretrained(dirs["reward"])
        return (lm(input_ids=ids, attention_mask=mask).logits,
                reward(input_ids=ids, attention_mask=mask).logits[:, 0])


@pytest.mark.slow
def test_transformers_checkpoints_load_under_tp2_and_pp2(hf_dirs):
    config = RunConfig(load=(("actor", str(hf_dirs["lm"])), ("reward", str(hf_dirs["reward"]))))
    plans = [plan_to_mapping(p(hf_dirs["lm"])) for p in (C.tp2_plan, C.pp2_plan)]
    per_rank = run_distributed(C.loaded_outputs, 2, (plans, config), timeout_s=HANG_GUARD_S)
    logits, scores = _hf_reference(hf_dirs)
    for rank_result in per_rank:
        for got in rank_result:
            assert (got["logits"] - logits).abs().max() <= LOGIT_ATOL
            # transformers' score is the value at the last token (no pad in the ids)
            assert (got["values"][:, -1] - scores).abs().max() <= LOGIT_ATOL


@pytest.mark.slow
def test_saved_checkpoints_load_in_transformers_with_our_logits(hf_dirs, tmp_path):
    plan = C.training_plan(hf_dirs["lm"])
    config = RunConfig(iterations=2, lr=1e-3, return_weights=True, save=str(tmp_path / "out"),
                       load=(("actor", str(hf_dirs["lm"])), ("ref", str(hf_dirs["lm"]))))
    per_rank = run_distributed(C.train_and_save, 2, (plan_to_mapping(plan), config),
                               timeout_s=HANG_GUARD_S)
    saved = tmp_path / "out"
    assert sorted(p.name for p in saved.iterdir()) == ["actor", "critic"]
    index = json.loads((saved / "actor" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {"model-00001-of-00002.safetensors",
                                                 "model-00002-of-00002.safetensors"}
    tensors = {"actor": {}, "critic": load_file(saved / "critic" / "model.safetensors")}
    for file in set(index["weight_map"].values()):
        tensors["actor"].update(load_file(saved / "actor" / file))
    moved, covered = 0.0, {role: {} for role in tensors}
    initial = load_file(hf_dirs["lm"] / "model.safetensors")
    for rank_result in per_rank:
        for role in tensors:
            for name, (ranges, shard) in rank_result["weights"].get(role, {}).items():
                stored_name = name.replace("value_head.", "score.")
                stored = tensors[role][stored_name]
                assert torch.equal(stored[tuple(slice(a, b) for a, b in ranges)], shard)
                seen = covered[role].setdefault(stored_name, torch.zeros(stored.shape, dtype=bool))
                seen[tuple(slice(a, b) for a, b in ranges)] = True
                if role == "actor":
                    moved = max(moved, float((stored - initial[name]).abs().max()))
    for role, stored in tensors.items():  # every saved element was compared with a shard
        assert covered[role].keys() == stored.keys(), role
        assert all(bool(seen.all()) for seen in covered[role].values()), role
    assert moved > 1e-4  # the saved actor is the trained one, not the loaded one

    engine = run_distributed(C.engine_outputs, 1, (str(saved), RunConfig()),
                             timeout_s=HANG_GUARD_S)[0]
    ids, mask = C.token_ids()
    with torch.no_grad():
        actor = transformers.AutoModelForCausalLM.from_pretrained(saved / "actor")
        critic = transformers.AutoModelForSequenceClassification.from_pretrained(
            saved / "critic")
        logits = actor(input_ids=ids, attention_mask=mask).logits
        scores = critic(input_ids=ids, attention_mask=mask).logits[:, 0]
    assert (engine["logits"] - logits).abs().max() <= LOGIT_ATOL
    assert torch.equal(critic.score.weight, tensors["critic"]["score.weight"])
    # transformers' score layer has no bias: our value is its score plus our bias
    assert (engine["values"][:, -1] - engine["value_bias"] - scores).abs().max() <= LOGIT_ATOL


def _refusal(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def plan_file(hf_dirs, tmp_path) -> Path:
    path = tmp_path / "plan.yaml"
    save_plan(C.tp2_plan(hf_dirs["lm"]), path)
    return path


def _other_shape(hf_dirs, tmp_path, **change) -> Path:
    """A copy of the causal-LM checkpoint whose config.json says `change`."""
    directory = tmp_path / "other"
    directory.mkdir()
    config = json.loads((hf_dirs["lm"] / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **change}))
    (directory / "model.safetensors").symlink_to(hf_dirs["lm"] / "model.safetensors")
    return directory


def test_bad_load_and_save_inputs_are_one_line(hf_dirs, plan_file, tmp_path, capsys,
                                               no_spawning):
    run = ["run", str(plan_file)]
    err = _refusal(capsys, run + ["--load", f"policy={hf_dirs['lm']}"])
    assert "'policy' is not a model role" in err and "actor" in err
    err = _refusal(capsys, run + ["--load", f"actor={tmp_path / 'missing'}"])
    assert "missing" in err and "not a directory" in err
    err = _refusal(capsys, run + ["--load", "actor"])
    assert "ROLE=DIR" in err
    err = _refusal(capsys, run + ["--load", f"actor={hf_dirs['lm']}",
                                  "--load", f"actor={hf_dirs['lm']}"])
    assert "more than once" in err
    other = _other_shape(hf_dirs, tmp_path, num_hidden_layers=3)
    err = _refusal(capsys, run + ["--load", f"actor={other}"])
    assert str(other) in err and "num_layers is 3" in err
    err = _refusal(capsys, run + ["--load", "reward=" + str(hf_dirs["lm"]), "--reward",
                                  "programmatic:target_token=3"])
    assert "programmatic" in err
    err = _refusal(capsys, run + ["--save-every", "2"])
    assert "--save-every" in err and "--save" in err
    (tmp_path / "a-file").write_text("")
    err = _refusal(capsys, run + ["--save", str(tmp_path / "a-file")])
    assert "not a directory" in err
    (tmp_path / "save").mkdir()
    (tmp_path / "save" / "actor").symlink_to(tmp_path)
    err = _refusal(capsys, run + ["--save", str(tmp_path / "save")])
    assert "leads outside" in err


def test_a_score_head_of_another_shape_is_refused(hf_dirs, plan_file, tmp_path, capsys,
                                                  no_spawning):
    two_labels = tmp_path / "two-labels"
    two_labels.mkdir()
    (two_labels / "config.json").write_text((hf_dirs["reward"] / "config.json").read_text())
    tensors = load_file(hf_dirs["reward"] / "model.safetensors")
    tensors["score.weight"] = torch.zeros(2, C.HF_SHAPE["hidden_size"])
    save_file(tensors, two_labels / "model.safetensors", metadata={"format": "pt"})
    err = _refusal(capsys, ["run", str(plan_file), "--load", f"critic={two_labels}"])
    assert "score.weight has shape [2, 64]" in err and "num_labels 1" in err


def test_a_value_role_from_a_causal_lm_says_its_head_is_seeded(hf_dirs, plan_file):
    config = RunConfig(load=(("critic", str(hf_dirs["lm"])),))
    notes = launcher.check_before_start(C.tp2_plan(hf_dirs["lm"]), config, "plan", 2)
    assert len(notes) == 1 and "critic" in notes[0] and "seeded init" in notes[0]


ROUND_TRIP_SPECS = {
    "llama": {},
    "qwen2-tied": {"attention_bias": True, "tie_embeddings": True},
    "qwen3": {"qk_norm": True, "head_dim": 32},
    "llama3-rope": {"rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_positions": 32}},
    "yarn": {"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_positions": 16}},
}


@pytest.mark.parametrize("case", sorted(ROUND_TRIP_SPECS))
def test_the_saved_config_reads_back_as_the_spec_in_both_readers(tmp_path, case):
    """Our reader gives the spec back, and transformers' AutoConfig reads the same numbers."""
    base = resolve_model("llama-tiny").model_dump()
    spec = ModelSpec.model_validate({**base, **ROUND_TRIP_SPECS[case], "name": "m"})
    for head in ("lm", "value"):
        (tmp_path / "config.json").write_text(json.dumps(hf_config(spec, head, torch.float32)))
        assert spec_difference(spec_from_hf_config(tmp_path / "config.json"), spec) is None
        hf = transformers.AutoConfig.from_pretrained(tmp_path)
        assert (hf.num_hidden_layers, hf.num_key_value_heads, hf.head_dim) == (
            spec.num_layers, spec.num_kv_heads, spec.head_dim)
        assert hf.rope_parameters["rope_theta"] == spec.rope_theta
        assert hf.rope_parameters["rope_type"] == (spec.rope_scaling.type if spec.rope_scaling
                                                   else "default")
        assert hf.num_labels == (1 if head == "value" else 2)  # transformers' default is 2


def test_bf16_shards_of_a_sharded_checkpoint_are_read_per_rank(hf_dirs, tmp_path):
    """A bf16 checkpoint in several files (an index) gives each rank exactly its slices of
    the stored values, cast to fp32."""
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dirs["lm"]).to(torch.bfloat16)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    assert {t.dtype for f in files for t in load_file(f).values()} == {torch.bfloat16}
    stored = model.state_dict()
    spec = resolve_model(str(hf_dirs["lm"]))
    infos = {p.name: p for p in model_params(spec, "lm", 2)}
    for tp_rank, stage in ((0, 0), (1, 1)):
        params = load_hf_params(tmp_path, spec, "lm", tp_rank, 2, stage, 2, 0, CPU_FP32)
        assert set(params) == {n for n, p in infos.items() if p.stage == stage}
        for name, tensor in params.items():
            ranges = shard_slice(spec, infos[name], tp_rank, 2)
            expected = stored[name][tuple(slice(a, b) for a, b in ranges)].float()
            assert tensor.dtype == torch.float32 and torch.equal(tensor, expected), name
