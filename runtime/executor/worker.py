"""One rank of `plan run`: create groups and models, then walk the plan's steps.

`execute(rank, world_size, post, plan_data, config)` is what every rank runs (spawned by
runtime.executor.launcher, or under torchrun through runtime.executor.torchrun).
Models start from the seed, or from an HF checkpoint for the roles of config.load; after
the iterations config.saves_after names, the trained roles are written to config.save as HF
checkpoints (runtime.checkpoint_save), outside the timed steps.
With staleness s >= 1 (Plan.staleness) a rollout model's generate calls run on its rollout
copy, made at start on their placement (version 0), which push steps update
(runtime/executor/steps.py, weight_push.py); its train call first recomputes the proximal
logprobs with the training copy (runtime/executor/calls.py); each generate call's record
carries the version it read.
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

from planner.domain.augment import WeightPush, weight_pushes
from planner.domain.placement import Placement
from planner.domain.plan import Plan, plan_from_mapping
from planner.sharding.param_shards import model_params, shard_slice
from planner.sharding.transfer_schedule import param_schedule
from runtime.algorithms import ALGORITHMS
from runtime.checkpoint_save import save_hf_checkpoint
from runtime.device import DeviceConfig, rank_device_config
from runtime.executor import calls
from runtime.executor.config import RunConfig, parse_reward
from runtime.executor.data import DataStore, post_transfer_sends, receive_transfer
from runtime.executor.dataset import Dataset
from runtime.executor.measure import PeakMemory
from runtime.executor.realloc import empty_shards, holding, reallocate
from runtime.executor.steps import (
    CallStep,
    PushStep,
    ReallocStep,
    TransferStep,
    build_steps,
    distinct_layouts,
    home_call,
    initial_placements,
    model_homes,
)
from runtime.executor.weight_push import PostedPush, finish_push, post_push, push_now
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
        self.staleness = plan.staleness
        self.placements = distinct_layouts(wf, plan.executions)
        self.ctxs = dict(zip(self.placements, create_contexts(self.placements, device.backend)))
        self.homes = model_homes(wf, plan.executions)
        self.reward = parse_reward(config.reward)
        skip = reward_roles(plan) if self.reward is not None else set()
        self.models: dict[str, dict[tuple, ParallelModel]] = {r: {} for r in wf.models}
        # role -> its first call's copy, made by that call's first step (steps.py)
        self.unmade: dict[str, Placement] = {}
        for role, placements in initial_placements(wf, plan.executions,
                                                   self.staleness).items():
            if role in skip:
                continue
            home, *first = placements
            self.make_copy(role, home)
            if first:
                self.unmade[role] = first[0]
        # staleness >= 1: role -> its rollout copy on this rank (version 0 at start), the
        # version it holds, and the push each rollout model's train call starts
        self.rollout: dict[str, ParallelModel] = {}
        self.versions: dict[str, int] = {}
        self.push_after: dict[str, WeightPush] = {}
        self.posted: dict[tuple[str, int], PostedPush] = {}
        for push in weight_pushes(wf, self.staleness):
            model = self.new_model(push.model, plan.executions[push.gen_call].placement)
            if model is not None:
                self.rollout[push.model] = model
            self.versions[push.model] = 0
            self.push_after[push.train_call] = push
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
        self.pending_sends: dict[int, list] = {}  # iteration -> (work, buffer) of its sends
        # (iteration, call) -> the transfers out of it, whose sends post after it (index_steps)
        self.transfers_from: dict[tuple[int, str], list[TransferStep]] = {}
        self.posted_bytes: dict[str, int] = {}     # transfer name -> bytes this rank posted

    def index_steps(self, steps: list) -> None:
        """Know, for each call of the run, the transfers out of it (post_sends_after)."""
        for step in steps:
            if isinstance(step, TransferStep):
                self.transfers_from.setdefault((step.iteration, step.src_call), []).append(step)

    def make_copy(self, role: str, placement: Placement) -> None:
        """`role`'s (training) copy on `placement` (new_model); none on a rank outside it."""
        model = self.new_model(role, placement)
        if model is not None:
            self.models[role][placement] = model

    def new_model(self, role: str, placement: Placement) -> ParallelModel | None:
        """`role`'s model on `placement` from the seed or its checkpoint (config.load); None
        on a rank outside the placement."""
        ctx = self.ctxs[placement]
        if ctx is None:
            return None
        role_spec = self.plan.workflow.models[role]
        offset = _VALUE_SEED_OFFSET if role_spec.head == "value" else _LM_SEED_OFFSET
        seed = self.config.seed * 2 + offset
        checkpoint = dict(self.config.load).get(role)
        return (
            ParallelModel.from_seed(role_spec.spec, role_spec.head, ctx, seed, self.device)
            if checkpoint is None else
            ParallelModel.from_hf(Path(checkpoint), role_spec.spec, role_spec.head, ctx,
                                  self.device, seed))

    def run_call(self, step: CallStep) -> tuple[int, dict[str, float], int]:
        """(bytes sent, metrics to report, the bytes this rank's MoE all-to-alls sent: the
        model's runtime.comm.AllToAllLedger over the call, 0 for a dense model)."""
        wf, ex = self.plan.workflow, self.plan.executions[step.call]
        call = wf.call_by_name[step.call]
        rollout = call.model in self.versions
        reads_rollout_copy = rollout and call.kind == "generate"
        if self.unmade.get(call.model) == ex.placement and not reads_rollout_copy:
            self.make_copy(call.model, self.unmade.pop(call.model))
        model = (self.rollout.get(call.model) if reads_rollout_copy
                 else self.models[call.model].get(ex.placement))
        env = calls.CallEnv(
            call=call, execution=ex, ctx=self.ctxs[ex.placement],
            model=model, batch=wf.batch,
            iteration=step.iteration, store=self.store, dataset=self.dataset,
            seed=self.config.seed, temperature=self.config.temperature, reward=self.reward,
            algorithm=ALGORITHMS[wf.algorithm], algo_config=self.config.algo,
            optimizer=self.optimizers.get(call.model), group_size=wf.batch.group_size,
            proximal=rollout and call.kind == "train")
        if env.model is None and not (self.reward is not None and call.model in
                                      reward_roles(self.plan)):
            raise RuntimeError(f"rank {self.rank}: no copy of {call.model} on the placement "
                               f"of {step.call}")
        traffic_before = env.model.moe_traffic.bytes if env.model is not None else 0
        metrics = calls.HANDLERS[call.kind](env)
        all_to_all = env.model.moe_traffic.bytes - traffic_before if env.model is not None else 0
        push = self.push_after.get(step.call)
        if (push is not None and self.staleness >= 2
                and step.iteration + self.staleness + 1 < self.config.iterations):
            self.start_push(push, step.iteration)  # version j + 1 exists only now
        report = self.rank == ex.devices[0]
        return 0, metrics if report else {}, all_to_all

    def version_read(self, step) -> int | None:
        """The weight version a generate call of a rollout model read (staleness >= 1)."""
        if not isinstance(step, CallStep):
            return None
        call = self.plan.workflow.call_by_name[step.call]
        if call.kind != "generate" or call.model not in self.versions:
            return None
        return self.versions[call.model]

    def _push_schedule(self, push: WeightPush):
        role = self.plan.workflow.models[push.model]
        src = self.plan.executions[push.train_call].placement
        dst = self.plan.executions[push.gen_call].placement
        schedule = param_schedule(role.spec, role.head, src, dst, self.plan.cluster.device_node)
        return role, src, dst, schedule

    def start_push(self, push: WeightPush, iteration: int) -> None:
        """Post this rank's part of push(iteration) while its training copy holds version
        iteration + 1: right after train(iteration), with staleness >= 2
        (runtime/executor/weight_push.py)."""
        role, src, dst, schedule = self._push_schedule(push)
        self.posted[(push.model, iteration)] = post_push(
            schedule, role.spec, role.head, self.rank,
            (src, self.models[push.model][src].params), dst)

    def run_push(self, step: PushStep) -> int:
        """push(step.iteration) at its place in the order: the rollout copy gets version
        step.iteration + 1 (runtime/executor/weight_push.py)."""
        role, src, dst, schedule = self._push_schedule(step.push)
        copy = self.rollout.get(step.push.model)
        target = (dst, copy.params) if copy is not None else None
        if self.staleness == 1:
            training = self.models[step.push.model].get(src)
            sent = push_now(schedule, role.spec, role.head, self.rank,
                            (src, training.params) if training is not None else None, target)
        else:
            posted = self.posted.pop((step.push.model, step.iteration), None)
            sent = finish_push(schedule, role.spec, role.head, self.rank, posted, target)
        self.versions[step.push.model] = step.iteration + 1
        return sent

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
        if isinstance(step, PushStep):
            return self.run_push(step), {}, 0
        receive_transfer(step, self.store, self.rank, self.plan.workflow.batch,
                         self.device.device)
        return self.posted_bytes.pop(step.name, 0), {}, 0

    def post_sends_after(self, step: CallStep) -> None:
        """Post this rank's sends of every transfer out of the call just run."""
        for transfer in self.transfers_from.get((step.iteration, step.call), ()):
            if self.rank in transfer.devices:
                self.posted_bytes[transfer.name] = post_transfer_sends(
                    transfer, self.store, self.rank, self.device.device,
                    self.pending_sends.setdefault(transfer.iteration, []))

    def finish_iteration(self, iteration: int) -> None:
        """Drop the iteration's data; wait for the data sends of iteration - staleness (all
        at the last iteration): with staleness s the receivers of iteration i's data may
        still be s iterations behind (generation runs ahead of training)."""
        last = iteration == self.config.iterations - 1
        for i in sorted(self.pending_sends):
            if last or i <= iteration - self.staleness:
                for work, _ in self.pending_sends.pop(i):
                    work.wait()
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
    return {CallStep: "call", ReallocStep: "realloc", TransferStep: "transfer",
            PushStep: "push"}[type(step)]


def _label(step) -> str:
    if isinstance(step, CallStep):
        return step.call
    if isinstance(step, ReallocStep):
        return step.move.name
    if isinstance(step, PushStep):
        return step.push.name
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
                        plan.cluster.device_node, plan.staleness)
    state.index_steps(steps)
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
            if isinstance(step, CallStep):
                state.post_sends_after(step)   # outside the call's time and memory
            metrics.update(step_metrics)
            record = {"node": step.name, "kind": _step_kind(step), "label": _label(step),
                      "iteration": iteration, "start": start, "end": end,
                      "bytes": sent, "all_to_all_bytes": all_to_all,
                      "peak_bytes": memory.peak_bytes}
            version = state.version_read(step)
            if version is not None:
                record["version"] = version
            records.append(record)
        state.finish_iteration(iteration)
        post({"rank": rank, "iteration": iteration, "records": records, "metrics": metrics,
              "memory_source": PeakMemory(device.device).source})
        if config.saves_after(iteration):
            state.save_trained(Path(config.save))
    dist.barrier()
    return {"rank": rank, "weights": state.home_weights() if config.return_weights else {}}
