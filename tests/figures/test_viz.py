"""`plan viz`: every kind writes a picture; bad kinds, outputs and traces are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from costmodel.simulator import estimate_plan
from planner.domain.augment import augmented_graph
from planner.domain.plan import load_plan
from planner.figures.memory import KIND_STYLE, bar_segments
from planner.figures.trace import load_trace

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_picture(path: Path, suffix: str) -> None:
    data = path.read_bytes()
    assert len(data) > 1000, f"{path} is suspiciously small ({len(data)} bytes)"
    if suffix == "png":
        assert data.startswith(PNG_MAGIC)
    else:
        assert b"<svg" in data[:2000]


def assert_one_line_error(code: int, out: str, err: str, *words: str) -> None:
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, (word, err)


@pytest.mark.parametrize("kind", ["timeline", "placement", "memory", "graph"])
@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_each_kind_writes_a_picture(cli, plan_files, tmp_path, kind, suffix):
    out = tmp_path / f"{kind}.{suffix}"
    code, stdout, err = cli("viz", plan_files["searched"], "--kind", kind, "--out", out)
    assert (code, err) == (0, "")
    assert f"wrote {out}" in stdout
    assert_picture(out, suffix)
    assert [p.name for p in tmp_path.iterdir()] == [out.name], "temporary file left behind"


def write_trace(plan_path: Path, path: Path, scale: float = 1.1) -> Path:
    """A trace shaped like the runtime's: the estimate's node times, stretched."""
    plan = load_plan(plan_path)
    est = estimate_plan(plan)
    graph = augmented_graph(plan.workflow, plan.executions, 3)
    nodes = [{"name": node, "start_s": 3.0 + start * scale, "end_s": 3.0 + end * scale,
              "devices": list(graph.nodes[node]["devices"]), "bytes_moved": 0}
             for node, (start, end) in est.node_times.items()]
    nodes += [{"name": f"{i}/transfer:actor_gen->actor_train", "start_s": 1.0 + i,
               "end_s": 1.5 + i, "devices": [0, 1, 4, 5]} for i in range(3)]
    path.write_text(json.dumps({"iteration_s": est.iteration_s * scale, "nodes": nodes}))
    return path


def test_timeline_overlays_a_trace(cli, plan_files, tmp_path):
    trace = write_trace(plan_files["separate"], tmp_path / "trace.json")
    out = tmp_path / "timeline.png"
    code, _, err = cli("viz", plan_files["separate"], "--kind", "timeline", "--out", out,
                       "--trace", trace)
    assert (code, err) == (0, "")
    assert_picture(out, "png")
    plain = tmp_path / "plain.png"
    cli("viz", plan_files["separate"], "--kind", "timeline", "--out", plain)
    assert out.read_bytes() != plain.read_bytes(), "the trace changed nothing in the picture"


def test_trace_loader_reads_names_and_ignores_extra_keys(plan_files, tmp_path):
    plan = load_plan(plan_files["separate"])
    nodes = load_trace(write_trace(plan_files["separate"], tmp_path / "t.json"), plan)
    names = {(n.iteration, n.name) for n in nodes}
    assert (1, "actor_gen") in names
    assert (0, "realloc:actor:actor_gen->actor_train") in names
    # named by its source iteration 0, the move back to generation runs in iteration 1
    assert (1, "realloc:actor:actor_train->actor_gen") in names
    assert (0, "realloc:actor:actor_train->actor_gen") not in names
    assert (2, "transfer:actor_gen->actor_train") in names
    assert {n.model for n in nodes} == {"actor", "critic", "ref", "reward"}


def test_bad_kind_is_one_line(cli, plan_files, tmp_path):
    result = cli("viz", plan_files["searched"], "--kind", "gantt", "--out", tmp_path / "x.png")
    assert_one_line_error(*result, "--kind", "gantt", "timeline")
    assert not (tmp_path / "x.png").exists()


def test_bad_output_type_is_one_line(cli, plan_files, tmp_path):
    result = cli("viz", plan_files["searched"], "--kind", "memory", "--out", tmp_path / "x.jpg")
    assert_one_line_error(*result, "--out", ".jpg", ".png")


def test_trace_only_for_timeline(cli, plan_files, tmp_path):
    trace = write_trace(plan_files["searched"], tmp_path / "t.json")
    result = cli("viz", plan_files["searched"], "--kind", "memory", "--out",
                 tmp_path / "m.png", "--trace", trace)
    assert_one_line_error(*result, "--trace", "timeline")


@pytest.mark.parametrize("content, words", [
    (None, ["file not found"]),
    ("{not json", ["not valid JSON"]),
    ("[1, 2]", ["top level", "nodes"]),
    ('{"iteration_s": 3}', ["nodes", "missing"]),
    ('{"nodes": {"name": "1/actor_gen"}}', ["nodes"]),
    ('{"nodes": [{"name": "1/actor_gen", "start_s": 2, "end_s": 1, "devices": [0]}]}',
     ["nodes[0]", "before start_s"]),
    ('{"nodes": [{"name": "actor_gen", "start_s": 0, "end_s": 1, "devices": [0]}]}',
     ["nodes[0].name", "<iteration>/<node>"]),
    ('{"nodes": [{"name": "1/policy_gen", "start_s": 0, "end_s": 1, "devices": [0]}]}',
     ["nodes[0].name", "policy_gen", "another plan"]),
    ('{"nodes": [{"name": "1/transfer:actor_gen->judge", "start_s": 0, "end_s": 1, '
     '"devices": [0]}]}', ["nodes[0].name", "transfer:actor_gen->judge"]),
    ('{"nodes": [{"name": "1/actor_gen", "start_s": 0, "end_s": 1, "devices": [9]}]}',
     ["nodes[0].devices", "outside the cluster"]),
    ('{"nodes": [{"name": "1/actor_gen", "start_s": 0, "end_s": 1}]}',
     ["nodes[0].devices", "missing"]),
])
def test_bad_trace_is_one_line(cli, plan_files, tmp_path, content, words):
    trace = tmp_path / "trace.json"
    if content is not None:
        trace.write_text(content)
    out = tmp_path / "t.png"
    result = cli("viz", plan_files["searched"], "--kind", "timeline", "--out", out,
                 "--trace", trace)
    assert_one_line_error(*result, str(trace), *words)
    assert not out.exists()


@pytest.mark.parametrize("name", ["searched", "separate"])
def test_memory_bars_stack_to_the_simulated_peak(plan_files, name):
    plan = load_plan(plan_files[name])
    est = estimate_plan(plan)
    bars = bar_segments(est, plan.cluster.num_devices)
    for device, segments in enumerate(bars):
        top = segments[-1].bottom_gib + segments[-1].height_gib
        assert top * 2**30 == pytest.approx(est.peak_memory_bytes[device], rel=1e-9), device
        for below, above in zip(segments, segments[1:]):
            assert above.bottom_gib == pytest.approx(below.bottom_gib + below.height_gib)
        assert {s.kind for s in segments} <= set(KIND_STYLE)
        assert all(s.height_gib > 0 and s.model in plan.workflow.models for s in segments)
        # every device runs a call, so its peak includes a call's working set
        assert {"activations", "workspace"} & {s.kind for s in segments} or \
            "message_buffers" in {s.kind for s in segments}, device
