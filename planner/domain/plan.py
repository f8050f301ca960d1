"""Plans: one execution per call, and the plan YAML (load, validate, save).

The file is self-contained enough to re-estimate and to run: schema version, the resolved
workflow (model specs and batch), the resolved cluster, one execution per call (mesh as
device ids and as `node:slots` text, dp, tp, pp, micro-batches, and for a train call its run
policy: shard_optimizer_over_dp, recompute; shard_parameters_over_dp when an imported
config trains or infers FSDP-style), the augmented steps
(reallocations and transfers; derived, rewritten on save), the estimate when one was made,
and provenance. Saving, loading and saving again gives byte-identical text.
`staleness: s` (top level, written only when s > 0; 0 <= s <= workflow.max_staleness) runs
generation of iteration i on the rollout model's weights of iteration i - s
(planner/domain/augment.py); with s >= 1 all generate calls of a rollout model share one
placement, the rollout copy's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from planner import __version__
from planner.domain.augment import (
    holds_parameters_alike,
    reallocations,
    rollout_models,
    transfers,
    weight_pushes,
)
from planner.domain.cluster import ClusterSpec
from planner.domain.errors import InputError, validated
from planner.domain.layout import DecodeBatching, Execution, RecomputeMode, execution_problem
from planner.domain.mesh import mesh_text, parse_mesh_text
from planner.domain.output_files import atomic_write_text
from planner.domain.workflow import Workflow
from planner.domain.yamlio import dump_yaml, load_yaml_mapping

SCHEMA_VERSION = 1


class Provenance(BaseModel):
    """Where a plan came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tool_version: str = __version__
    created_by: str = Field(description="the command or code that made the plan")
    profile_source: Optional[str] = None
    seed: Optional[int] = None
    search: Optional[dict[str, Any]] = None


class Plan(BaseModel):
    """A workflow, a cluster and one execution per call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow: Workflow
    cluster: ClusterSpec
    executions: dict[str, Execution]
    estimate: Optional[dict[str, Any]] = None
    provenance: Provenance
    staleness: int = Field(default=0, strict=True)

    def problems(self) -> list[str]:
        """Every reason this plan is invalid for its workflow and cluster (empty when valid)."""
        found = []
        calls = self.workflow.call_by_name
        missing = [c for c in self.workflow.call_order if c not in self.executions]
        if missing:
            found.append(f"executions: no execution for call(s) {missing}")
        extra = sorted(set(self.executions) - set(calls))
        if extra:
            found.append(f"executions: unknown call(s) {extra}; valid: {sorted(calls)}")
        for name, ex in self.executions.items():
            if name not in calls:
                continue
            role = self.workflow.models[calls[name].model]
            problem = execution_problem(ex, role.spec, self.cluster, calls[name],
                                        self.workflow.batch)
            if problem:
                found.append(f"executions.{name}: {problem}")
        if not missing:
            found.extend(self._staleness_problems())
        return found

    def _staleness_problems(self) -> list[str]:
        """The staleness within the workflow's bound; with s >= 1 one placement for each
        rollout model's generate calls (its rollout copy)."""
        bound = self.workflow.max_staleness
        if not 0 <= self.staleness <= bound:
            return [f"staleness: got {self.staleness}; valid: an integer from 0 to the "
                    f"workflow's max_staleness {bound}"]
        if self.staleness == 0:
            return []
        found = []
        for role in rollout_models(self.workflow):
            generate = [c for c in self.workflow.calls_of_model(role)
                        if self.workflow.call_by_name[c].kind == "generate"]
            first = self.executions[generate[0]]
            differ = [c for c in generate[1:]
                      if not holds_parameters_alike(self.executions[c], first)]
            if differ:
                found.append(f"staleness: {self.staleness} keeps one rollout copy of "
                             f"{role}, so its generate calls need one placement; "
                             f"{', '.join(differ)} differ(s) from {generate[0]} "
                             f"({first.layout_text} on devices {list(first.devices)})")
        return found


class ExecutionEntry(BaseModel):
    """An execution as written in the plan file: mesh text and/or device ids."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mesh: Optional[str] = None
    devices: Optional[tuple[int, ...]] = Field(default=None, min_length=1)
    dp: int = Field(ge=1)
    tp: int = Field(ge=1)
    pp: int = Field(ge=1)
    micro_batches: int = Field(default=1, ge=1)
    ep: int = Execution.model_fields["ep"].default   # MoE models; written when above 1
    # Train calls only (planner.domain.layout.Execution says what each does, and holds the
    # defaults); the file of a train call always has them, other calls leave them out.
    shard_optimizer_over_dp: bool = Execution.model_fields["shard_optimizer_over_dp"].default
    recompute: RecomputeMode = Execution.model_fields["recompute"].default
    # Generate calls (Execution says what it does); written when continuous.
    decode_batching: DecodeBatching = Execution.model_fields["decode_batching"].default
    # Imported framework configs only (Execution says what it does); written when true.
    shard_parameters_over_dp: bool = Execution.model_fields["shard_parameters_over_dp"].default


class PlanFile(BaseModel):
    """The plan YAML layout; `augmented` is derived and ignored on load."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int
    workflow: Workflow
    cluster: ClusterSpec
    executions: dict[str, ExecutionEntry]
    augmented: Optional[dict[str, Any]] = None
    estimate: Optional[dict[str, Any]] = None
    provenance: Provenance
    staleness: int = Field(default=0, strict=True)   # range: Plan.problems checks it


