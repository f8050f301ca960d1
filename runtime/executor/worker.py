"""One rank of `plan run`: create groups and models, then walk the plan's steps.

`execute(rank, world_size, post, plan_data, config)` is what every rank runs (spawned by
runtime.executor.launcher, or under torchrun through runtime.executor.torchrun).
Models start from the seed, or from an HF checkpoint for the roles of config.load; after
the iterations config.saves_after names, the trained roles are written to config.save as HF
checkpoints (runtime.checkpoint_save), outside the timed steps.
It posts one message per iteration, {"rank", "iteration", "records", "metrics"}, and
returns {"rank", "weights"} (full-tensor slices of the models' home copies when
config.return_weights).

Test hook: RLHF_PLAN_FAIL_AT="RANK:STEP" (e.g. "2:1/actor_train") makes that rank exit with
os._exit(FAIL_EXIT_CODE) when it reaches the step, as if killed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from planner.domain.placement import Placement
from planner.domain.plan import Plan, plan_from_mapping
from planner.sharding.param_shards import model_params, shard_slice
from planner.sharding.transfer_schedule import param_schedule
from runtime.algorithms import ALGORITHMS
from runtime.checkpoint_save import save_hf_checkpoint
from runtime.device import DeviceConfig, rank_device_config
from runtime.executor import calls
from runtime.executor.config import RunConfig, parse_reward
from runtime.executor.data import DataStore, run_transfer
from runtime.executor.dataset import Dataset
from runtime.executor.measure import PeakMemory
from runtime.executor.realloc import empty_shards, holding, reallocate
from runtime.executor.steps import (
    CallStep,
    ReallocStep,
    TransferStep,
    build_steps,
    distinct_layouts,
    home_call,
    initial_placements,
    model_homes,
)
from runtime.model import ParallelModel
from runtime.optimizer import Adam, AdamConfig
from runtime.parallel_context import create_contexts

FAIL_ENV = "RLHF_PLAN_FAIL_AT"
FAIL_EXIT_CODE = 17
_LM_SEED_OFFSET, _VALUE_SEED_OFFSET = 0, 1  # actor = ref init; critic = reward init


def reward_roles(plan: Plan) -> set[str]:
    return {c.model for c in plan.workflow.calls if set(c.outputs) & set(calls.REWARD_KEYS)}


class RankState:
    """Models, optimizers, groups and data of this rank."""

    def __init__(self, plan: Plan, config: RunConfig, rank: int, device: DeviceConfig):
        self.plan, self.config, self.rank, self.device = plan, config, rank, device
        wf = plan.workflow
        self.placements = distinct_layouts(wf, plan.executions)
        self.ctxs = dict(zip(self.placements, create_contexts(self.placements, device.backend)))
        self.homes = model_homes(wf, plan.executions)
        self.reward = parse_reward(config.reward)
        skip = reward_roles(plan) if self.reward is not None else set()
        self.models: dict[str, dict[tuple, ParallelModel]] = {r: {} for r in wf.models}
        # role -> its first call's copy, made by that call's first step (steps.py)
        self.unmade: dict[str, Placement] = {}
        for role, placements in initial_placements(wf, plan.executions).items():
            if role in skip:
                continue
            home, *first = placements
            self.make_copy(role, home)
            if first:
                self.unmade[role] = first[0]
        self.optimizers = {}
        for role in wf.trained_models():
            home = self.models[role].get(self.homes[role])
            if home is not None:
                # ZeRO-1 when the home (train) call's execution says so, as it is priced
                train = plan.executions[home_call(wf, role)]
                self.optimizers[role] = Adam(home.params, AdamConfig(lr=config.lr), home.ctx,
                                             shard_over_dp=train.shard_optimizer_over_dp,
                                             num_kv_heads=home.spec.num_kv_heads)
        self.store = DataStore()
        self.dataset = Dataset(wf.batch, next(iter(wf.models.values())).spec.vocab_size,
                               config.seed, wf.algorithm == "dpo",
                               config.prompts and os.path.abspath(config.prompts))
        self.pending_sends: list = []

    def make_copy(self, role: str, placement: Placement) -> None:
        """`role`'s model on `placement` from the seed or its checkpoint (config.load); none
        on a rank outside the placement."""
        ctx = self.ctxs[placement]
        if ctx is None:
            return
        role_spec = self.plan.workflow.models[role]
        offset = _VALUE_SEED_OFFSET if role_spec.head == "value" else _LM_SEED_OFFSET
        seed = self.config.seed * 2 + offset
        checkpoint = dict(self.config.load).get(role)
        self.models[role][placement] = (
            ParallelModel.from_seed(role_spec.spec, role_spec.head, ctx, seed, self.device)
            if checkpoint is None else
            ParallelModel.from_hf(Path(checkpoint), role_spec.spec, role_spec.head, ctx,
                                  self.device, seed))

    def run_call(self, step: CallStep) -> tuple[int, dict[str, float], int]:
        """(bytes sent, metrics to report, the bytes this rank's MoE all-to-alls sent: the
        model's runtime.comm.AllToAllLedger over the call, 0 for a dense model)."""
        wf, ex = self.plan.workflow, self.plan.executions[step.call]
        call = wf.call_by_name[step.call]
        if self.unmade.get(call.model) == ex.placement:
            self.make_copy(call.model, self.unmade.pop(call.model))
        env = calls.CallEnv(
            call=call, execution=ex, ctx=self.ctxs[ex.placement],
            model=self.models[call.model].get(ex.placement), batch=wf.batch,
            iteration=step.iteration, store=self.store, dataset=self.dataset,
            seed=self.config.seed, temperature=self.config.temperature, reward=self.reward,
            algorithm=ALGORITHMS[wf.algorithm], algo_config=self.config.algo,
            optimizer=self.optimizers.get(call.model), group_size=wf.batch.group_size)
        if env.model is None and not (self.reward is not None and call.model in
                                      reward_roles(self.plan)):
            raise RuntimeError(f"rank {self.rank}: no copy of {call.model} on the placement "
                               f"of {step.call}")
        traffic_before = env.model.moe_traffic.bytes if env.model is not None else 0
        metrics = calls.HANDLERS[call.kind](env)
        all_to_all = env.model.moe_traffic.bytes - traffic_before if env.model is not None else 0
        report = self.rank == ex.devices[0]
        return 0, metrics if report else {}, all_to_all

    def run_realloc(self, step: ReallocStep) -> int:
        wf, move = self.plan.workflow, step.move
        role = wf.models[move.model]
        src_pl = self.plan.executions[move.src_call].placement
        dst_pl = self.plan.executions[move.dst_call].placement
        if move.model in reward_roles(self.plan) and self.reward is not None:
            return 0  # programmatic reward: no model to move
        schedule = param_schedule(role.spec, role.head, src_pl, dst_pl,
                                  self.plan.cluster.device_node)
        copies = self.models[move.model]
        src = (src_pl, copies[src_pl].params) if src_pl in copies else None
        dst = None
        if self.ctxs[dst_pl] is not None:
            if dst_pl not in copies:
                params = empty_shards(role.spec, role.head, dst_pl, holding(dst_pl, self.rank),
                                      self.device.dtype, self.device.device)
                copies[dst_pl] = ParallelModel(role.spec, role.head, self.ctxs[dst_pl],
                                               self.device, params)
            dst = (dst_pl, copies[dst_pl].params)
        sent = reallocate(schedule, role.spec, role.head, self.rank, src, dst)
        if src_pl != self.homes[move.model]:
            copies.pop(src_pl, None)  # a transient copy lives until it has been moved on
        return sent

    def run_step(self, step) -> tuple[int, dict[str, float], int]:
        """(bytes sent, metrics, MoE all-to-all bytes sent) of one step on this rank."""
        if isinstance(step, CallStep):
            return self.run_call(step)
        if isinstance(step, ReallocStep):
            return self.run_realloc(step), {}, 0
        return run_transfer(step, self.store, self.rank, self.plan.workflow.batch,
                            self.device.device, self.pending_sends), {}, 0

    def finish_iteration(self, iteration: int) -> None:
        for work, _ in self.pending_sends:
            work.wait()
        self.pending_sends.clear()
        self.store.drop(iteration)

    def save_trained(self, directory: Path) -> None:
        """Write every trained role's home copy to directory/<role>/ (runtime.checkpoint_save;
        the same role order on every rank, as its gathers are collective)."""
        for role in sorted(self.plan.workflow.trained_models()):
            model = self.models[role].get(self.homes[role])
            if model is not None:
                save_hf_checkpoint(model, directory / role)

    def home_weights(self) -> dict[str, dict[str, tuple]]:
        """{role: {name: (ranges, tensor)}} of this rank's home shards: the first replica's,
        and a MoE model's routed experts from the first ep group (dp ranks below ep), which
        hold every expert slice once."""
        out = {}
        for role, copies in self.models.items():
            model = copies.get(self.homes[role])
            if model is None:
                continue
            ctx = model.ctx
            infos = {p.name: p for p in model_params(model.spec, model.head, ctx.pp)}
            mine = {n: t for n, t in model.params.items()
                    if ctx.coord.dp_rank == 0 or (infos[n].is_expert
                                                  and ctx.coord.dp_rank < ctx.ep)}
            if mine:
                out[role] = {n: (shard_slice(model.spec, infos[n], ctx.coord.tp_rank, ctx.tp,
                                             ctx.ep_rank, ctx.ep),
                                 t.detach().float().cpu().clone())
                             for n, t in mine.items()}
        return out


def _step_kind(step) -> str:
    return {CallStep: "call", ReallocStep: "realloc", TransferStep: "transfer"}[type(step)]


def _label(step) -> str:
    if isinstance(step, CallStep):
        return step.call
    if isinstance(step, ReallocStep):
        return step.move.name
    return step.edge


def _maybe_fail(rank: int, step) -> None:
    target = os.environ.get(FAIL_ENV)
    if target and target == f"{rank}:{step.name}":
        print(f"rank {rank}: {FAIL_ENV} reached at {step.name}; exiting", file=sys.stderr,
              flush=True)
        os._exit(FAIL_EXIT_CODE)


def execute(rank: int, world_size: int, post: Callable[[dict], None], plan_data: dict,
            config: RunConfig, local_rank: int | None = None) -> dict[str, Any]:
    """Run the plan's iterations on this rank (module docstring).

    The launchers have checked the plan and this machine (launcher.check_before_start), so a
    mismatch here is a bug, not bad input. The device, dtype and backend are the plan's
    (runtime.device); `local_rank` (default: `rank`, a local run) picks the GPU.
    """
    plan = plan_from_mapping(plan_data, "plan")
    if world_size != plan.cluster.num_devices:
        raise RuntimeError(f"world size {world_size}, plan cluster has "
                           f"{plan.cluster.num_devices} devices")
    device = rank_device_config(plan.cluster, rank, rank if local_rank is None else local_rank)
    torch.manual_seed(config.seed)
    state = RankState(plan, config, rank, device)
    steps = build_steps(plan.workflow, plan.executions, config.iterations,
                        plan.cluster.device_node)
    dist.barrier()
    for iteration in range(config.iterations):
        records, metrics = [], {}
        mine = [s for s in steps if getattr(s, "runs_in", s.iteration) == iteration]
        for step in mine:
            if rank not in step.devices:
                continue
            _maybe_fail(rank, step)
            # the CPU meter slows the step: only the first iteration is metered, and the
            # trace's times come from the later ones (runtime/executor/trace.py)
            with PeakMemory(device.device, count_tensors=iteration == 0) as memory:
                start = device.clock_s()
                sent, step_metrics, all_to_all = state.run_step(step)
                end = device.clock_s()
            metrics.update(step_metrics)
            records.append({"node": step.name, "kind": _step_kind(step), "label": _label(step),
                            "iteration": iteration, "start": start, "end": end,
                            "bytes": sent, "all_to_all_bytes": all_to_all,
                            "peak_bytes": memory.peak_bytes})
        state.finish_iteration(iteration)
        post({"rank": rank, "iteration": iteration, "records": records, "metrics": metrics,
              "memory_source": PeakMemory(device.device).source})
        if config.saves_after(iteration):
            state.save_trained(Path(config.save))
    dist.barrier()
    return {"rank": rank, "weights": state.home_weights() if config.return_weights else {}}
