"""Hostile and absurd inputs: files that are not text (or not files), YAML bombs, NaN and
absurd numbers, unwritable --out paths, device names that are paths, and leftovers of killed
writes. Each must give exit 2 and one line naming the file or option and the field, never a
traceback, a hang or a silently wrong estimate.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from foundation_support import SMALL_BATCH

from costmodel.calibration import save_calibration
from costmodel.profile_table import load_profile
from planner.cli.main import main
from planner.domain import output_files
from planner.domain.cluster import load_cluster_file
from planner.domain.errors import InputError
from planner.domain.hardware import hardware_by_name, load_hardware_file
from planner.domain.input_files import MAX_INPUT_FILE_BYTES
from planner.domain.output_files import atomic_write_text, check_writable_path
from planner.domain.paths import HARDWARE_DIR, PROFILES_DIR
from planner.domain.yamlio import load_yaml_mapping

TINY_PPO = {"algorithm": "ppo",
            "models": {role: "llama-tiny" for role in ("actor", "critic", "ref", "reward")},
            "batch": dict(SMALL_BATCH)}
CPU_PROFILE = PROFILES_DIR / "cpu" / "h256-a8-kv4-i688-v1024.yaml"
CPU_CALIBRATION = PROFILES_DIR / "cpu" / "calibration.yaml"
# A real HF config of the llama type (llama-tiny's shape).
TINY_HF_CONFIG = {"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 256,
                  "num_attention_heads": 8, "num_key_value_heads": 4, "intermediate_size": 688,
                  "vocab_size": 1024, "max_position_embeddings": 512, "rope_theta": 10000.0,
                  "rms_norm_eps": 1e-5}


def assert_one_line_exit_2(result: tuple[int, str, str], command: str, *words) -> str:
    """The CLI gave exit 2 and one `plan COMMAND: error:` line holding every word."""
    code, out, err = result
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and out == "", (out, err)
    assert err.endswith("\n") and err.count("\n") == 1, err
    line = err.rstrip("\n")
    assert line.startswith(f"plan {command}: error: "), line
    for word in words:
        assert str(word) in line, (word, line)
    return line


def argparse_error(capsys, *args) -> str:
    """The error line of an option argparse refuses (it prints the usage above it)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in args])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def _yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _workflow_file(tmp: Path, **changes) -> Path:
    return _yaml(tmp / "wf.yaml", {**TINY_PPO, **changes})


# --- 1. files that are not text, or not files --------------------------------------------------

def _reader_of(kind: str, tmp: Path, plan_file) -> tuple[list, Path, str]:
    """CLI arguments that read an input of `kind`, the path that input is read from, and
    the subcommand."""
    if kind == "cluster":
        path = tmp / "cluster.yaml"
        return ["check", plan_file(), "--cluster", path], path, "check"
    if kind == "workflow":
        path = tmp / "wf.yaml"
        return ["graph", "--workflow", path], path, "graph"
    if kind == "plan":
        path = tmp / "other-plan.yaml"
        return ["show", path], path, "show"
    if kind == "calibration":
        path = tmp / "calibration.yaml"
        return ["estimate", plan_file(), "--profile", path], path, "estimate"
    if kind == "hf_config":
        (tmp / "model").mkdir()
        models = {role: "model" for role in TINY_PPO["models"]}
        return ["graph", "--workflow", _workflow_file(tmp, models=models)], \
            tmp / "model" / "config.json", "graph"
    if kind == "viz_trace":
        path = tmp / "run.trace.json"
        return ["viz", plan_file(), "--kind", "timeline", "--out", tmp / "t.png", "--trace",
                path], path, "viz"
    assert kind == "calibrate_trace"
    path = tmp / "run.trace.json"
    return ["calibrate", f"{plan_file()}={path}", "--out", tmp / "cal.yaml"], path, "calibrate"


@contextmanager
def fifo_guard(path: Path):
    """A FIFO at `path`, with a writer waiting: should the code under test ever open it (the
    bug this guards against), the writer's empty write ends that read, so the test fails on
    its message instead of hanging."""
    os.mkfifo(path)
    writer = threading.Thread(target=lambda: open(path, "wb").close(), daemon=True)
    writer.start()
    try:
        yield
    finally:
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)   # lets the writer's open return
        writer.join()
        os.close(reader)


