"""Generation micro-batches as a framework's vLLM / SGLang engines run them: one rule for
every importer (and the plan spaces that must read back as themselves).

An engine holds at most
    rows = min(concurrency, kv_pool_rows)
sequences at once, where `concurrency` is the engine's scheduler limit (vLLM's
max_num_seqs: verl's rollout.max_num_seqs, ROLL's strategy_config.max_num_seqs, vLLM's
default for OpenRLHF's engines; AReaL's rollout.max_concurrent_rollouts prompts x
n_samples, over its servers) and
    kv_pool_rows = floor(kv_pool_bytes / kv_row_bytes)
    kv_pool_bytes = memory_fraction x device memory - the engine rank's weights
    kv_row_bytes = one sequence's KV cache at full length (prompt + generation) on one
                   engine rank: costmodel.memory.kv_cache_bytes for one row, all layers
                   (engines run pp 1), the rank's kv width, compute dtype
so that what we price (the KV cache of one micro-batch, costmodel/memory.py) is what the
engine can hold. An engine's rows are priced as ceil(rows per engine / rows) static
micro-batches, each running to its longest row (an upper bound on decode time where the
engine's continuous batching refills finished rows).

Sources for the pool:
- vLLM (vllm-project/vllm, vllm/v1/worker/gpu_worker.py, Worker.init_device and
  determine_available_memory): requested_memory = total device memory x
  gpu_memory_utilization; the KV cache gets what that leaves after the non-KV memory
  (the weights, the profiled peak activations of a dummy forward pass, non-torch
  allocations). We leave out the profiled activations and non-torch memory, so
  kv_pool_rows is an upper bound (the micro-batch count a lower one).
- SGLang (sgl-project/sglang, python/sglang/srt/model_executor/model_runner.py,
  profile_max_num_token): the KV pool is what mem_fraction_static x device memory leaves
  after the weights (mem_fraction_static: "the fraction of the memory used for static
  allocation (model weights and KV cache memory pool)", server_args.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from costmodel.memory import kv_cache_bytes, weight_bytes_per_device
from planner.domain.cluster import ClusterSpec
from planner.domain.workflow import Workflow

GIB = 1024 ** 3


@dataclass(frozen=True)
class EngineBatching:
    """How one engine call's rows are batched (module docstring); `kv_pool_rows` is 0 when
    the weights leave no room for one row."""

    call: str
    rows_per_engine: int
    concurrency: float
    concurrency_key: str
    memory_fraction: float
    memory_key: str
    memory_bytes: float
    weights_bytes: float
    kv_row_bytes: float

    @property
    def kv_pool_bytes(self) -> float:
        """memory_fraction x device memory - the engine rank's weights."""
        return self.memory_fraction * self.memory_bytes - self.weights_bytes

    @property
    def kv_pool_rows(self) -> int:
        return max(0, math.floor(self.kv_pool_bytes / self.kv_row_bytes))

    @property
    def rows_at_once(self) -> int:
        """Rows one engine holds at once: min(concurrency, KV-pool rows), at least 1."""
        return max(1, min(math.floor(self.concurrency), self.kv_pool_rows))

    @property
    def micro_batches(self) -> int:
        return micro_batches_for(self.rows_per_engine, self.rows_at_once)

    @property
    def kv_binds(self) -> bool:
        return self.kv_pool_rows < self.concurrency

    def problem(self) -> str | None:
        """Why the engine cannot hold one row, or None."""
        if self.kv_pool_rows >= 1:
            return None
        return (f"{self.memory_key} {self.memory_fraction:g} leaves a KV pool of "
                f"{self.kv_pool_bytes / GIB:.2f} GiB after the weights, less than one "
                f"sequence's KV cache ({self.kv_row_bytes / GIB:.3f} GiB)")

    def note(self) -> str:
        """The import note: what limits the engine and the micro-batches priced."""
        return (f"{self.call}: an engine holds at most {self.rows_at_once} rows at once "
                f"({self.concurrency_key} {self.concurrency:g}, KV pool {self.kv_pool_rows} "
                f"rows: {self.memory_key} {self.memory_fraction:g} x "
                f"{self.memory_bytes / GIB:.1f} GiB - {self.weights_bytes / GIB:.2f} GiB "
                f"weights = {self.kv_pool_bytes / GIB:.2f} GiB at "
                f"{self.kv_row_bytes / 2 ** 20:.1f} MiB a full-length row; "
                f"{'the KV pool' if self.kv_binds else self.concurrency_key} binds): its "
                f"{self.rows_per_engine} rows priced as {self.micro_batches} static "
                f"micro-batch(es), each running to its longest row (an upper bound where "
                f"continuous batching refills finished rows)")


