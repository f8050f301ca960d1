"""The cost model against published GPU measurements (../shared/gpu-anchors.md).

Every case of the anchors file is rebuilt as a cluster, a workflow and the published layout
as executions, and priced by the same path `plan estimate` uses (costmodel.simulator
.simulate over costmodel.plan_cost); the all-reduce cases price the collective of the
group the layout forms (costmodel.call_geometry.geometry -> costmodel.comm), as a train
call's dp sync or tp all-reduce would. Prints, per case, the published seconds, our
estimate and their ratio (estimate / published), then per kind the median and range of
the ratios. Nothing is fitted to a case: the constants keep their own sources.

w5 (a whole verl GRPO step) is printed per phase beside what our model leaves out (FSDP
parameter gathering, vLLM's scheduler and sampling overheads, the ZeRO-3 communication of
a colocated FSDP actor): a Megatron-style 3D runtime does not pay those, so it is shown,
not counted in the component target (0.87-1.15 on t1, g1, g2, i1, n1, n2, n3).

    .venv/bin/python benchmarks/published_anchors.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from costmodel import comm  # noqa: E402
from costmodel.call_cost import call_time  # noqa: E402
from costmodel.call_geometry import geometry  # noqa: E402
from costmodel.simulator import simulate  # noqa: E402
from planner.domain.cluster import ClusterSpec, NodeGroupFile, build_cluster  # noqa: E402
from planner.domain.layout import Execution  # noqa: E402
from planner.domain.modelspec import PRESETS  # noqa: E402
from planner.domain.workflow import (  # noqa: E402
    BatchSpec,
    ModelFunctionCall,
    ModelRole,
    Workflow,
)

GIB = 1024**3
KIB = 1024
TARGET = (0.87, 1.15)


@dataclass(frozen=True)
class CaseResult:
    case: str
    kind: str
    published_s: float
    estimated_s: float
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.estimated_s / self.published_s


def cluster_of(nodes: int, devices_per_node: int, device: str) -> ClusterSpec:
    return build_cluster(f"{device}x{nodes * devices_per_node}",
                         [NodeGroupFile(nodes=nodes, devices_per_node=devices_per_node,
                                        device=device)])


def one_call_seconds(model: str, kind: str, batch: BatchSpec, cluster: ClusterSpec,
                     execution: Execution, outputs: tuple[str, ...] = ()) -> float:
    """Iteration time of a workflow of one call of `kind` on `execution` (the simulator)."""
    call = ModelFunctionCall(name=f"actor_{kind}", model="actor", kind=kind,
                             inputs=("prompts",), outputs=outputs)
    workflow = Workflow(algorithm="custom", batch=batch, calls=(call,),
                        models={"actor": ModelRole(spec=PRESETS[model], head="lm")})
    estimate = simulate(workflow, cluster, {call.name: execution}, num_iterations=2)
    return estimate.iteration_s


def everything(cluster: ClusterSpec, **layout) -> Execution:
    return Execution(devices=tuple(range(cluster.num_devices)), **layout)


def training_step_t1() -> CaseResult:
    """NeMo 24.09 Llama-3.1-8B on 8 H100: GBS 128 x 8192 tokens, TP1 PP1 CP2 MBS1 GA32,
    read as dp 8 with 16 micro-batches of one sequence per replica; the distributed
    optimizer is ZeRO-1; NeMo's 8B recipe recomputes no activations (CP2 halves them)."""
    cluster = cluster_of(1, 8, "h100-sxm-80gb")
    batch = BatchSpec(n_seqs=128, prompt_len=4096, gen_len=4096)
    ex = everything(cluster, dp=8, tp=1, pp=1, micro_batches=16,
                    shard_optimizer_over_dp=True, recompute="none")
    seconds = one_call_seconds("llama3-8b", "train", batch, cluster, ex)
    return CaseResult("t1", "training step", 12.91, seconds)