def _make_bad_file(badness: str, path: Path) -> None:
    if badness == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif badness == "latin1":
        path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    elif badness == "utf16":
        path.write_bytes('{"name": "x"}\n'.encode("utf-16"))
    elif badness == "device":
        path.symlink_to("/dev/urandom")
    elif badness == "directory":
        path.mkdir()
    else:
        assert badness == "too_large"
        with open(path, "wb") as handle:      # sparse: costs no disk
            handle.truncate(MAX_INPUT_FILE_BYTES + 1)


BAD_FILES = {"binary": "binary data", "latin1": "not UTF-8", "utf16": "binary data",
             "device": "is a device", "directory": "is a directory", "too_large": "64 MiB"}
READERS = ["cluster", "workflow", "plan", "calibration", "hf_config", "viz_trace",
           "calibrate_trace"]


@pytest.mark.parametrize("badness", sorted(BAD_FILES))
@pytest.mark.parametrize("kind", READERS)
def test_a_file_that_is_not_text_is_one_line(kind, badness, tmp_path, plan_file, cli):
    args, path, command = _reader_of(kind, tmp_path, plan_file)
    _make_bad_file(badness, path)
    assert_one_line_exit_2(cli(*args), command, path, BAD_FILES[badness])


@pytest.mark.parametrize("kind", READERS)
def test_a_fifo_is_refused_without_opening_it(kind, tmp_path, plan_file, cli):
    args, path, command = _reader_of(kind, tmp_path, plan_file)
    with fifo_guard(path):
        assert_one_line_exit_2(cli(*args), command, path, "named pipe (FIFO)")


def test_dev_urandom_as_a_cluster_is_refused(plan_file, cli):
    assert_one_line_exit_2(cli("check", plan_file(), "--cluster", "/dev/urandom"), "check",
                           "/dev/urandom", "is a device")


@pytest.mark.parametrize("badness", ["binary", "latin1", "device", "directory", "too_large"])
def test_a_profile_table_that_is_not_text_is_refused(badness, tmp_path):
    path = tmp_path / "table.yaml"
    _make_bad_file(badness, path)
    with pytest.raises(InputError, match=BAD_FILES[badness]) as refused:
        load_profile(path)
    assert str(path) in str(refused.value)


def test_a_byte_order_mark_is_still_read(tmp_path):
    path = tmp_path / "wf.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump({"a": 1}).encode())
    assert load_yaml_mapping(path) == {"a": 1}


def test_a_control_character_is_one_line(tmp_path, cli):
    path = tmp_path / "wf.yaml"
    path.write_bytes(b"algorithm: ppo\x01\n")
    assert_one_line_exit_2(cli("graph", "--workflow", path), "graph", path, "character 0x1",
                           "not allowed in YAML")


# --- 2. YAML bombs, deep nesting, keys that are not names --------------------------------------