def micro_batches_for(rows_per_engine: int, rows_at_once: int) -> int:
    """ceil(rows per engine / rows held at once). At most the rows per engine, so dp x
    micro_batches <= n_seqs, as planner.domain.layout.layout_problem asks."""
    return math.ceil(rows_per_engine / rows_at_once)


def rows_per_engine(n_seqs: int, dp: int) -> int:
    """Sequences the busiest of `dp` engines gets (the batch is split evenly)."""
    return math.ceil(n_seqs / dp)


def concurrency_for(n_seqs: int, dp: int, micro_batches: int) -> int | None:
    """The concurrency limit (max_num_seqs) that splits each of `dp` engines' rows into
    `micro_batches` static micro-batches (ceil(rows / limit), micro_batches_for), or None
    when no limit does: what an exported config writes so that it reads back as itself."""
    rows = rows_per_engine(n_seqs, dp)
    limit = micro_batches_for(rows, micro_batches)
    return limit if micro_batches_for(rows, limit) == micro_batches else None


def kv_row_bytes(workflow: Workflow, call: str, tp: int, dtype_bytes: int) -> float:
    """One full-length sequence's KV cache on one engine rank (costmodel.memory's
    formula for one row, every layer: engines run pp 1)."""
    spec = workflow.models[workflow.call_by_name[call].model].spec
    return kv_cache_bytes(spec, tp, spec.num_layers, 1, workflow.batch.seq_len, dtype_bytes)


def engine_weight_bytes(workflow: Workflow, call: str, tp: int, dtype_bytes: int) -> float:
    """The largest tp rank's weights of `call`'s model (pp 1), compute dtype
    (costmodel.memory.weight_bytes_per_device)."""
    role = workflow.models[workflow.call_by_name[call].model]
    return float(weight_bytes_per_device(role.spec, role.head, tp, 1, dtype_bytes).max())


def engine_batching(workflow: Workflow, call: str, cluster: ClusterSpec, devices: tuple[int, ...],
                    dp: int, tp: int, concurrency: float, concurrency_key: str,
                    memory_fraction: float, memory_key: str) -> EngineBatching:
    """The batching of generate call `call` on `dp` engines of `tp` GPUs (module docstring)."""
    hardware = cluster.hardware_of(devices[0])
    dtype = hardware.compute_dtype_bytes
    return EngineBatching(call=call, rows_per_engine=rows_per_engine(workflow.batch.n_seqs, dp),
                          concurrency=concurrency, concurrency_key=concurrency_key,
                          memory_fraction=memory_fraction, memory_key=memory_key,
                          memory_bytes=hardware.memory_bytes,
                          weights_bytes=engine_weight_bytes(workflow, call, tp, dtype),
                          kv_row_bytes=kv_row_bytes(workflow, call, tp, dtype))


def kv_pool_rows_of(workflow: Workflow, call: str, cluster: ClusterSpec,
                    devices: tuple[int, ...], dp: int, tp: int, memory_fraction: float) -> int:
    """KV-pool rows of `call`'s engines (for plan spaces that keep only the micro-batch
    counts an engine can hold)."""
    return engine_batching(workflow, call, cluster, devices, dp, tp, math.inf, "",
                           memory_fraction, "").kv_pool_rows
