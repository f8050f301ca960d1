"""Numbers given on the command line are bounded and finite: one line, exit 2, never a
traceback from numpy, numba or torch (a negative seed, a seed above 64 bits, an infinite
learning rate)."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.cli.main import main

MICRO_PLAN = Path(__file__).resolve().parents[2] / "plans" / "ppo-llama-micro-cpu1.yaml"


@pytest.mark.parametrize("argv,needle", [
    (["search", "--seed", "-1"], "argument --seed"),
    (["search", "--seed", str(2**63)], "argument --seed"),
    (["search", "--time-limit", "inf"], "argument --time-limit"),
])
def test_search_options_out_of_range_are_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


@pytest.mark.parametrize("option,value", [
    ("--seed", "-3"), ("--seed", str(2**32)), ("--lr", "inf"), ("--lr", "nan"),
    ("--lr", "0"), ("--temperature", "inf"), ("--iterations", "0"),
    ("--iterations", str(10**9)),
])
def test_run_options_out_of_range_are_one_line(option, value, capsys):
    assert main(["run", str(MICRO_PLAN), option, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"plan run: error: {option}: got"), err
