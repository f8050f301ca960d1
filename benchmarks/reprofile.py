"""Re-measure on this machine the profile tables a benchmark prices with, as a user would:
`plan profile --model M --tp ... --out DIR/cpu/<shape>.yaml` for every model shape (and the
tensor-parallel degrees) its plans use. DIR is the run's own folder (`<run>/profiles`) unless
the shipped profiles/ is asked for explicitly (--into-shipped-profiles); estimates then
read DIR (costmodel's `profiles_dir`). Profile tables and calibrations are specific to a
processor (issue 11): a calibration is fitted over the tables of the machine it runs on.

    profiles_dir = reprofile_tables({"llama-tiny": [1, 2]}, run_dir / "profiles")
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def add_reprofile_options(parser) -> None:
    parser.add_argument("--reprofile", action="store_true",
                        help="first measure the profile tables of the plans' model shapes on "
                             "this machine (plan profile) into DIR/profiles/cpu/, and fit and "
                             "estimate with them")
    parser.add_argument("--into-shipped-profiles", action="store_true",
                        help="with --reprofile: write the tables (and the calibration) over "
                             "the shipped profiles/cpu/ instead of the run's folder")


def reprofile_dir(run_dir: Path, into_shipped: bool) -> Path:
    """Where re-measured tables go: <run_dir>/profiles, or the shipped profiles/."""
    from planner.domain.paths import PROFILES_DIR
    return PROFILES_DIR if into_shipped else Path(run_dir) / "profiles"


def plan_degrees(plans) -> dict[str, list[int]]:
    """{model preset: the tensor-parallel degrees its calls run at} over `plans`."""
    degrees: dict[str, set[int]] = {}
    for plan in plans:
        for name, ex in plan.executions.items():
            model = plan.workflow.models[plan.workflow.call_by_name[name].model].spec.name
            degrees.setdefault(model, set()).add(ex.tp)
    return {model: sorted(tps) for model, tps in degrees.items()}


def reprofile_tables(degrees: dict[str, list[int] | None], profiles_dir: Path) -> Path:
    """Run `plan profile` for each model at its degrees (None: every degree that shards it)
    into profiles_dir/cpu/; exits with plan profile's code if one fails."""
    from costmodel.profile_table import model_shape_key
    from planner.cli.main import main as plan_main
    from planner.domain.model_files import resolve_model
    for model, tps in degrees.items():
        out = Path(profiles_dir) / "cpu" / f"{model_shape_key(resolve_model(model))}.yaml"
        argv = ["profile", "--model", model, "--out", str(out)]
        argv += ["--tp", ",".join(map(str, tps))] if tps else []
        start = time.perf_counter()
        code = plan_main(argv)
        if code:
            sys.exit(code)
        print(f"re-profiled {model} at tp {tps or 'all'} in {time.perf_counter() - start:.0f} s",
              flush=True)
    return Path(profiles_dir)


def tables_processors(profiles_dir: Path, models: list[str]) -> str:
    """`llama-tiny: <processor>, ...` of the tables the estimates read (for the report)."""
    from costmodel.profile_table import find_profile
    from planner.domain.model_files import resolve_model
    parts = []
    for model in models:
        lookup = find_profile(Path(profiles_dir), "cpu", resolve_model(model))
        recorded = lookup and lookup.table.processor
        parts.append(f"{model}: " + ("no table (roofline)" if lookup is None else
                                     recorded.describe() if recorded else "unknown processor"))
    return "; ".join(parts)
