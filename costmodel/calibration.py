"""A calibration of the cost model: a few named factors fitted to measured traces.

The per-part profile tables (costmodel/profile_table.py) time each layer alone, in one
process owning a core. A real run adds what they cannot see; `plan calibrate` fits these
factors to `plan run` traces by least squares (costmodel/calibration_fit.py) and writes them
to a file that `plan estimate --profile FILE` (and `plan search --profile FILE`) loads:

    format_version: 1
    kind: calibration
    device: cpu                  # the hardware (profiles/hardware/<name>.yaml) it applies to
    recorded: "2025-06-01"
    host: ci-runner              # optional
    processor:                   # optional: what the traces ran on (planner/domain/
      kind: cpu                  # processor.py; plan calibrate writes the machine's own;
      name: Intel(R) Xeon(R) CPU @ 2.20GHz   # absent in older files: unknown)
      logical_cores: 2
      threads: 1
    notes: "..."                 # optional: what it was fitted on
    cores_per_node: 2            # CPU cores the device processes of one node share
    process_slowdown: 0.2        # x compute per extra co-running process on a node (fitted)
    compute_scale: {generate: 1.4, inference: 1.1, train: 0.9}   # x every compute time
    call_overhead_s: {generate: 0.004, inference: 0.002, train: 0.01}  # fixed per call
    decode_step_s: 0.0007        # fixed per decode step (sampling, Python, stop checks)
    collective_latency_s: 0.0004 # latency of one collective step / send (replaces alpha)
    oversubscribed_latency_s: 0.0  # + this per step x (oversubscription - 1); absent in
                                 # older files: equal to collective_latency_s
    move_scale: 1.5              # x the priced time of a reallocation or data transfer
    move_overhead_s: 0.002       # + fixed per reallocation or data transfer
    fit: {calls: 40, ...}        # optional: the fit's summary (written by plan calibrate)

How a calibrated call is priced (costmodel/call_cost.py call_time): with n the call's
device processes on its busiest node (the profile times one process alone on a core),

    slowdown = max(1, n / cores_per_node)                      # more processes than cores
             x (1 + process_slowdown x (min(n, cores_per_node) - 1))   # shared caches and
                                                               # memory bandwidth, fitted
    time = compute_scale[kind] x slowdown x compute
         + communication with collective_latency_s + oversubscribed_latency_s x
           (max(1, n / cores_per_node) - 1) as the latency of every step (a step waits for
           every member to be scheduled; with more processes than cores a member may be
           descheduled: how much that adds differs between machines, docs/accuracy.md, so
           the two are fitted apart), and on a CPU device its
           bytes-over-bandwidth part x slowdown (gloo copies and reduces the messages on
           the same cores as the compute, so they share them alike; without it the
           held-out estimate of a dp x tp plan on 4 processes over 2 cores, llama-small,
           was 25% below its measurement, with it 16%: docs/accuracy.md)
         + slowdown x (call_overhead_s[kind] + decode_steps x decode_step_s)

decode_steps = ceil(m / pp) x pp x gen_len (the rounds of call_cost's decoding model) for
static generate calls of fixed length (decode_steps below: length distributions and
continuous batching), 0 for other calls. A calibration applies only to executions whose
devices are all of its `device` hardware; anything else keeps the uncalibrated model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from costmodel.call_geometry import CostKnobs
from costmodel.generate_cost import (
    continuous_decode_rounds,
    lockstep,
    refill_forwards,
    wave_rows,
)
from costmodel.memory import micro_batch_seqs
from planner.domain.cluster import ClusterSpec
from planner.domain.errors import validated
from planner.domain.layout import Execution
from planner.domain.output_files import atomic_write_text
from planner.domain.processor import Processor
from planner.domain.workflow import BatchSpec, ModelFunctionCall
from planner.domain.yamlio import load_yaml_mapping

FORMAT_VERSION = 1
CALL_KINDS = ("generate", "inference", "train")

# Bounds of the factors, so a broken fit or a hand-edited typo is refused rather than
# applied to every estimate.
# A multiplier of the priced compute or move time: a real run 1000x slower than its
# profile means a broken profile or trace, not an efficiency to model.
MAX_SCALE_FACTOR = 1_000.0
# A fixed cost (per call, decode step, collective step or move): these are micro- to
# milliseconds; an hour is a unit slip.
MAX_FIXED_SECONDS = 3_600.0
# A co-running process can at most double a call's time; beyond that something else is
# wrong (the fit searches process_slowdown up to this).
MAX_PROCESS_SLOWDOWN = 1.0
# The largest CPU hosts have a few hundred cores.
MAX_CORES_PER_NODE = 16_384

ScaleFactor = Annotated[float, Field(ge=0, le=MAX_SCALE_FACTOR)]
FixedSeconds = Annotated[float, Field(ge=0, le=MAX_FIXED_SECONDS)]


class Calibration(BaseModel):
    """Fitted efficiency factors of one hardware (module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    format_version: int
    kind: Literal["calibration"]
    device: str
    recorded: str
    host: str = ""
    processor: Processor | None = None   # None: a file from before it was recorded
    notes: str = ""
    cores_per_node: int = Field(ge=1, le=MAX_CORES_PER_NODE)
    process_slowdown: float = Field(default=0.0, ge=0, le=MAX_PROCESS_SLOWDOWN)
    compute_scale: dict[str, ScaleFactor]
    call_overhead_s: dict[str, FixedSeconds]
    decode_step_s: FixedSeconds
    collective_latency_s: FixedSeconds | None = None
    oversubscribed_latency_s: FixedSeconds | None = None
    move_scale: ScaleFactor
    move_overhead_s: FixedSeconds
    fit: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "Calibration":
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"format_version {self.format_version}; this tool reads "
                             f"{FORMAT_VERSION}")
        for name in ("compute_scale", "call_overhead_s"):
            table = getattr(self, name)
            if sorted(table) != sorted(CALL_KINDS):
                raise ValueError(f"{name} has keys {sorted(table)}; needs exactly "
                                 f"{list(CALL_KINDS)}")
        return self

    @property
    def source(self) -> str:
        return f"calibration:{self.device}"

    def applies_to(self, execution: Execution, cluster: ClusterSpec) -> bool:
        return all(cluster.hardware_of(d).name == self.device for d in execution.devices)

    def oversubscription(self, execution: Execution, cluster: ClusterSpec) -> float:
        """max(1, the call's device processes on its busiest node / cores of a node)."""
        return max(1.0, busiest_node_processes(execution, cluster) / self.cores_per_node)

    def co_running(self, execution: Execution, cluster: ClusterSpec) -> int:
        """Other processes of the call sharing its busiest node's cores, at most cores - 1."""
        return min(busiest_node_processes(execution, cluster), self.cores_per_node) - 1

    def slowdown(self, execution: Execution, cluster: ClusterSpec) -> float:
        """Compute and overhead multiplier of a call from its processes per node."""
        return (self.oversubscription(execution, cluster)
                * (1.0 + self.process_slowdown * self.co_running(execution, cluster)))

    def knobs(self, kind: str, execution: Execution, cluster: ClusterSpec) -> CostKnobs:
        slowdown = self.slowdown(execution, cluster)
        latency = self.collective_latency_s
        if latency is not None:
            extra = (latency if self.oversubscribed_latency_s is None
                     else self.oversubscribed_latency_s)
            latency += extra * (self.oversubscription(execution, cluster) - 1.0)
        bandwidth_scale = slowdown if communicates_on_cores(execution, cluster) else 1.0
        return CostKnobs(compute_scale=self.compute_scale[kind] * slowdown, latency_s=latency,
                         bandwidth_scale=bandwidth_scale)

    def overhead_phases_s(self, call: ModelFunctionCall, execution: Execution,
                          batch: BatchSpec, cluster: ClusterSpec) -> dict[str, float]:
        slow = self.slowdown(execution, cluster)
        phases = {"overhead": slow * self.call_overhead_s[call.kind]}
        steps = decode_steps(call, execution, batch)
        if steps:
            phases["decode_steps"] = slow * steps * self.decode_step_s
        return phases

    def move_time_s(self, priced_s: float) -> float:
        """A reallocation's or data transfer's time from its uncalibrated price."""
        return self.move_scale * priced_s + self.move_overhead_s

    def describe(self) -> str:
        scale = " ".join(f"{k} {self.compute_scale[k]:.2f}" for k in CALL_KINDS)
        over = " ".join(f"{k} {self.call_overhead_s[k] * 1e3:.1f}" for k in CALL_KINDS)
        latency = ("unchanged" if self.collective_latency_s is None
                   else f"{self.collective_latency_s * 1e6:.0f} us")
        if self.oversubscribed_latency_s is not None:
            latency += (f" + {self.oversubscribed_latency_s * 1e6:.0f} us per process per "
                        "core beyond one")
        return (f"compute x [{scale}]; overhead ms [{over}]; decode step "
                f"{self.decode_step_s * 1e3:.2f} ms; collective latency {latency}; moves x"
                f"{self.move_scale:.2f} + {self.move_overhead_s * 1e3:.1f} ms; "
                f"{self.cores_per_node} cores per node, +{self.process_slowdown:.0%} per "
                f"co-running process")