def billion_laughs(levels: int = 9) -> str:
    """Nine anchors of nine aliases each: 9**9 values once expanded, a few hundred bytes."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        aliases = ", ".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{aliases}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, words", [
    (billion_laughs(), ["aliases expand to more than 100,000 values", "billion laughs"]),
    ("algorithm: " + "[" * 10_000 + "]" * 10_000 + "\n", ["nested more than 100 levels"]),
    ("".join("  " * i + f"k{i}:\n" for i in range(500)), ["nested more than 100 levels"]),
    ("a: &a [*a]\n", ["alias *a", "cycle"]),
    ("algorithm: ppo\nbatch: {n_seqs: " + "9" * 5000 + "}\n", ["5,000 digits", "too large"]),
])
def test_yaml_bombs_are_refused(text, words, tmp_path, cli):
    path = tmp_path / "wf.yaml"
    path.write_text(text)
    line = assert_one_line_exit_2(cli("graph", "--workflow", path), "graph", path, "refused",
                                  "line ", *words)
    assert "RecursionError" not in line


@pytest.mark.parametrize("text, key", [
    ("algorithm: ppo\n1: x\n", "mapping key '1' is read as an integer"),
    ("algorithm: ppo\nnull: x\n", "mapping key 'null' is read as null"),
    ("algorithm: ppo\n{a: 1}: x\n", "a mapping key is a mapping"),
    ("algorithm: ppo\n? [a, b]\n: x\n", "a mapping key is a list"),
    ("models: {yes: llama-tiny}\n", "mapping key 'yes' is read as a boolean"),
    ("batch: {2.5: 1}\n", "mapping key '2.5' is read as a number"),
])
def test_a_key_that_is_not_a_name_is_refused_naming_it(text, key, tmp_path, cli):
    path = tmp_path / "wf.yaml"
    path.write_text(text)
    assert_one_line_exit_2(cli("graph", "--workflow", path), "graph", path, key, "quote it"
                           if "read as" in key else "plain names")


def test_anchors_aliases_and_merge_keys_still_work(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("node_groups:\n"
                    "  - &eight {nodes: 1, devices_per_node: 8, device: h100-sxm-80gb}\n"
                    "  - *eight\n"
                    "  - {<<: *eight, device: a100-sxm-80gb}\n")
    cluster = load_cluster_file(path)
    assert [g.hardware.name for g in cluster.node_groups] == [
        "h100-sxm-80gb", "h100-sxm-80gb", "a100-sxm-80gb"]
    assert cluster.num_devices == 24


# --- 3. NaN, infinity and absurd numbers ----------------------------------------------------------

H100 = {"nodes": 1, "devices_per_node": 8, "device": "h100-sxm-80gb"}


@pytest.mark.parametrize("changes, words", [
    ({"nodes": 10**6}, ["nodes", "less than or equal to 65536"]),
    ({"devices_per_node": 5000}, ["devices_per_node", "less than or equal to 1024"]),
    ({"nodes": 65_536, "devices_per_node": 1_024}, ["67,108,864 devices", "at most 1,048,576"]),
    ({"nodes": float("nan")}, ["nodes", "got nan", "finite number"]),
    ({"nic_bandwidth_gb_per_s": float("inf")}, ["nic_bandwidth_gb_per_s", "got inf"]),
    ({"nic_bandwidth_gb_per_s": 1e12}, ["nic_bandwidth_gb_per_s",
                                        "less than or equal to 100000"]),
    ({"nics_per_node": 1000}, ["nics_per_node", "less than or equal to 64"]),
    ({"inter_node_bandwidth_gb_per_s": 1e12}, ["inter_node_bandwidth_gb_per_s",
                                               "no longer read", "nic_bandwidth_gb_per_s"]),
    ({"inter_node_latency_us": 1e300}, ["inter_node_latency_us", "less than or equal to"]),
    ({"memory_headroom_gib": float("nan")}, ["memory_headroom_gib", "got nan"]),
    ({"memory_headroom_gib": 1e9}, ["memory_headroom_gib", "less than or equal to"]),
    ({"memory_headroom_gib": 90.0}, ["memory_headroom_gib", "less than the smallest device"]),
])
def test_absurd_cluster_numbers_are_refused(changes, words, tmp_path, plan_file, cli):
    cluster = _yaml(tmp_path / "cluster.yaml", {**H100, **changes})
    assert_one_line_exit_2(cli("check", plan_file(), "--cluster", cluster), "check", cluster,
                           *words)


def test_absurd_node_groups_are_refused_in_total(tmp_path, plan_file, cli):
    group = {"nodes": 40_000, "devices_per_node": 8, "device": "h100-sxm-80gb"}
    cluster = _yaml(tmp_path / "cluster.yaml", {"node_groups": [group, group]})
    assert_one_line_exit_2(cli("check", plan_file(), "--cluster", cluster), "check", cluster,
                           "node_groups", "80,000 nodes in all", "at most 65,536")


@pytest.mark.parametrize("field, value, words", [
    ("memory_gib", float("inf"), ["memory_gib", "got inf"]),
    ("peak_bf16_tflops", 1e9, ["peak_bf16_tflops", "less than or equal to 100000"]),
    ("hbm_bandwidth_gb_per_s", float("nan"), ["hbm_bandwidth_gb_per_s", "got nan"]),
    ("intra_node_latency_us", 1e12, ["intra_node_latency_us", "less than or equal to"]),
])
def test_absurd_hardware_numbers_are_refused(field, value, words, tmp_path):
    spec = yaml.safe_load((HARDWARE_DIR / "cpu.yaml").read_text())
    path = _yaml(tmp_path / "device.yaml", {**spec, field: value})
    with pytest.raises(InputError) as refused:
        load_hardware_file(path)
    for word in [str(path), *words]:
        assert word in str(refused.value), (word, refused.value)


@pytest.mark.parametrize("field, value, words", [
    ("n_seqs", 10**9, ["batch.n_seqs", "less than or equal to 1048576"]),
    ("prompt_len", float("nan"), ["batch.prompt_len", "got nan"]),
    ("gen_len", float("inf"), ["batch.gen_len", "got inf"]),
    ("gen_len", 10**7, ["batch.gen_len", "less than or equal to 1048576"]),
    ("ppo_minibatches", 10**30, ["batch.ppo_minibatches", "less than or equal to"]),
    ("group_size", 10**7, ["batch.group_size", "less than or equal to"]),
])
def test_absurd_batch_numbers_are_refused(field, value, words, tmp_path, cli):
    path = _workflow_file(tmp_path, batch={**SMALL_BATCH, field: value})
    assert_one_line_exit_2(cli("graph", "--workflow", path), "graph", path, *words)


@pytest.mark.parametrize("text, words", [
    ('"hidden_size": 1000000000', ["hidden_size", "less than or equal to 131072"]),
    ('"num_hidden_layers": 100000', ["num_layers", "less than or equal to 1024"]),
    ('"num_attention_heads": 1000000', ["num_heads", "less than or equal to 4096"]),
    ('"vocab_size": NaN', ["vocab_size", "got nan"]),
    ('"rope_theta": Infinity', ["rope_theta", "got inf"]),
    ('"rope_theta": -1', ["rope_theta", "greater than 0"]),
    ('"rms_norm_eps": 1e400', ["rms_norm_eps", "got inf"]),
    ('"max_position_embeddings": 1000000000', ["max_positions", "less than or equal to"]),
    ('"intermediate_size": 123456789', ["intermediate_size", "less than or equal to"]),
    ('"attention_bias": "no"', ["attention_bias", "true or false"]),
])
def test_absurd_hf_config_numbers_are_refused(text, words, tmp_path, cli):
    (tmp_path / "model").mkdir()
    config = tmp_path / "model" / "config.json"
    key = text.split(":")[0].strip('"')
    base = json.dumps({k: v for k, v in TINY_HF_CONFIG.items() if k != key})
    config.write_text(base[:-1] + ", " + text + "}")
    workflow = _workflow_file(tmp_path, models={role: "model" for role in TINY_PPO["models"]})
    assert_one_line_exit_2(cli("graph", "--workflow", workflow), "graph", workflow,
                           "models.actor", config, *words)


def test_an_hf_config_that_is_not_an_object_is_refused(tmp_path, cli):
    (tmp_path / "model").mkdir()
    config = tmp_path / "model" / "config.json"
    config.write_text("[1, 2]")
    workflow = _workflow_file(tmp_path, models={role: "model" for role in TINY_PPO["models"]})
    assert_one_line_exit_2(cli("graph", "--workflow", workflow), "graph", config,
                           "expected an HF config object")


@pytest.mark.parametrize("field, value, words", [
    ("hidden_size", 10**9, ["workflow.models.actor.spec.hidden_size", "less than or equal"]),
    ("rope_theta", float("nan"), ["workflow.models.actor.spec.rope_theta", "got nan"]),
    ("norm_eps", float("inf"), ["workflow.models.actor.spec.norm_eps", "got inf"]),
])
def test_absurd_model_numbers_in_a_plan_are_refused(field, value, words, plan_file, cli):
    path = plan_file(lambda data: data["workflow"]["models"]["actor"]["spec"].update(
        {field: value}))
    assert_one_line_exit_2(cli("check", path), "check", path, *words)


@pytest.mark.parametrize("option, value, words", [
    ("--time-limit", "nan", ["finite number"]),
    ("--time-limit", "inf", ["finite number"]),
    ("--time-limit", "1e999", ["finite number"]),
    ("--time-limit", "0", ["above 0"]),
    ("--time-limit", "-5", ["above 0"]),
    ("--time-limit", "1e9", ["at most 604,800"]),
    ("--time-limit", "soon", ["seconds"]),
    ("--memory-headroom", "nan", ["finite number"]),
    ("--memory-headroom", "-1", ["at least 0"]),
])
def test_absurd_search_options_are_refused_by_argparse(option, value, words, capsys):
    line = argparse_error(capsys, "search", option, value)
    assert line.startswith(f"plan search: error: argument {option}: got {value!r}"), line
    for word in words:
        assert word in line, (word, line)


@pytest.mark.parametrize("value", ["1", "0", "1000000", "many", "2.5", "9" * 5000])
def test_absurd_iterations_are_refused_by_argparse(value, plan_file, capsys):
    line = argparse_error(capsys, "estimate", plan_file(), "--iterations", value)
    assert line.startswith("plan estimate: error: argument --iterations: got "), line
    assert "a whole number from 2 to 1,000" in line


def test_absurd_cores_are_refused_by_argparse(tmp_path, capsys):
    line = argparse_error(capsys, "calibrate", tmp_path / "x.trace.json", "--out",
                          tmp_path / "c.yaml", "--cores", "0")
    assert line.startswith("plan calibrate: error: argument --cores: got '0'"), line


@pytest.mark.parametrize("changes, words", [
    ({"compute_scale": {"generate": 1.0, "inference": float("nan"), "train": 1.0}},
     ["compute_scale.inference", "got nan"]),
    ({"decode_step_s": float("inf")}, ["decode_step_s", "got inf"]),
    ({"move_scale": 1e9}, ["move_scale", "less than or equal to 1000"]),
    ({"call_overhead_s": {"generate": 0.0, "inference": 0.0, "train": 1e7}},
     ["call_overhead_s.train", "less than or equal to 3600"]),
    ({"process_slowdown": 5.0}, ["process_slowdown", "less than or equal to 1"]),
    ({"cores_per_node": 10**9}, ["cores_per_node", "less than or equal to"]),
])
def test_absurd_calibration_values_never_give_an_estimate(changes, words, tmp_path, plan_file,
                                                          cli):
    data = yaml.safe_load(CPU_CALIBRATION.read_text())
    path = _yaml(tmp_path / "calibration.yaml", {**data, **changes})
    line = assert_one_line_exit_2(cli("estimate", plan_file(), "--profile", path), "estimate",
                                  path, *words)
    assert "feasible" not in line


@pytest.mark.parametrize("value, words", [
    (float("nan"), ["shards[0].entries[0].seconds[1][2]", "got nan"]),
    (float("inf"), ["shards[0].entries[0].seconds[1][2]", "got inf"]),
    (1e9, ["shards[0].entries[0]", "at most 86400"]),
])
def test_a_profile_table_with_nan_or_absurd_seconds_is_refused(value, words, tmp_path):
    data = yaml.safe_load(CPU_PROFILE.read_text())
    data["shards"][0]["entries"][0]["seconds"][1][2] = value
    path = _yaml(tmp_path / "table.yaml", data)
    with pytest.raises(InputError) as refused:
        load_profile(path)
    for word in [str(path), *words]:
        assert word in str(refused.value), (word, refused.value)


def test_a_profile_table_grid_beyond_the_limits_is_refused(tmp_path):
    data = yaml.safe_load(CPU_PROFILE.read_text())
    data["shards"][0]["entries"][0]["batch"][-1] = 1e12
    path = _yaml(tmp_path / "table.yaml", data)
    with pytest.raises(InputError, match="batch 1e\\+12 is above the largest valid grid point"):
        load_profile(path)


def _calibration_trace(tmp_path: Path, plan_path: Path) -> tuple[Path, dict]:
    """A trace of the plan in the shape `plan run --trace` writes (the fields read here)."""
    from planner.domain.plan import load_plan
    plan = load_plan(plan_path)
    calls = [{"name": name, "time_s": 0.5, "dp": ex.dp, "tp": ex.tp, "pp": ex.pp,
              "micro_batches": ex.micro_batches} for name, ex in plan.executions.items()]
    return tmp_path / "run.trace.json", {"iteration_s": 3.0, "calls": calls}


@pytest.mark.parametrize("edit, words", [
    (lambda t: t["calls"][0].update(time_s="NaN"), ["calls[0].time_s", "got nan"]),
    (lambda t: t.update(iteration_s="1e400"), ["iteration_s", "got inf"]),
    (lambda t: t.update(iteration_s="-Infinity"), ["iteration_s", "got -inf"]),
    (lambda t: t["calls"][0].update(time_s=1e7), ["calls[0].time_s", "at most 604,800"]),
    (lambda t: t["calls"][0].update(name=["a"]), ["calls[0]", "a name (text)"]),
    (lambda t: t.update(transfers=5), ["transfers", "expected a list"]),
    (lambda t: t.update(reallocations=[{"name": "r", "time_s": -1}]),
     ["reallocations[0].time_s", "got -1"]),
    (lambda t: t.update(calls="[" * 100_000 + "]" * 100_000), ["nested too deeply"]),
    (lambda t: t.update(iteration_s="9" * 5000), ["more than 4,300 digits"]),
])
def test_bad_numbers_in_a_calibration_trace_are_refused(edit, words, tmp_path, plan_file, cli):
    plan = plan_file()
    path, trace = _calibration_trace(tmp_path, plan)
    edit(trace)
    # Strings marked as raw JSON are written unquoted (NaN, 1e400, deep nesting).
    text = json.dumps(trace)
    for raw in ("NaN", "1e400", "-Infinity", "[" * 100_000 + "]" * 100_000, "9" * 5000):
        text = text.replace(json.dumps(raw), raw)
    path.write_text(text)
    assert_one_line_exit_2(cli("calibrate", f"{plan}={path}", "--out", tmp_path / "cal.yaml"),
                           "calibrate", path, *words)
    assert not (tmp_path / "cal.yaml").exists()


@pytest.mark.parametrize("node, words", [
    ('{"name": "1/actor_gen", "start_s": NaN, "end_s": 1, "devices": [0]}',
     ["nodes[0].start_s", "got nan"]),
    ('{"name": "1/actor_gen", "start_s": 0, "end_s": Infinity, "devices": [0]}',
     ["nodes[0].end_s", "got inf"]),
])
def test_nan_in_a_viz_trace_is_refused(node, words, tmp_path, plan_file, cli):
    trace = tmp_path / "trace.json"
    trace.write_text('{"nodes": [' + node + ']}')
    result = cli("viz", plan_file(), "--kind", "timeline", "--out", tmp_path / "t.png",
                 "--trace", trace)
    assert_one_line_exit_2(result, "viz", trace, *words)
    assert not (tmp_path / "t.png").exists()


# --- 5. --out that cannot be written, checked before the work ----------------------------------

def _must_not_run(*args, **kwargs):
    raise AssertionError("the command started its work before checking --out")


# Per command: arguments before --out, the picture suffix it needs, and the first expensive
# step (patched to fail, so a late check shows up as a failure).
WRITERS = {
    "search": (["search", "--time-limit", "5"], ".yaml",
               "planner.cli.search.resolve_planning_inputs"),
    "baseline": (["baseline", "--kind", "symmetric"], ".yaml",
                 "planner.cli.baseline.resolve_planning_inputs"),
    "viz": (["viz", "PLAN", "--kind", "timeline"], ".png", "planner.cli.viz.load_plan"),
    "graph": (["graph", "--workflow", "ppo"], ".png", "planner.cli.graph.resolve_workflow"),
    "calibrate": (["calibrate", "x.trace.json"], ".yaml",
                  "planner.cli.calibrate.load_measured_plan"),
    "profile": (["profile", "--model", "llama-tiny", "--quick"], ".yaml",
                "planner.cli.profile.resolve_model"),
}


def _writer_args(command: str, out: Path, plan_file, monkeypatch) -> list:
    args, _, expensive = WRITERS[command]
    monkeypatch.setattr(expensive, _must_not_run)
    return [plan_file() if a == "PLAN" else a for a in args] + ["--out", out]


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_out_under_a_regular_file_is_refused_before_the_work(command, tmp_path, plan_file, cli,
                                                             monkeypatch):
    blocker = tmp_path / "somefile.txt"
    blocker.write_text("a file where a folder is needed")
    out = blocker / "deeper" / f"out{WRITERS[command][1]}"
    args = _writer_args(command, out, plan_file, monkeypatch)
    assert_one_line_exit_2(cli(*args), command, "--out", out, "cannot write",
                           f"{blocker} is a file, not a folder")


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_out_in_an_unwritable_folder_is_refused_before_the_work(command, tmp_path, plan_file,
                                                                cli, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):     # root ignores permission bits: stand in the refusal
        monkeypatch.setattr(output_files, "directory_is_writable", lambda path: path != folder)
    out = folder / f"out{WRITERS[command][1]}"
    args = _writer_args(command, out, plan_file, monkeypatch)
    try:
        assert_one_line_exit_2(cli(*args), command, "--out", out,
                               f"no permission to create files in {folder}")
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("target, problem", [
    ("/dev/null", "not a regular file"),
    (".", "is a directory"),
])
def test_out_that_is_not_a_file_is_refused(target, problem):
    with pytest.raises(InputError, match=problem):
        check_writable_path(target, "--out")


def test_out_in_folders_yet_to_be_made_is_accepted(tmp_path):
    check_writable_path(tmp_path / "new" / "deeper" / "plan.yaml", "--out")
    check_writable_path(None, "--out")    # a command's default path is not checked here


# --- 6. device names that are paths --------------------------------------------------------------

def test_a_device_path_never_loads_a_file_outside_the_hardware_folder(tmp_path, plan_file, cli):
    # A valid spec outside profiles/hardware/, reachable by a relative path from there.
    outside = _yaml(tmp_path / "evil.yaml", yaml.safe_load((HARDWARE_DIR / "h100-sxm-80gb.yaml")
                                                           .read_text()))
    relative = os.path.relpath(outside.with_suffix(""), HARDWARE_DIR)
    cluster = _yaml(tmp_path / "cluster.yaml", {**H100, "device": relative})
    assert_one_line_exit_2(cli("check", plan_file(), "--cluster", cluster), "check", cluster,
                           "device", "unknown device", "h100-sxm-80gb")


@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", "a/b", "..", ".hidden", "CPU",
                                  "cpu.yaml", "cpu/../cpu", ""])
def test_a_device_name_that_is_a_path_is_unknown(name):
    with pytest.raises(ValueError, match="unknown device .*valid: .*'cpu'"):
        hardware_by_name(name)


def test_a_plain_device_name_still_resolves():
    assert hardware_by_name("h100-sxm-80gb").name == "h100-sxm-80gb"


# --- 7. leftovers of killed atomic writes ---------------------------------------------------------

def test_the_next_write_removes_a_killed_writes_temp_file(tmp_path):
    target = tmp_path / "plan.yaml"
    killed = tmp_path / ".plan.yaml.k1ll3d_x.tmp"       # half written, no writer holds it
    killed.write_text("schema_version: 1\nworkf")
    other_target = tmp_path / ".other.yaml.k1ll3d_x.tmp"
    other_target.write_text("not ours")
    atomic_write_text(target, "a: 1\n")
    assert target.read_text() == "a: 1\n"
    assert not killed.exists()
    assert other_target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.yaml.k1ll3d_x.tmp",
                                                          "plan.yaml"]


def test_a_temp_file_of_a_write_in_progress_is_kept(tmp_path):
    target = tmp_path / "plan.yaml"
    in_progress = tmp_path / ".plan.yaml.abcd1234.tmp"
    in_progress.write_text("being written")
    with open(in_progress, "rb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)      # as its live writer does
        atomic_write_text(target, "a: 1\n")
        assert in_progress.read_text() == "being written"


def test_an_empty_temp_file_is_removed_only_once_it_is_old(tmp_path):
    """Empty and unlocked: either just created (its writer locks it next) or left by a
    write killed at once; only an old one is taken for the latter. (Times are set an hour
    either way, so a slow machine cannot make the young one old.)"""
    target = tmp_path / "plan.yaml"
    young, old = tmp_path / ".plan.yaml.young123.tmp", tmp_path / ".plan.yaml.old45678.tmp"
    young.touch()
    old.touch()
    now = os.path.getmtime(old)
    os.utime(young, (now + 3600, now + 3600))
    os.utime(old, (now - 3600, now - 3600))
    atomic_write_text(target, "a: 1\n")
    assert young.exists() and not old.exists()


def test_writing_keeps_an_existing_files_permissions(tmp_path):
    target = tmp_path / "plan.yaml"
    target.write_text("old")
    target.chmod(0o640)
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o640


def test_calibration_still_round_trips(tmp_path):
    from costmodel.calibration import load_calibration
    original = load_calibration(CPU_CALIBRATION)
    save_calibration(original, tmp_path / "c.yaml")
    assert load_calibration(tmp_path / "c.yaml") == original
