"""Least-squares fit of a Calibration to measured plans (costmodel/calibration.py).

Each call time is linear in the factors (costmodel/calibration_data.py features):

    measured = contention x compute_scale[kind] x compute_s
             + (collective_latency_s + oversubscribed_latency_s x (oversubscription - 1))
               x latency_steps
             + bandwidth_s (x contention x oversubscription on CPU devices, where the
               messages are copied on the shared cores: CallFeatures.bandwidth_time_s)
             + contention x oversubscription x (call_overhead_s[kind]
                                                + decode_step_s x decode_steps)
    contention = 1 + process_slowdown x co_running

for a given process_slowdown; that one factor is found by a bounded scalar search over the
loss of the linear fit (up to costmodel.calibration.MAX_PROCESS_SLOWDOWN: a co-running
process can at most double the time, beyond which something else is wrong).

and each reallocation / transfer time is move_scale x priced + move_overhead_s. Rows are
divided by the measured time, so the fit minimises relative errors (a 5 ms call counts as
much as a 2 s one), with every factor >= 0. The loss is soft-L1 on those relative residuals
(scipy.optimize.least_squares, loss="soft_l1", f_scale ROBUST_SCALE): quadratic up to ~20%
error, linear beyond, so one run disturbed by another job on the shared machine (a call 3x
its usual time) does not drag every factor. A factor that no row constrains (no generate
call, no collective) keeps its neutral value (scale 1, overhead 0, the hardware's latency).
"""

from __future__ import annotations

import datetime
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares, minimize_scalar

from costmodel.calibration import (
    CALL_KINDS,
    FORMAT_VERSION,
    MAX_PROCESS_SLOWDOWN,
    Calibration,
)
from costmodel.calibration_data import (
    CallFeatures,
    MeasuredPlan,
    call_features,
    move_rows,
)
from planner.domain.errors import InputError, validated
from planner.domain.paths import PROFILES_DIR
from planner.domain.processor import Processor

# Relative error at which the soft-L1 loss turns from quadratic to linear.
ROBUST_SCALE = 0.2

CALL_FACTORS = ([f"compute_scale.{k}" for k in CALL_KINDS]
                + [f"call_overhead_s.{k}" for k in CALL_KINDS]
                + ["decode_step_s", "collective_latency_s", "oversubscribed_latency_s"])
NEUTRAL = {**{f"compute_scale.{k}": 1.0 for k in CALL_KINDS},
           **{f"call_overhead_s.{k}": 0.0 for k in CALL_KINDS}, "decode_step_s": 0.0,
           "collective_latency_s": None, "oversubscribed_latency_s": None}


@dataclass(frozen=True)
class Residual:
    name: str          # "<plan>:<call>" or "<plan>:<move>"
    measured_s: float
    before_s: float    # uncalibrated estimate
    after_s: float     # with the fitted factors


@dataclass(frozen=True)
class FitResult:
    calibration: Calibration
    calls: list[Residual]
    moves: list[Residual]


def design_row(f: CallFeatures, process_slowdown: float = 0.0) -> np.ndarray:
    """Coefficients of CALL_FACTORS in one call's time (module docstring)."""
    contention = 1.0 + process_slowdown * f.co_running
    row = np.zeros(len(CALL_FACTORS))
    row[CALL_FACTORS.index(f"compute_scale.{f.kind}")] = contention * f.compute_s
    row[CALL_FACTORS.index(f"call_overhead_s.{f.kind}")] = contention * f.oversubscription
    row[CALL_FACTORS.index("decode_step_s")] = contention * f.oversubscription * f.decode_steps
    row[CALL_FACTORS.index("collective_latency_s")] = f.latency_steps
    row[CALL_FACTORS.index("oversubscribed_latency_s")] = \
        f.latency_steps * (f.oversubscription - 1.0)
    return row


