"""`plan` starts light: the CLI module imports no torch, `plan --help` and `plan graph` load
none of torch, matplotlib or numba, no planning command loads torch, and the registry's
one-line helps are the subcommand modules' own. Each check runs in a fresh interpreter,
since this test process may already hold those modules. (Start-up seconds are measured by
hand: `python -X importtime -c "import planner.cli.main"`, not asserted here.)"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from planner.cli.main import SUBCOMMANDS, build_parser

REPO = Path(__file__).resolve().parents[2]
SHIPPED_PLAN = REPO / "plans" / "ppo-h100x8.yaml"
TIMEOUT_S = 300   # generous: the machine is shared
HEAVY = ("torch", "matplotlib", "numba")
TINY_WORKFLOW = ("algorithm: ppo\n"
                 "models: {actor: llama-tiny, critic: llama-tiny, ref: llama-tiny, "
                 "reward: llama-tiny}\n"
                 "batch: {n_seqs: 8, prompt_len: 16, gen_len: 8, ppo_minibatches: 2}\n")

# Runs `plan` commands in one interpreter and prints, as JSON, each command's exit code and
# which of the watched modules were loaded once it had finished.
PROBE = textwrap.dedent("""\
    import contextlib, io, json, sys
    from planner.cli.main import main
    commands, watched = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    report = []
    for argv in commands:
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as exit:   # --help exits through argparse
                code = exit.code
        report.append({"argv": argv, "code": code,
                       "loaded": [m for m in watched if m in sys.modules]})
    print(json.dumps(report))
    """)


def run_probe(commands: list[list[str]], watched: tuple[str, ...], cwd: Path) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(commands),
                           json.dumps(watched)], capture_output=True, text=True, cwd=cwd,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_cli_does_not_import_torch():
    done = subprocess.run([sys.executable, "-c",
                           "import planner.cli.main, sys; assert 'torch' not in sys.modules"],
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr


def test_help_and_graph_load_no_torch_matplotlib_or_numba(tmp_path):
    report = run_probe([["--help"], ["graph", "--workflow", "ppo", "--json"]], HEAVY,
                       tmp_path)
    assert [r["code"] for r in report] == [0, 0]
    for r in report:
        assert r["loaded"] == [], r


def test_planning_commands_do_not_load_torch(tmp_path):
    workflow = tmp_path / "tiny.yaml"
    workflow.write_text(TINY_WORKFLOW)
    plan = str(SHIPPED_PLAN)
    commands = [["estimate", plan, "--json"], ["show", plan], ["check", plan],
                ["diff", plan, plan], ["search", "--help"], ["run", "--help"],
                ["profile", "--help"],
                ["baseline", "--kind", "symmetric", "--workflow", str(workflow),
                 "--cluster", "cpu2"],
                ["search", "--workflow", str(workflow), "--cluster", "cpu2", "--time-limit",
                 "1", "--out", str(tmp_path / "p.yaml")],
                ["viz", plan, "--kind", "placement", "--out", str(tmp_path / "p.png")]]
    report = run_probe(commands, ("torch",), tmp_path)
    for r in report:
        assert r["code"] == 0, r
        assert r["loaded"] == [], r


@pytest.mark.parametrize("sub", SUBCOMMANDS, ids=lambda s: s.name)
def test_registry_help_is_the_subcommand_modules_own(sub):
    parser = build_parser(sub.name)
    [subparsers] = [a for a in parser._actions if a.dest == "command"]
    helps = {choice.dest: choice.help for choice in subparsers._choices_actions}
    assert list(helps) == [s.name for s in SUBCOMMANDS]
    assert helps[sub.name] == sub.help
    assert subparsers.choices[sub.name].get_default("handler") is not None
