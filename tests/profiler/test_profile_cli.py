"""`plan profile`: a quick table on llama-tiny loads and is found by the estimator, records
the processor it was measured on (a table without one still loads), the work each grid
point times grows with its batch and length, and bad input exits 2 with one line.
No timing is asserted (the machine is shared): benchmarks/profile_agreement.py prints how
the shipped table compares with a fresh measurement."""

import argparse
import json
import os

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from costmodel.profile_table import load_profile, model_shape_key
from planner.cli import estimate as estimate_cli
from planner.cli.main import main
from planner.domain.cluster import cluster_preset
from planner.domain.layout import Execution
from planner.domain.modelspec import PRESETS
from planner.domain.paths import PROFILES_DIR
from planner.domain.plan import Plan, Provenance, save_plan
from planner.domain.processor import Processor
from planner.domain.workflow_file import builtin_workflow
from planner.domain.yamlio import dump_yaml, load_yaml_mapping
from runtime import machine
from runtime.profiling.parts import PART_OPS, ShardBench
from runtime.profiling.profiler import CPU_THREADS, GRIDS, device_setup

TINY = PRESETS["llama-tiny"]
# Parts and ops whose matmul FLOPs grow with the batch x length of a grid point (decode
# runs one new token per sequence whatever the cached length; embedding is a lookup).
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


def test_quick_table_records_this_machines_cpu(quick_table):
    recorded = load_profile(quick_table).table.processor
    assert recorded == Processor(kind="cpu", name=machine.cpu_model_name(),
                                 cpu_model=machine.cpu_family_model(),
                                 logical_cores=os.cpu_count(), threads=CPU_THREADS,
                                 torch_version=str(torch.__version__))


def test_table_without_a_processor_loads_as_unknown(quick_table, tmp_path):
    data = load_yaml_mapping(quick_table)
    del data["processor"]
    old = tmp_path / "cpu" / quick_table.name
    old.parent.mkdir()
    old.write_text(dump_yaml(data))
    lookup = load_profile(old)
    assert lookup.table.processor is None and lookup.path == old
    assert lookup.time_s("forward", "block", 1, 1, 16) > 0


def test_cuda_setup_records_the_gpu_name_and_driver(monkeypatch):
    """The CUDA path without a GPU: torch's device name and the driver file, faked."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(machine, "nvidia_driver_version", lambda: "550.54.15")
    setup = device_setup("cuda")
    assert setup.hardware == "h100-sxm-80gb"
    assert setup.processor == Processor(kind="cuda", name="NVIDIA H100 80GB HBM3",
                                        driver_version="550.54.15",
                                        cuda_version=str(torch.version.cuda or ""),
                                        torch_version=str(torch.__version__))


@pytest.mark.parametrize("part,op", GROWING)
@pytest.mark.parametrize("tp", [1, 2])
def test_timed_work_grows_with_batch_and_length(part, op, tp):
    """What a grid point times grows at least in proportion to its batch and its length.
    Counted FLOPs, not seconds: timings swing with the load of a shared machine (the shipped
    table against a fresh measurement: benchmarks/profile_agreement.py)."""
    bench = ShardBench(TINY, tp, device_setup("cpu").config)
    (small_b, large_b), (short, long) = GRIDS["quick"].batch, GRIDS["quick"].length
    flops = {}
    for batch in (small_b, large_b):
        for length in (short, long):
            trial = bench.trial(part, op, batch, length)
            trial.prepare()
            with FlopCounterMode(display=False) as counter:
                trial.run()
            flops[batch, length] = counter.get_total_flops()
    assert flops[small_b, short] > 0
    for length in (short, long):
        assert flops[large_b, length] >= large_b / small_b * flops[small_b, length], flops
    for batch in (small_b, large_b):
        assert flops[batch, long] >= long / short * flops[batch, short], flops


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
    """The tiny PPO plan fits cpu4 (about 0.1 GiB of 5 GiB per device), so the estimate is
    feasible (exit 0) and priced from the shipped table, not the roofline."""
    shipped = PROFILES_DIR / "cpu" / f"{model_shape_key(TINY)}.yaml"
    assert shipped.is_file(), "profiles/cpu/ should ship a llama-tiny table"
    path = tmp_path / "plan.yaml"
    save_plan(tiny_ppo_plan(), path)
    code = estimate_cli.run(argparse.Namespace(plan=str(path), json=True, iterations=2))
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["feasible"] is True, data["reason"]
    assert data["compute_source"] == f"profile:{shipped}", data["compute_source"]


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
