"""A cached kernel that compiles in another file's kernels is recompiled when that file
changes (planner/search/kernel_cache.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

KERNEL = textwrap.dedent('''
    import numba
    from planner.search import kernel_cache
    import helper
    kernel_cache.depends_on(__file__, helper.__file__)

    @numba.njit(cache=True)
    def kernel(x):
        return helper.scale(x)

    print(kernel(2.0))
''')


def run_kernel(directory) -> tuple[str, str]:
    done = subprocess.run([sys.executable, str(directory / "kernel.py")], cwd=directory,
                          capture_output=True, text=True, check=True,
                          env={"NUMBA_DEBUG_CACHE": "1", "PYTHONPATH": ":".join(sys.path)})
    return done.stdout.strip().splitlines()[-1], done.stdout


def test_a_change_of_a_dependency_recompiles_the_dependent(tmp_path):
    (tmp_path / "kernel.py").write_text(KERNEL)
    helper = tmp_path / "helper.py"
    helper.write_text("import numba\n\n@numba.njit(cache=True)\ndef scale(x):\n"
                      "    return 3.0 * x\n")
    assert run_kernel(tmp_path)[0] == "6.0"
    result, log = run_kernel(tmp_path)
    assert result == "6.0" and "data loaded" in log       # cached, unchanged
    helper.write_text("import numba\n\n@numba.njit(cache=True)\ndef scale(x):\n"
                      "    return 5.0 * x\n")
    assert run_kernel(tmp_path)[0] == "10.0"             # numba alone would print 6.0
