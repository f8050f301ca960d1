"""planner/frameworks/openrlhf_flags.py against the checked-in copy of OpenRLHF v0.11.0's
openrlhf/cli/train_ppo_ray.py, and the command-line reader's handling of shell text."""

import ast
from pathlib import Path

import pytest

from planner.domain.errors import InputError
from planner.frameworks import openrlhf_flags
from planner.frameworks.openrlhf_cmdline import parse_flags

DATA = Path(__file__).parent / "data" / "openrlhf"


def defined_flags() -> dict[str, str]:
    """Flag name (no dashes) -> 'switch', 'pair', 'list' or 'value', from the argparse
    calls of the checked-in train_ppo_ray.py (f-strings expanded for actor and critic)."""
    tree = ast.parse((DATA / "train_ppo_ray.py").read_text())
    found = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"):
            continue
        keywords = {k.arg: k.value for k in node.keywords}
        kind = "switch" if "action" in keywords else {
            2: "pair", "*": "list"}.get(ast.literal_eval(keywords["nargs"]), "?") \
            if "nargs" in keywords else "value"
        first = node.args[0]
        if isinstance(first, ast.JoinedStr):
            names = ["".join(v.value if isinstance(v, ast.Constant) else prefix
                             for v in first.values) for prefix in ("actor", "critic")]
        else:
            names = [first.value]
        for name in names:
            found[name[2:]] = kind
    return found


def test_flag_sets_match_the_argparse_definitions():
    defined = defined_flags()
    by_kind = {kind: {n for n, k in defined.items() if k == kind}
               for kind in ("switch", "pair", "list", "value")}
    assert by_kind["switch"] == openrlhf_flags.SWITCHES
    assert by_kind["pair"] == openrlhf_flags.PAIRS
    assert by_kind["list"] == openrlhf_flags.LISTS
    assert by_kind["value"] == openrlhf_flags.VALUED
    assert "vllm.num_engines" in openrlhf_flags.VALUED


def test_reads_continuations_equals_switches_and_pairs():
    text = ("ray job submit -- python3 -m openrlhf.cli.train_ppo_ray \\\n"
            "  --actor.num_nodes=2 --train.colocate_all \\\n"
            "  --reward.clip_range -5 5 \\\n"
            "  --data.input_template 'User: {} Assistant:'  # a comment\n"
            "echo done --not-a-flag\n")
    flags = parse_flags(text, "run.sh")
    assert flags["actor.num_nodes"].values == ("2",)
    assert flags["train.colocate_all"].values == ()
    assert flags["reward.clip_range"].values == ("-5", "5")
    assert flags["data.input_template"].values == ("User: {} Assistant:",)
    assert flags["data.input_template"].line == 4
    assert set(flags) == {"actor.num_nodes", "train.colocate_all", "reward.clip_range",
                          "data.input_template"}


@pytest.mark.parametrize("text, message", [
    ("python3 -m openrlhf.cli.train_ppo_ray --actor.num_gpus 8",
     "run.sh:1: --actor.num_gpus is not a flag of OpenRLHF v0.11.0"),
    ("python3 -m openrlhf.cli.train_ppo_ray --vllm_num_engines 2",
     "v0.10.2 renamed the flags"),
    ("python3 -m openrlhf.cli.train_ppo_ray \\\n --actor.num_nodes $NODES",
     "run.sh:2: --actor.num_nodes '$NODES' uses a shell variable"),
    ("python3 -m openrlhf.cli.train_ppo_ray --train.colocate_all=1", "write it without `=`"),
    ("python3 -m openrlhf.cli.train_ppo_ray --reward.clip_range 1", "needs 2 value(s)"),
    ("echo nothing here", "expected one `python3 -m openrlhf.cli.train_ppo_ray` command"),
])
def test_bad_command_lines_are_one_line_errors(text, message):
    with pytest.raises(InputError) as err:
        parse_flags(text, "run.sh")
    assert message in str(err.value)
    assert "\n" not in str(err.value)
