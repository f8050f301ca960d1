"""Reading workflows: built-ins by name and user workflow YAML files.

A workflow file at least accepts
    algorithm: ppo
    models: {actor: llama-7b, critic: llama-7b, ref: llama-7b, reward: llama-7b}
    batch: {n_seqs: 512, prompt_len: 1024, gen_len: 1024, ppo_minibatches: 4}
prompt_len and gen_len may also be distributions, `{mean: 232, max: 1024}` or buckets
`[{len: 128, weight: 3}, {len: 1024, weight: 1}]` (planner/domain/length_distribution.py).
A model may be a preset name, a directory with an HF config.json (relative to the file), or
`{model: NAME, head: lm|value}`. `algorithm: custom` (or any algorithm with `calls:`) gives
the calls explicitly, each {name, model, kind, inputs, outputs}; `inputs:` names the keys the
dataset provides (default [prompts]).
`max_staleness: k` (0 to MAX_STALENESS, default 0) lets generation of iteration i use the
rollout model's weights of iteration i - k (planner/domain/workflow.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from planner.domain.builtin_workflows import (
    BUILTIN_CALLS,
    BUILTIN_INPUTS,
    DEFAULT_BATCH,
    DEFAULT_MODEL,
    VALUE_HEAD_ROLES,
)
from planner.domain.errors import InputError, describe_validation_error, validated
from planner.domain.model_files import resolve_model
from planner.domain.modelspec import HeadKind
from planner.domain.workflow import (
    Algorithm,
    BatchSpec,
    ModelFunctionCall,
    ModelRole,
    Workflow,
)
from planner.domain.yamlio import load_yaml_mapping, resolve_preset_or_file


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    head: Optional[HeadKind] = None


class WorkflowFile(BaseModel):
    """The workflow YAML a user writes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    algorithm: Algorithm
    models: dict[str, ModelEntry]
    batch: BatchSpec
    inputs: Optional[tuple[str, ...]] = None
    calls: Optional[tuple[ModelFunctionCall, ...]] = None
    max_staleness: int = Field(default=0, strict=True)   # bounds: Workflow checks them

    @field_validator("models", mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        """`role: NAME` is short for `role: {model: NAME}`.

        Done here rather than with a str | ModelEntry union, whose errors would name the
        union's members (`models.actor.str`) instead of the user's mistake.
        """
        if not isinstance(value, dict):
            return value
        entries = {}
        for role, entry in value.items():
            if not isinstance(entry, (str, dict, ModelEntry)):
                raise ValueError(f"role {role!r}: expected a model name, a directory with an "
                                 f"HF config.json or {{model: NAME, head: lm|value}}; got "
                                 f"{entry!r}")
            entries[role] = ModelEntry(model=entry) if isinstance(entry, str) else entry
        return entries


def _role(name: str, entry: ModelEntry, base_dir: Path | None) -> ModelRole:
    head = entry.head or ("value" if name in VALUE_HEAD_ROLES else "lm")
    return ModelRole(spec=resolve_model(entry.model, base_dir), head=head)


def build_workflow(spec: WorkflowFile, source: str, base_dir: Path | None = None) -> Workflow:
    """Resolve a parsed workflow file into a Workflow; InputError naming file and field."""
    if spec.calls is None and spec.algorithm == "custom":
        raise InputError(f"{source}: calls: algorithm custom needs a list of calls")
    calls = spec.calls if spec.calls is not None else BUILTIN_CALLS[spec.algorithm]
    inputs = spec.inputs if spec.inputs is not None else BUILTIN_INPUTS.get(
        spec.algorithm, ("prompts",))
    used_roles = {c.model for c in calls}
    missing = sorted(used_roles - set(spec.models))
    if missing:
        raise InputError(f"{source}: models: missing model role(s) {missing} used by the "
                         f"{spec.algorithm} calls; give e.g. `{missing[0]}: llama-7b`")
    unused = sorted(set(spec.models) - used_roles)
    if unused:
        raise InputError(f"{source}: models: role(s) {unused} are used by no call; "
                         f"valid roles: {sorted(used_roles)}")
    roles = {}
    for name, entry in spec.models.items():
        try:
            roles[name] = _role(name, entry, base_dir)
        except ValueError as err:
            raise InputError(f"{source}: models.{name}: {err}") from None
    try:
        return Workflow(algorithm=spec.algorithm, models=roles, batch=spec.batch,
                        inputs=inputs, calls=calls, max_staleness=spec.max_staleness)
    except ValidationError as err:
        raise describe_validation_error(err, source, model=Workflow) from None


def load_workflow_file(path: Path) -> Workflow:
    data = load_yaml_mapping(path)
    spec = validated(WorkflowFile, data, path)
    return build_workflow(spec, str(path), Path(path).parent)


def builtin_workflow(name: str, model: str = DEFAULT_MODEL, batch: dict | None = None,
                     max_staleness: int = 0) -> Workflow:
    """A built-in workflow with every role on `model` and the default batch of design.md."""
    roles = sorted({c.model for c in BUILTIN_CALLS[name]})
    spec = WorkflowFile(algorithm=name, models={r: model for r in roles},
                        batch=BatchSpec(**(batch or DEFAULT_BATCH[name])),
                        max_staleness=max_staleness)
    return build_workflow(spec, f"workflow {name}")


def resolve_workflow(name_or_path: str) -> Workflow:
    """A built-in by name or a workflow YAML file; InputError otherwise."""
    presets = {name: (lambda name=name: builtin_workflow(name)) for name in BUILTIN_CALLS}
    return resolve_preset_or_file(name_or_path, presets, load_workflow_file, "--workflow",
                                  "workflow")