def communicates_on_cores(execution: Execution, cluster: ClusterSpec) -> bool:
    """The call's collectives copy and reduce on the cores its compute runs on (CPU
    devices, gloo), so they share the node's cores as the compute does."""
    return cluster.hardware_of(execution.devices[0]).kind == "cpu"


def node_processes(execution: Execution, cluster: ClusterSpec) -> dict[int, int]:
    """Device processes of the execution on each node it runs on."""
    per_node: dict[int, int] = {}
    for d in execution.devices:
        node = cluster.device_node[d]
        per_node[node] = per_node.get(node, 0) + 1
    return per_node


def busiest_node_processes(execution: Execution, cluster: ClusterSpec) -> int:
    """Device processes of the execution on the node that holds most of them."""
    return max(node_processes(execution, cluster).values())


def decode_steps(call: ModelFunctionCall, execution: Execution, batch: BatchSpec) -> float:
    """Expected host steps (forwards of a micro-batch or slot group, each with its sampling
    and Python) of a generate call, x pp as every step's chain passes the pp stages
    (costmodel/generate_cost.py); 0 for other calls.
    static (and continuous under fixed lengths, which runs static's schedule): per wave of
    micro-batches, pp x the longest response of the wave's rows over all replicas (its
    prefill and decode steps), i.e. waves x pp x gen_len for a fixed length.
    continuous: pp x (1 + R + refills), the first fill, R decode rounds
    (continuous_decode_rounds) and the refill prefills, one per check that refills some
    slot of a group (refill_forwards): what the runtime runs per stage
    (runtime/generate.py DecodeCounts: prefill_forwards + decode_rounds).
    Both count the steps that make tokens, checked every step: a sparser stop check's
    padding steps are left out (exact on CPU, where every step is checked)."""
    if call.kind != "generate":
        return 0.0
    b, lengths = micro_batch_seqs(call, batch, execution), batch.gen_lengths
    if execution.decode_batching == "continuous" and not lockstep(lengths):
        rounds = continuous_decode_rounds(lengths, execution.micro_batches, execution.pp,
                                          execution.dp, b, 1, batch.gen_len)
        return execution.pp * (1.0 + rounds + refill_forwards(lengths, execution, b, 1))
    rows = wave_rows(execution, b)
    return execution.pp * float(lengths.expected_longest(rows).sum())


def load_calibration(path: Path) -> Calibration:
    """Read and validate a calibration file; InputError naming the file and field."""
    data = load_yaml_mapping(Path(path))
    return validated(Calibration, data, Path(path))


def save_calibration(calibration: Calibration, path: Path) -> None:
    """Write atomically, in the key order of the module docstring."""
    import yaml
    data = calibration.model_dump()
    if calibration.processor is None:
        del data["processor"]
    else:
        data["processor"] = calibration.processor.as_mapping()
    atomic_write_text(Path(path), yaml.safe_dump(data, sort_keys=False))