def generation(case: str, n_seqs: int, gen_len: int, published_s: float) -> CaseResult:
    """TensorRT-LLM v0.6.1 peak throughput, LLaMA-2-7B FP16 on one A100: one static batch,
    128 prompt tokens, exactly `gen_len` output tokens, context phase included."""
    cluster = cluster_of(1, 1, "a100-sxm-80gb")
    batch = BatchSpec(n_seqs=n_seqs, prompt_len=128, gen_len=gen_len)
    seconds = one_call_seconds("llama-7b", "generate", batch, cluster,
                               everything(cluster, dp=1, tp=1, pp=1), outputs=("seqs",))
    return CaseResult(case, "generation", published_s, seconds)


def prefill_i1() -> CaseResult:
    """TensorRT-LLM first-token latency, LLaMA-2-7B FP16, one A100, batch 1, 2048 input
    tokens: one forward pass of 2048 tokens (an inference call of prompt 2047 + 1)."""
    cluster = cluster_of(1, 1, "a100-sxm-80gb")
    batch = BatchSpec(n_seqs=1, prompt_len=2047, gen_len=1)
    seconds = one_call_seconds("llama-7b", "inference", batch, cluster,
                               everything(cluster, dp=1, tp=1, pp=1))
    return CaseResult("i1", "prefill", 0.133, seconds)


def allreduce(case: str, nodes: int, message_bytes: float, published_s: float) -> CaseResult:
    """nccl-tests all_reduce_perf over every GPU of `nodes` HGX H100 nodes: the dp group of
    a dp = all-devices layout, priced as a train call prices its gradient all-reduce."""
    cluster = cluster_of(nodes, 8, "h100-sxm-80gb")
    ex = everything(cluster, dp=cluster.num_devices, tp=1, pp=1)
    link = geometry(ex, PRESETS["llama-7b"].num_layers, cluster).dp_link[0]
    seconds = comm.allreduce_time_s(message_bytes, cluster.num_devices, link)
    return CaseResult(case, "all-reduce", published_s, seconds)


def component_cases() -> list[CaseResult]:
    return [
        training_step_t1(),
        generation("g1", 384, 128, 384 * 128 / 5586),
        generation("g2", 60, 2048, 60 * 2048 / 1928),
        prefill_i1(),
        allreduce("n1", 1, 1 * GIB, 4029e-6),
        allreduce("n2", 1, 512 * KIB, 20.7e-6),
        allreduce("n3", 2, 16 * GIB, 2 * 15 / 16 * 16 * GIB / 470e9),
    ]


# verl GRPO step on Qwen2.5-7B (w5): the published phases, seconds (wandb run 6icl7pbz).
W5_PUBLISHED_S = {"generation": 33.0, "old-logprob pass": 8.3, "ref": 8.7,
                  "actor update": 29.1, "step": 80.3}
# What a verl step pays that a Megatron-style 3D runtime (ours) does not, per phase.
W5_LEFT_OUT = {
    "generation": "vLLM continuous batching refills finished rows (we price static "
                  "micro-batches running to their longest row) and its scheduler, sampling "
                  "and FSDP->vLLM weight resharding",
    "old-logprob pass": "FSDP all-gathers the actor's parameters layer by layer (ZeRO-3)",
    "ref": "the ref model is offloaded to CPU (param_offload=True) and gathered by FSDP",
    "actor update": "FSDP (ZeRO-3) gathers parameters in forward and backward, "
                    "reduce-scatters gradients",
    "step": "plus reward function, advantage computation and Ray orchestration",
}


