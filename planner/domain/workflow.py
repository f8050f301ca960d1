"""Workflows: the dataflow graph (DFG) of one RLHF iteration.

A workflow lists model function calls (MFCs): each names a model role, a kind (generate,
inference, train), the data keys it reads and the keys it writes. Edges run from the call that
writes a key to every call that reads it, labelled with the keys. Keys listed under `inputs`
come from the dataset (prompts, preference pairs) rather than from another call.

The order of calls matters in one place: calls of the same model run in the workflow's
topological order (ties broken by the order calls are listed), and that order is what the
augmented graph and the runtime follow.

`max_staleness: k` (default 0, synchronous) lets generation of iteration i use a rollout
model's weights from iteration i - k (planner.domain.augment says what it implies); it needs
a rollout model, a trained model with a generate call (rollout_models).
"""

from __future__ import annotations

from functools import cached_property
from numbers import Number
from typing import Any, Literal

import networkx as nx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from planner.domain.length_distribution import (
    MAX_TOKENS_PER_SEQUENCE,
    FixedLength,
    LengthDistribution,
    parse_length_distribution,
)
from planner.domain.modelspec import HeadKind, ModelSpec

CallKind = Literal["generate", "inference", "train"]

# Batch limit: RLHF iterations process hundreds to a few thousand sequences, so this leaves
# a wide margin while a stray digit is refused before it turns into an estimate of years
# (the limit of tokens per sequence, MAX_TOKENS_PER_SEQUENCE, is length_distribution's).
MAX_SEQS_PER_ITERATION = 1_048_576
LENGTH_FIELDS = ("prompt_len", "gen_len")
Algorithm = Literal["ppo", "grpo", "remax", "dpo", "rloo", "custom"]
# Largest staleness bound a workflow may allow. Published asynchronous trainers run 1 to 8
# (verl's one-step off-policy trainer: 1; AReaL's max_head_offpolicyness, its paper's sweeps
# up to 8); each unit of staleness adds two simulated iterations (costmodel/simulator.py) and
# keeps samples of older weights, so a larger bound is refused rather than silently priced.
MAX_STALENESS = 8
# The decoupled objective's cap on a stale token's behaviour importance weight, min(pi_prox /
# pi_behav, cap) (runtime/algorithms/common.py; exported to AReaL, frameworks/areal_export.py).
# AReaL v1.0.4 (areal/api/cli_args.py, RejectionSamplingConfig; a copy is in
# tests/frameworks/data/areal/cli_args.py): upper = 5.0 by default, the default of the
# behave_imp_weight_cap it replaced; its action "clamp" (truncation of the token weight to
# [0, upper]) is that min().
BEHAVIOUR_WEIGHT_CAP = 5.0


class ModelFunctionCall(BaseModel):
    """One node of the DFG."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    model: str = Field(min_length=1, description="model role, a key of the workflow's models")
    kind: CallKind
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    greedy: bool = Field(default=False, description="generate only: greedy decoding")


class ModelRole(BaseModel):
    """A model role of the workflow (actor, critic, ...) with its architecture and head."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: ModelSpec
    head: HeadKind


