"""`plan search` writes its default plan in the current directory, and Ctrl-C stops it
cleanly: before the chains run it exits 130 with `interrupted` and no traceback; while they
run it writes the best plan so far, then exits 130.

The Ctrl-C tests start a real `plan` process. The set-up case waits until the command is
importing its modules (numpy's extension is mapped into the process: Python's own start-up,
which can take a second on a busy machine, is over) and interrupts the imports and table
building. The MCMC case waits for the progress line, which `plan search` draws only on a
terminal, so its stderr is a pseudo-terminal. They use h100x64, whose table building takes
seconds and whose chains run seconds before they plateau, so each SIGINT lands in the phase
it is meant for. No timing is asserted; the timeouts are generous.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from planner.cli.main import main
from planner.domain.paths import PLANS_DIR
from planner.domain.plan import load_plan

TINY_WORKFLOW = ("algorithm: ppo\n"
                 "models: {actor: llama-tiny, critic: llama-tiny, ref: llama-tiny, "
                 "reward: llama-tiny}\n"
                 "batch: {n_seqs: 8, prompt_len: 16, gen_len: 8, ppo_minibatches: 2}\n")
SLOW_SEARCH = ["search", "--cluster", "h100x64", "--time-limit", "120"]
PLAN_COMMAND = [sys.executable, "-m", "planner.cli.main"]
COMMAND_IMPORTS_MARKER = "_multiarray_umath"   # numpy's C extension, in /proc/PID/maps
POLL_S = 0.01
TIMEOUT_S = 600
INTERRUPTED = 130


def test_default_plan_file_is_in_the_current_directory(tmp_path, monkeypatch, capsys):
    (tmp_path / "tiny.yaml").write_text(TINY_WORKFLOW)
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--workflow", "tiny.yaml", "--cluster", "cpu2",
                 "--time-limit", "3"]) == 0
    written = tmp_path / "tiny-cpu2.plan.yaml"
    assert f"wrote {written.name}" in capsys.readouterr().out
    plan = load_plan(written)
    assert plan.provenance.created_by == "plan search" and plan.cluster.name == "cpu2"
    assert not (PLANS_DIR / "tiny-cpu2.yaml").exists()


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default disposition. A shell starts
    background jobs with SIGINT ignored, the test runner may run in one (CI scripts do), and
    Python keeps an inherited SIG_IGN instead of installing its KeyboardInterrupt handler,
    as a program started in the background should: `plan` then ignores Ctrl-C like every
    other background program, which is not what these tests are about."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_command_imports(proc: subprocess.Popen) -> None:
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + TIMEOUT_S
    while COMMAND_IMPORTS_MARKER not in maps.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, "plan search ended early"
        time.sleep(POLL_S)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux /proc/PID/maps")
def test_ctrl_c_before_the_chains_run_exits_130_without_traceback(tmp_path):
    out = tmp_path / "plan.yaml"
    proc = subprocess.Popen(PLAN_COMMAND + SLOW_SEARCH + ["--out", str(out)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    _wait_for_command_imports(proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == INTERRUPTED, (stdout, stderr)
    assert stderr.strip() == "plan search: interrupted"
    assert not out.exists()


def _read_until(fd: int, proc: subprocess.Popen, marker: bytes | None) -> bytes:
    """What `fd` (a pty master) gives until `marker` appears (None: until the process has
    exited and the pty is drained)."""
    got = b""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if marker is not None and marker in got:
            return got
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:          # EIO: the other end is closed
                chunk = b""
            got += chunk
            if not chunk and proc.poll() is not None:
                return got
        elif proc.poll() is not None and marker is None:
            return got
        if marker is not None and proc.poll() is not None and marker not in got:
            raise AssertionError(f"plan search exited before {marker!r}: {got!r}")
    raise AssertionError(f"no {marker!r} within {TIMEOUT_S} s: {got!r}")


def test_ctrl_c_while_the_chains_run_writes_the_best_plan_so_far(tmp_path):
    out = tmp_path / "plan.yaml"
    master, terminal = pty.openpty()
    proc = subprocess.Popen(PLAN_COMMAND + SLOW_SEARCH + ["--out", str(out)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=terminal, text=True,
                            preexec_fn=_default_sigint)
    os.close(terminal)
    try:
        before = _read_until(master, proc, b"searching: [")
        proc.send_signal(signal.SIGINT)
        stderr = (before + _read_until(master, proc, None)).decode(errors="replace")
        stdout = proc.stdout.read()
        proc.wait(timeout=TIMEOUT_S)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == INTERRUPTED, (stdout, stderr)
    assert "Traceback" not in stderr
    assert f"plan search: interrupted; wrote the best plan found so far to {out}" in stderr
    assert "stopped by interrupted" in stdout and f"wrote {out}" in stdout
    plan = load_plan(out)
    assert plan.provenance.search["stopped_by"] == "interrupted"


@pytest.mark.parametrize("compiled", [True, False])
def test_a_run_cut_short_by_compiling_its_kernels_says_so(tmp_path, capsys, monkeypatch,
                                                          compiled):
    """The first search on a machine compiles the kernels within --time-limit; when the
    limit then cut the search, one line says why and that the next run will not pay it
    (planner.search.mcmc.compiled_in_this_process, faked here: the real compile takes a
    minute)."""
    import planner.cli.search as search_cli
    monkeypatch.setattr(search_cli, "compiled_in_this_process", lambda: compiled)
    # h100x64's tables alone take longer than the limit: the search is cut
    assert main(["search", "--cluster", "h100x64", "--time-limit", "2",
                 "--out", str(tmp_path / "p.yaml")]) in (0, 1)
    out = capsys.readouterr().out
    assert "--time-limit" in out
    assert ("this run compiled the search kernels" in out) == compiled