def grpo_step_w5() -> list[tuple[str, float, float]]:
    """verl examples/grpo_trainer/run_qwen2-7b.sh with max_response_length 1024 on one node of
    8 H100, every call on all 8 GPUs: vLLM rollout at tensor_model_parallel_size 2 (dp 4,
    four static micro-batches of 320 rows), the old logprobs recomputed by the generate call
    (our runtime's `logprobs` phase), ref and actor at dp 8 with micro-batches of 16
    sequences per GPU (log_prob_micro_batch_size / ppo_micro_batch_size 128 over 8 GPUs),
    gradient checkpointing (full recomputation), 4 minibatches; ZeRO-1 stands for FSDP.
    Returns (phase, published, estimated)."""
    cluster = cluster_of(1, 8, "h100-sxm-80gb")
    batch = BatchSpec.model_validate({
        "n_seqs": 5120, "group_size": 5, "ppo_minibatches": 4,
        "prompt_len": {"mean": 93, "max": 173}, "gen_len": {"mean": 232, "max": 1024}})
    rollout = ("seqs", "logprobs", "masks")
    calls = (
        ModelFunctionCall(name="actor_gen", model="actor", kind="generate",
                          inputs=("prompts",), outputs=rollout),
        ModelFunctionCall(name="ref_inf", model="ref", kind="inference",
                          inputs=("seqs", "masks"), outputs=("ref_logprobs",)),
        ModelFunctionCall(name="actor_train", model="actor", kind="train",
                          inputs=rollout + ("ref_logprobs",)),
    )
    role = ModelRole(spec=PRESETS["qwen2.5-7b"], head="lm")
    workflow = Workflow(algorithm="custom", batch=batch, calls=calls,
                        models={"actor": role, "ref": role})
    executions = {
        "actor_gen": everything(cluster, dp=4, tp=2, pp=1, micro_batches=4),
        "ref_inf": everything(cluster, dp=8, tp=1, pp=1, micro_batches=40),
        "actor_train": everything(cluster, dp=8, tp=1, pp=1, micro_batches=10,
                                  recompute="full"),
    }
    phases = {name: call_time(workflow.call_by_name[name], role, ex, batch, cluster).phases_s
              for name, ex in executions.items()}
    gen = phases["actor_gen"]
    step = simulate(workflow, cluster, executions, num_iterations=2).iteration_s
    estimated = {
        "generation": sum(v for k, v in gen.items() if k != "logprobs"),
        "old-logprob pass": gen["logprobs"],
        "ref": sum(phases["ref_inf"].values()),
        "actor update": sum(phases["actor_train"].values()),
        "step": step,
    }
    return [(phase, W5_PUBLISHED_S[phase], estimated[phase]) for phase in W5_PUBLISHED_S]


def print_w5(rows: list[tuple[str, float, float]]) -> None:
    print("\nw5: verl GRPO step, Qwen2.5-7B, 8 H100 (shown per phase, not a target)")
    print(f"{'phase':<17} {'published s':>12} {'estimated s':>12} {'ratio':>7}  left out of our model")
    for phase, published, estimated in rows:
        print(f"{phase:<17} {published:>12.1f} {estimated:>12.2f} {estimated / published:>7.3f}"
              f"  {W5_LEFT_OUT[phase]}")


def print_table(results: list[CaseResult]) -> None:
    print(f"{'case':<5} {'kind':<14} {'published s':>12} {'estimated s':>12} {'ratio':>7}")
    for r in results:
        mark = "" if TARGET[0] <= r.ratio <= TARGET[1] else "  (outside 0.87-1.15)"
        print(f"{r.case:<5} {r.kind:<14} {r.published_s:>12.6g} {r.estimated_s:>12.6g} "
              f"{r.ratio:>7.3f}{mark}")
    print()
    print(f"{'kind':<14} {'cases':>5} {'median':>7} {'range':>15}")
    kinds = sorted({r.kind for r in results}, key=[r.kind for r in results].index)
    for kind in kinds:
        ratios = [r.ratio for r in results if r.kind == kind]
        print(f"{kind:<14} {len(ratios):>5} {statistics.median(ratios):>7.3f} "
              f"{min(ratios):>7.3f}-{max(ratios):<7.3f}")
    inside = sum(TARGET[0] <= r.ratio <= TARGET[1] for r in results)
    print(f"\n{inside} of {len(results)} component cases within {TARGET[0]}-{TARGET[1]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    results = component_cases()
    print_table(results)
    w5 = grpo_step_w5()
    print_w5(w5)
    if args.json:
        data = {"components": [{**r.__dict__, "ratio": r.ratio} for r in results],
                "w5": [{"phase": p, "published_s": pub, "estimated_s": est,
                        "ratio": est / pub} for p, pub, est in w5]}
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
