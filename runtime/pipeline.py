"""Point-to-point messages between the pipeline stages of one pipeline (one pp group).

Sends are non-blocking (`isend`) and kept alive until `wait_sends`; receives block. With
sends that never block, any schedule in which every stage posts its receives in the order its
peer sends is deadlock-free (1F1B, fill-drain, the decode loop's token feedback). Messages
between one pair of ranks in one direction arrive in the order they were sent.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from runtime.parallel_context import ParallelContext


class StageLink:
    """Sends and receives of this rank to and from other stages of its pipeline."""

    def __init__(self, ctx: ParallelContext, device: torch.device):
        self.ctx = ctx
        self.device = device
        self._pending: list[tuple[object, torch.Tensor]] = []

    def send(self, tensor: torch.Tensor, stage: int) -> None:
        tensor = tensor.detach().contiguous()
        work = dist.isend(tensor, dst=self.ctx.stage_rank(stage),
                          group=self.ctx.pp_group.handle)
        self._pending.append((work, tensor))

    def recv(self, shape: tuple[int, ...], dtype: torch.dtype, stage: int) -> torch.Tensor:
        tensor = torch.empty(shape, dtype=dtype, device=self.device)
        dist.recv(tensor, src=self.ctx.stage_rank(stage), group=self.ctx.pp_group.handle)
        return tensor

    def send_next(self, tensor: torch.Tensor) -> None:
        self.send(tensor, self.ctx.coord.pp_rank + 1)

    def send_prev(self, tensor: torch.Tensor) -> None:
        self.send(tensor, self.ctx.coord.pp_rank - 1)

    def recv_prev(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return self.recv(shape, dtype, self.ctx.coord.pp_rank - 1)

    def recv_next(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return self.recv(shape, dtype, self.ctx.coord.pp_rank + 1)

    def wait_sends(self) -> None:
        for work, _ in self._pending:
            work.wait()
        self._pending.clear()