def _resolve_execution(name: str, entry: ExecutionEntry, cluster: ClusterSpec,
                       source: str) -> Execution:
    field = f"{source}: executions.{name}"
    if entry.mesh is None and entry.devices is None:
        raise InputError(f"{field}: give mesh (e.g. '0:0-3') or devices (e.g. [0, 1, 2, 3])")
    devices = entry.devices
    if entry.mesh is not None:
        try:
            from_text = parse_mesh_text(entry.mesh, cluster)
        except ValueError as err:
            raise InputError(f"{field}.mesh: {err}") from None
        if devices is not None and tuple(devices) != from_text:
            raise InputError(f"{field}: mesh {entry.mesh!r} is devices {list(from_text)}, "
                             f"but devices says {list(devices)}")
        devices = from_text
    return Execution(devices=tuple(devices), dp=entry.dp, tp=entry.tp, pp=entry.pp,
                     micro_batches=entry.micro_batches, ep=entry.ep,
                     shard_optimizer_over_dp=entry.shard_optimizer_over_dp,
                     recompute=entry.recompute, decode_batching=entry.decode_batching,
                     shard_parameters_over_dp=entry.shard_parameters_over_dp)


def plan_from_mapping(data: dict[str, Any], source: str) -> Plan:
    """Parse and validate plan data; InputError with the file and field on any problem."""
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise InputError(f"{source}: schema_version: got {version!r}; this tool reads "
                         f"schema_version {SCHEMA_VERSION}")
    parsed = validated(PlanFile, data, source)
    executions = {name: _resolve_execution(name, entry, parsed.cluster, source)
                  for name, entry in parsed.executions.items()}
    plan = Plan(workflow=parsed.workflow, cluster=parsed.cluster, executions=executions,
                estimate=parsed.estimate, provenance=parsed.provenance,
                staleness=parsed.staleness)
    problems = plan.problems()
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise InputError(f"{source}: {problems[0]}{more}")
    return plan


def load_plan(path: Path) -> Plan:
    return plan_from_mapping(load_yaml_mapping(path), str(path))


def plan_to_mapping(plan: Plan) -> dict[str, Any]:
    """The plan as plain data in file order (executions in call order)."""
    order = plan.workflow.call_order
    executions = {}
    for name in order:
        ex = plan.executions[name]
        entry = {"mesh": mesh_text(ex.devices, plan.cluster), "devices": list(ex.devices),
                 "dp": ex.dp, "tp": ex.tp, "pp": ex.pp, "micro_batches": ex.micro_batches}
        if ex.ep > 1:
            entry["ep"] = ex.ep
        if plan.workflow.call_by_name[name].kind == "train":
            entry["shard_optimizer_over_dp"] = ex.shard_optimizer_over_dp
            entry["recompute"] = ex.recompute
        if ex.decode_batching != Execution.model_fields["decode_batching"].default:
            entry["decode_batching"] = ex.decode_batching
        if ex.shard_parameters_over_dp:
            entry["shard_parameters_over_dp"] = True
        executions[name] = entry
    augmented = {
        "reallocations": [{"model": r.model, "from": r.src_call, "to": r.dst_call,
                           "next_iteration": r.wraps}
                          for r in reallocations(plan.workflow, plan.executions,
                                                 plan.staleness)],
        "transfers": [{"from": t.src_call, "to": t.dst_call, "keys": list(t.keys)}
                      for t in transfers(plan.workflow, plan.executions)],
    }
    pushes = weight_pushes(plan.workflow, plan.staleness)
    if pushes:
        augmented["weight_pushes"] = [{"model": p.model, "from": p.train_call,
                                       "to": p.gen_call} for p in pushes]
    staleness = {"staleness": plan.staleness} if plan.staleness else {}
    return {
        "schema_version": SCHEMA_VERSION,
        "workflow": plan.workflow.model_dump(mode="json"),
        "cluster": plan.cluster.model_dump(mode="json"),
        **staleness,
        "executions": executions,
        "augmented": augmented,
        "estimate": plan.estimate,
        "provenance": plan.provenance.model_dump(mode="json"),
    }


def plan_to_yaml(plan: Plan) -> str:
    return dump_yaml(plan_to_mapping(plan))


def save_plan(plan: Plan, path: Path) -> None:
    """Write the plan atomically (temporary file + rename)."""
    atomic_write_text(Path(path), plan_to_yaml(plan))


def check_same_cluster(plan: Plan, cluster: ClusterSpec, source: str) -> None:
    """Refuse a plan made for another cluster than the one it is used on."""
    if plan.cluster != cluster:
        raise InputError(f"{source}: cluster: the plan is for {plan.cluster.describe()}, "
                         f"not {cluster.describe()}; re-plan with `plan search --cluster`")
