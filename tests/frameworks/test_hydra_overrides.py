"""Hydra overrides: parsing a script's training command, applying and reading keys."""

import pytest

from planner.domain.errors import InputError
from planner.frameworks.hydra_overrides import (
    apply_overrides,
    command_in_script,
    lookup,
    parse_override,
    parse_value,
    render_value,
)

MODULE = "verl.trainer.main_ppo"


def test_values_are_read_as_hydra_reads_them():
    assert parse_value("1024") == 1024 and parse_value("1e-6") == 1e-6
    assert parse_value("True") is True and parse_value("null") is None
    assert parse_value('["console","wandb"]') == ["console", "wandb"]
    assert parse_value("'error'") == "error" and parse_value("vllm") == "vllm"
    for value in (True, None, 4, 0.5, "Qwen/Qwen2.5-7B", "~/models/x"):
        assert parse_value(render_value(value).strip("'")) == value


def test_script_variables_continuations_and_options():
    script = """set -x
# a comment
train_files="['$HOME/a.parquet', '$HOME/b.parquet']"
python3 -m verl.trainer.main_ppo --config-path=config \\
    --config-name='ppo_megatron_trainer.yaml'\\
    data.train_files="$train_files" \\
    +trainer.extra=1 \\
    ~trainer.logger \\
    trainer.nnodes=2 $@ 2>&1 | tee log.txt
"""
    command = command_in_script(script, "run.sh", MODULE)
    assert command.config_path == "config"
    assert command.config_name == "ppo_megatron_trainer.yaml"
    keys = [(o.op, o.key, o.value) for o in command.overrides]
    assert keys == [("set", "data.train_files", ["$HOME/a.parquet", "$HOME/b.parquet"]),
                    ("add", "trainer.extra", 1), ("delete", "trainer.logger", None),
                    ("set", "trainer.nnodes", 2)]
    assert any("$@" in note for note in command.notes)


@pytest.mark.parametrize("token", ["trainer.nnodes", "=3", "a..b=1", "+=x"])
def test_malformed_override_is_one_line(token):
    with pytest.raises(InputError) as err:
        parse_override(token, "run.sh", 7)
    assert str(err.value).startswith("run.sh: line 7:") and "\n" not in str(err.value)


def test_unknown_option_and_missing_command_are_refused():
    with pytest.raises(InputError, match="option '--multirun'"):
        command_in_script(f"python3 -m {MODULE} --multirun a=1\n", "run.sh", MODULE)
    with pytest.raises(InputError, match="found 0"):
        command_in_script("echo hello\n", "run.sh", MODULE)


def test_apply_follows_hydra_rules_and_lookup_follows_interpolations():
    base = {"a": {"b": 1, "c": "${oc.select:a.b,7}", "d": "${.b}", "e": "${oc.select:x.y,7}"}}
    ops = [parse_override("a.b=5", "f", 1), parse_override("++a.new=2", "f", 2)]
    merged = apply_overrides(base, ops, "f")
    assert base["a"]["b"] == 1 and merged["a"]["b"] == 5 and merged["a"]["new"] == 2
    assert lookup(merged, "a.c", "f") == 5 and lookup(merged, "a.d", "f") == 5
    assert lookup(merged, "a.e", "f") == 7
    with pytest.raises(InputError, match=r"f: line 1: a.b: \+a.b adds a key"):
        apply_overrides(base, [parse_override("+a.b=2", "f", 1)], "f")
    with pytest.raises(InputError, match="not a key of the config"):
        apply_overrides(base, [parse_override("a.zz=2", "f", 1)], "f",
                        known_keys=frozenset({"a.b"}))