def _solve(matrix: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Non-negative relative least squares over the columns some row uses; (x, used, loss)."""
    used = np.any(matrix > 0, axis=0)
    x = np.zeros(matrix.shape[1])
    loss = 0.0
    if used.any():
        a = matrix[:, used]
        # Columns differ by orders of magnitude (a scale vs an overhead in seconds): solve
        # for column-normalised unknowns so the solver's steps are comparable.
        norm = np.abs(a).max(axis=0)
        start = np.full(a.shape[1], 0.5)
        fit = least_squares(lambda y: (a / norm) @ y - target, start, bounds=(0.0, np.inf),
                            loss="soft_l1", f_scale=ROBUST_SCALE)
        x[used] = fit.x / norm
        loss = float(fit.cost)
    return x, used, loss


def _fit_linear(features: list[CallFeatures], process_slowdown: float
                ) -> tuple[np.ndarray, np.ndarray, float]:
    measured = np.array([f.measured_s for f in features])
    matrix = np.array([design_row(f, process_slowdown) for f in features]) / measured[:, None]
    target = (measured - np.array([f.bandwidth_time_s(process_slowdown)
                                   for f in features])) / measured
    return _solve(matrix, target)


def fit_factors(features: list[CallFeatures]) -> dict[str, float | None]:
    """Factor values by name (CALL_FACTORS and process_slowdown); neutral ones for factors
    no row constrains (process_slowdown 0 without a call of several processes on a node)."""
    slowdown = 0.0
    if any(f.co_running for f in features):
        search = minimize_scalar(lambda s: _fit_linear(features, s)[2],
                                 bounds=(0.0, MAX_PROCESS_SLOWDOWN), method="bounded",
                                 options={"xatol": 1e-3})
        slowdown = float(search.x)
    x, used, _ = _fit_linear(features, slowdown)
    factors = {name: (float(x[i]) if used[i] else NEUTRAL[name])
               for i, name in enumerate(CALL_FACTORS)}
    return {**factors, "process_slowdown": slowdown}


def fit_moves(rows: list[tuple[str, float, float]]) -> tuple[float, float]:
    """(move_scale, move_overhead_s); neutral (1, 0) without rows."""
    if not rows:
        return 1.0, 0.0
    priced = np.array([r[1] for r in rows])
    measured = np.array([r[2] for r in rows])
    matrix = np.stack([priced, np.ones_like(priced)], axis=1) / measured[:, None]
    x, _, _ = _solve(matrix, np.ones_like(measured))
    return float(x[0]), float(x[1])


def fit_calibration(cases: list[MeasuredPlan], cores_per_node: int | None = None,
                    notes: str = "", processor: Processor | None = None,
                    profiles_dir: Path = PROFILES_DIR) -> FitResult:
    """Fit every factor to the measured plans; all plans must be on one hardware.
    `processor` is what the traces ran on (recorded in the calibration; None: unknown);
    `profiles_dir` holds the profile tables the factors are fitted over."""
    if not cases:
        raise InputError("plan calibrate: no traces given")
    devices = {hw.name for c in cases for hw in c.plan.cluster.node_hardware}
    if len(devices) != 1:
        raise InputError(f"traces are of plans on {sorted(devices)}; calibrate one hardware "
                         "at a time")
    cores = cores_per_node or os.cpu_count() or 1
    features = [f for case in cases for f in call_features(case, cores, profiles_dir)]
    factors = fit_factors(features)
    moves = [r for case in cases for r in move_rows(case, profiles_dir)]
    move_scale, move_overhead = fit_moves(moves)
    # A factor outside its bounds is an InputError: the traces, not the fit, are then
    # suspect (a call measured far slower than any model of it).
    calibration = validated(Calibration, dict(
        format_version=FORMAT_VERSION, kind="calibration", device=devices.pop(),
        recorded=datetime.date.today().isoformat(), host=platform.node(), processor=processor,
        notes=notes or f"fitted by plan calibrate on {len(cases)} traces: "
                       + ", ".join(c.name for c in cases),
        cores_per_node=cores, process_slowdown=factors["process_slowdown"],
        compute_scale={k: factors[f"compute_scale.{k}"] for k in CALL_KINDS},
        call_overhead_s={k: factors[f"call_overhead_s.{k}"] for k in CALL_KINDS},
        decode_step_s=factors["decode_step_s"],
        collective_latency_s=factors["collective_latency_s"],
        oversubscribed_latency_s=factors["oversubscribed_latency_s"],
        move_scale=move_scale, move_overhead_s=move_overhead),
        "plan calibrate: the factors fitted to these traces")
    call_res = call_residuals(cases, calibration, profiles_dir)
    move_res = [Residual(name, m, p, calibration.move_time_s(p)) for name, p, m in moves]
    summary = {"calls": float(len(call_res)), "moves": float(len(move_res)),
               "call_rel_error_median_before": _median_rel(call_res, "before_s"),
               "call_rel_error_median_after": _median_rel(call_res, "after_s")}
    return FitResult(calibration.model_copy(update={"fit": summary}), call_res, move_res)


def call_residuals(cases: list[MeasuredPlan], calibration: Calibration,
                   profiles_dir: Path = PROFILES_DIR) -> list[Residual]:
    from costmodel.calibration_data import predict_plan
    rows = []
    for case in cases:
        before = predict_plan(case, None, profiles_dir).call_times_s
        after = predict_plan(case, calibration, profiles_dir).call_times_s
        rows += [Residual(f"{case.name}:{c}", m, before[c], after[c])
                 for c, m in case.call_times_s.items()]
    return rows


def _median_rel(rows: list[Residual], key: str) -> float:
    return float(np.median([abs(getattr(r, key) - r.measured_s) / r.measured_s for r in rows]))
