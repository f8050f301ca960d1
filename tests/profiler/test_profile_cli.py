"""`plan profile`: a quick table on llama-tiny loads, grows with work, and is found by the
estimator; bad input exits 2 with one line."""

import json

import pytest
import torch

from costmodel.profile_table import load_profile, model_shape_key
from runtime.profiling.profiler import GRIDS, device_setup, time_trials_s
from runtime.profiling.parts import PART_OPS, ShardBench
from planner.cli import estimate as estimate_cli
from planner.cli.main import main
from planner.domain.cluster import cluster_preset
from planner.domain.layout import Execution
from planner.domain.modelspec import PRESETS
from planner.domain.paths import PROFILES_DIR
from planner.domain.plan import Plan, Provenance, save_plan
from planner.domain.workflow_file import builtin_workflow

TINY = PRESETS["llama-tiny"]
# Ops whose time must clearly grow with tokens even on the quick grid (16 -> 1024 tokens).
GROWING = [("block", "forward"), ("block", "backward"), ("block", "prefill"),
           ("lm_head", "forward"), ("lm_head", "backward")]


@pytest.fixture(scope="module")
def quick_table(tmp_path_factory):
    out = tmp_path_factory.mktemp("profiles") / "cpu" / f"{model_shape_key(TINY)}.yaml"
    assert main(["profile", "--model", "llama-tiny", "--tp", "1,2", "--quick",
                 "--out", str(out)]) == 0
    return out


def test_quick_table_loads_with_every_part_op_and_positive_times(quick_table):
    lookup = load_profile(quick_table)
    table = lookup.table
    assert table.device == "cpu" and table.model_shape == model_shape_key(TINY)
    assert table.torch_version == str(torch.__version__) and table.host
    assert "set_num_threads(1)" in table.notes
    assert [s.tp for s in table.shards] == [1, 2]
    for shard in table.shards:
        assert {(e.part, e.op) for e in shard.entries} == {
            (part, op) for part, ops in PART_OPS.items() for op in ops}
        for e in shard.entries:
            values = [e.seconds] if isinstance(e.seconds, float) else \
                [v for row in e.seconds for v in row]
            assert all(0 < v < 10 for v in values), (e.part, e.op, values)


@pytest.mark.parametrize("part,op", GROWING)
def test_times_grow_with_batch_and_length(quick_table, part, op):
    for shard in load_profile(quick_table).table.shards:
        [entry] = [e for e in shard.entries if (e.part, e.op) == (part, op)]
        t = entry.seconds
        # the far corner (8 x 128 tokens) against each axis at its small end
        assert t[-1][-1] > 1.5 * t[0][-1], (shard.tp, t)
        assert t[-1][-1] > 1.5 * t[-1][0], (shard.tp, t)
        assert t[-1][-1] > 4 * t[0][0], (shard.tp, t)


def test_lookup_reproduces_every_measured_grid_point(quick_table):
    lookup = load_profile(quick_table)
    for shard in lookup.table.shards:
        for e in shard.entries:
            if isinstance(e.seconds, float):
                assert lookup.time_s(e.op, e.part, shard.tp, 3, 7) == pytest.approx(e.seconds)
                continue
            for i, b in enumerate(e.batch):
                for j, n in enumerate(e.length):
                    got = float(lookup.time_s(e.op, e.part, shard.tp, b, n))
                    assert got == pytest.approx(e.seconds[i][j], rel=1e-12)


def tiny_ppo_plan() -> Plan:
    wf = builtin_workflow("ppo", model="llama-tiny",
                          batch={"n_seqs": 16, "prompt_len": 64, "gen_len": 64})
    cluster = cluster_preset("cpu4")
    devices = tuple(range(cluster.num_devices))
    gen = Execution(devices=devices, dp=2, tp=2, pp=1, micro_batches=2)
    train = Execution(devices=devices, dp=1, tp=4, pp=1, micro_batches=2)
    inf = Execution(devices=devices, dp=4, tp=1, pp=1, micro_batches=1)
    executions = {"actor_gen": gen, "rew_inf": inf, "ref_inf": inf, "critic_inf": inf,
                  "actor_train": train, "critic_train": train}
    return Plan(workflow=wf, cluster=cluster, executions=executions,
                provenance=Provenance(created_by="test"))


def test_estimate_uses_the_shipped_cpu_table(tmp_path, capsys):
    shipped = PROFILES_DIR / "cpu" / f"{model_shape_key(TINY)}.yaml"
    assert shipped.is_file(), "profiles/cpu/ should ship a llama-tiny table"
    path = tmp_path / "plan.yaml"
    save_plan(tiny_ppo_plan(), path)
    code = estimate_cli.run(__import__("argparse").Namespace(plan=str(path), json=True,
                                                             iterations=2))
    data = json.loads(capsys.readouterr().out)
    assert code in (0, 1)
    assert data["compute_source"] == f"profile:{shipped}", data["compute_source"]


def test_shipped_table_agrees_with_a_fresh_measurement():
    """Block forward at one grid point measured again now: within 3x of the shipped value
    (the machines are shared; the ratio is printed for the record)."""
    lookup = load_profile(PROFILES_DIR / "cpu" / f"{model_shape_key(TINY)}.yaml")
    batch, length = 4, 128
    shipped = float(lookup.time_s("forward", "block", 1, batch, length))
    setup = device_setup("cpu")
    bench = ShardBench(TINY, 1, setup.config)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        [fresh] = time_trials_s([bench.trial("block", "forward", batch, length)],
                                GRIDS["cpu"], setup.sync)
    finally:
        torch.set_num_threads(before)
    ratio = fresh / shipped
    print(f"block forward tp 1 b{batch} l{length}: shipped {shipped * 1e3:.3f} ms, "
          f"fresh {fresh * 1e3:.3f} ms, ratio {ratio:.2f}")
    assert 1 / 3 < ratio < 3


@pytest.mark.parametrize("argv,needle", [
    (["--model", "llama-nope"], "unknown model"),
    (["--model", "llama-tiny", "--tp", "3"], "tp 3 does not evenly split"),
    (["--model", "llama-tiny", "--tp", "two"], "--tp"),
    (["--model", "llama-tiny", "--hardware", "tpu-v9"], "--hardware"),
])
def test_bad_input_exits_2_with_one_line(argv, needle, capsys):
    assert main(["profile", *argv, "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_cuda_without_a_gpu_exits_2(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["profile", "--model", "llama-tiny", "--device", "cuda", "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA GPU" in err, err


def test_help_text_explains_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["profile", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "set_num_threads(1)" in out