class BatchSpec(BaseModel):
    """Batch settings of one iteration.

    n_seqs: sequences processed by every call per iteration (for DPO, chosen plus rejected,
    so it must be even); prompt_len / gen_len: the longest prompt and generated (response)
    tokens per sequence, what shapes, memory and the runtime's limits use;
    prompt_lengths / gen_lengths: their distributions (planner/domain/length_distribution.py),
    a point mass at prompt_len / gen_len unless the file gives `gen_len: {mean: M, max: N}`
    or a list of buckets `[{len: N, weight: W}, ...]` (then gen_len is the largest length);
    ppo_minibatches: optimizer steps per train call; group_size: samples per prompt (GRPO,
    RLOO), so n_seqs / group_size prompts are drawn. A file's form of each length is what
    the batch writes back.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_seqs: int = Field(ge=1, le=MAX_SEQS_PER_ITERATION)
    prompt_len: int = Field(ge=1, le=MAX_TOKENS_PER_SEQUENCE)
    gen_len: int = Field(ge=1, le=MAX_TOKENS_PER_SEQUENCE)
    ppo_minibatches: int = Field(default=1, ge=1, le=MAX_SEQS_PER_ITERATION)
    group_size: int = Field(default=1, ge=1, le=MAX_SEQS_PER_ITERATION)
    _lengths: dict[str, LengthDistribution] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _length_distributions(cls, data: Any, handler) -> "BatchSpec":
        """A length given as {mean, max} or buckets becomes its maximum (the field) and its
        distribution (kept beside it); a number is a point mass (the field checks it)."""
        if not isinstance(data, dict):
            return handler(data)
        given = {key: parse_length_distribution(data[key], key) for key in LENGTH_FIELDS
                 if key in data and not isinstance(data[key], Number)}
        spec = handler({**data, **{key: dist.max_len for key, dist in given.items()}})
        spec._lengths = {key: given.get(key) or FixedLength(length=getattr(spec, key))
                         for key in LENGTH_FIELDS}
        return spec

    @field_serializer(*LENGTH_FIELDS)
    def _as_given(self, value: int, info: SerializationInfo) -> Any:
        return self._lengths[info.field_name].to_data()

    @property
    def prompt_lengths(self) -> LengthDistribution:
        return self._lengths["prompt_len"]

    @property
    def gen_lengths(self) -> LengthDistribution:
        return self._lengths["gen_len"]

    @model_validator(mode="after")
    def _check(self) -> "BatchSpec":
        if self.n_seqs % self.ppo_minibatches:
            raise ValueError(f"n_seqs {self.n_seqs} is not divisible by ppo_minibatches "
                             f"{self.ppo_minibatches}")
        if self.n_seqs % self.group_size:
            raise ValueError(f"n_seqs {self.n_seqs} is not divisible by group_size "
                             f"{self.group_size}")
        return self

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.gen_len


class Workflow(BaseModel):
    """A resolved workflow: calls, model roles with specs, batch settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    algorithm: Algorithm
    models: dict[str, ModelRole] = Field(min_length=1)
    batch: BatchSpec
    inputs: tuple[str, ...] = ("prompts",)
    calls: tuple[ModelFunctionCall, ...] = Field(min_length=1)
    max_staleness: int = Field(default=0, strict=True)

    @model_serializer(mode="wrap")
    def _without_default_staleness(self, handler: SerializerFunctionWrapHandler) -> Any:
        """A synchronous workflow (max_staleness 0) writes no max_staleness key, so plan
        files of synchronous workflows stay as they were."""
        data = handler(self)
        if isinstance(data, dict) and data.get("max_staleness") == 0:
            del data["max_staleness"]
        return data

    @field_validator("max_staleness")
    @classmethod
    def _check_staleness(cls, k: int, info: ValidationInfo) -> int:
        """0 <= k <= MAX_STALENESS, and k > 0 only with a rollout model to run stale."""
        if not 0 <= k <= MAX_STALENESS:
            raise ValueError(f"got {k}; valid: an integer from 0 (synchronous) to "
                             f"{MAX_STALENESS}")
        calls, algorithm = info.data.get("calls", ()), info.data.get("algorithm")
        if k > 0 and not _rollout_roles(info.data.get("models", {}), calls):
            raise ValueError(f"got {k}, but the {algorithm} workflow has no rollout model "
                             f"(a trained model with a generate call), so no generation "
                             f"can run on older weights; valid: 0")
        return k

    @model_validator(mode="after")
    def _check_graph(self) -> "Workflow":
        names = [c.name for c in self.calls]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"calls: duplicate call name(s) {duplicates}")
        producers: dict[str, str] = {}
        for call in self.calls:
            if call.model not in self.models:
                raise ValueError(f"calls: {call.name}: model role {call.model!r} is not in "
                                 f"models; valid: {sorted(self.models)}")
            if call.greedy and call.kind != "generate":
                raise ValueError(f"calls: {call.name}: greedy applies to generate calls only")
            for key in call.outputs:
                if key in producers or key in self.inputs:
                    first = producers.get(key, "the dataset inputs")
                    raise ValueError(f"calls: {call.name}: key {key!r} is already produced by "
                                     f"{first}; each key needs one producer")
                producers[key] = call.name
        for call in self.calls:
            for key in call.inputs:
                if key not in producers and key not in self.inputs:
                    raise ValueError(f"calls: {call.name}: nobody produces input key {key!r}; "
                                     f"produced keys: {sorted(producers)}, dataset inputs: "
                                     f"{list(self.inputs)}")
        graph = self._build_graph()
        if not nx.is_directed_acyclic_graph(graph):
            cycle = " -> ".join(src for src, _ in nx.find_cycle(graph))
            raise ValueError(f"calls: the workflow has a cycle ({cycle}); a workflow must be "
                             f"acyclic")
        if self.algorithm == "dpo" and self.batch.n_seqs % 2:
            raise ValueError(f"batch: n_seqs {self.batch.n_seqs} must be even for dpo "
                             f"(chosen + rejected pairs)")
        return self

    def _build_graph(self) -> nx.DiGraph:
        graph = nx.DiGraph()
        producers = {key: c.name for c in self.calls for key in c.outputs}
        for call in self.calls:
            graph.add_node(call.name, model=call.model, kind=call.kind)
        for call in self.calls:
            for key in call.inputs:
                if key in producers:
                    src = producers[key]
                    if graph.has_edge(src, call.name):
                        graph.edges[src, call.name]["keys"].append(key)
                    else:
                        graph.add_edge(src, call.name, keys=[key])
        return graph

    @cached_property
    def graph(self) -> nx.DiGraph:
        """The DFG: nodes are call names (attrs model, kind); edges carry `keys`."""
        return self._build_graph()

    @cached_property
    def call_order(self) -> tuple[str, ...]:
        """Topological order of calls, ties broken by the order they are listed."""
        position = {c.name: i for i, c in enumerate(self.calls)}
        return tuple(nx.lexicographical_topological_sort(self.graph, key=position.__getitem__))

    @cached_property
    def call_by_name(self) -> dict[str, ModelFunctionCall]:
        return {c.name: c for c in self.calls}

    def calls_of_model(self, role: str) -> list[str]:
        """Calls of one model role in execution order."""
        return [n for n in self.call_order if self.call_by_name[n].model == role]

    def trained_models(self) -> set[str]:
        return {c.model for c in self.calls if c.kind == "train"}

    def rollout_models(self) -> tuple[str, ...]:
        """Trained model roles with at least one generate call, in the order of `models`
        (planner.domain.augment.rollout_models)."""
        return _rollout_roles(self.models, self.calls)


def _rollout_roles(models: dict, calls: tuple[ModelFunctionCall, ...]) -> tuple[str, ...]:
    """Roles of `models` (in their order) with a train call and a generate call."""
    trained = {c.model for c in calls if c.kind == "train"}
    generating = {c.model for c in calls if c.kind == "generate"}
    return tuple(role for role in models if role in trained and role in generating)
