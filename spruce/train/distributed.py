"""Multi-process training with ``torch.distributed``: one process per CPU group or GPU,
launched by ``torchrun`` (or ``accelerate launch --multi_gpu``), which sets
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``.

Every process runs the whole pipeline. The training loader gives each a disjoint shard
of the data (:class:`~torch.utils.data.distributed.DistributedSampler`), the model is
wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` for the forward/backward,
and what learns outside the model (gates, Lagrange multipliers, a distiller's projection)
has its gradients averaged by :func:`DistributedContext.average_gradients` before its
optimizers step, so every process holds the same values throughout (a phase whose loss
runs the model past the wrapper, as auxiliary tasks do, averages the model's gradients
that way too: ``Trainer(wrap_ddp=False)``). Rank 0 alone evaluates during training (the
metrics are broadcast), writes outputs and checkpoints and shows progress.

Without ``WORLD_SIZE > 1`` the context is a no-op: a single process behaves as before.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
TIMEOUT = datetime.timedelta(minutes=30)


class DistributedContext:
    """This process's place in the run: ``world_size`` processes, this one ``rank``."""

    def __init__(self, world_size: int = 1, rank: int = 0, local_rank: int = 0) -> None:
        self.world_size = world_size
        self.rank = rank
        self.local_rank = local_rank

    @classmethod
    def from_environment(cls) -> DistributedContext:
        env = os.environ
        return cls(
            int(env.get("WORLD_SIZE", "1")),
            int(env.get("RANK", "0")),
            int(env.get("LOCAL_RANK", env.get("RANK", "0"))),
        )

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self, backend: str | None = None) -> None:
        """Join the process group (gloo on CPU, nccl with CUDA); a no-op in one process
        or when the group already exists."""
        if not self.enabled or dist.is_initialized():
            return
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group(
            backend, rank=self.rank, world_size=self.world_size, timeout=TIMEOUT
        )

    @property
    def active(self) -> bool:
        return self.enabled and dist.is_initialized()

    def device(self, device: torch.device) -> torch.device:
        """Each process on a GPU of its own (``cuda:LOCAL_RANK``) when running on CUDA."""
        if self.enabled and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average ``tensor`` over the processes, in place (and return it)."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor.div_(self.world_size)
        return tensor

    def max_over_ranks(self, value: int) -> int:
        """The largest ``value`` any process holds (every process gets it)."""
        if not self.active:
            return value
        box = torch.tensor([value], dtype=torch.int64)
        if dist.get_backend() == "nccl":
            box = box.cuda()
        dist.all_reduce(box, op=dist.ReduceOp.MAX)
        return int(box.item())

    def broadcast_parameters(self, parameters: Iterable[torch.Tensor]) -> None:
        """Give every process rank 0's values of ``parameters``."""
        if not self.active:
            return
        with torch.no_grad():
            for parameter in parameters:
                dist.broadcast(parameter.data, src=0)

    def average_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Average the gradients of ``parameters`` over the processes, in one all-reduce.

        A parameter without a gradient counts as a zero gradient where another process has
        one (and keeps ``None`` where no process has), so every process steps the same."""
        if not self.active or not parameters:
            return
        device = parameters[0].device
        present = torch.tensor(
            [p.grad is not None for p in parameters], dtype=torch.float32, device=device
        )
        flat = torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                for p in parameters
            ]
            + [present]
        )
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        anywhere = flat[-len(parameters) :] > 0
        offset = 0
        for parameter, has_grad in zip(parameters, anywhere.tolist(), strict=True):
            size = parameter.numel()
            if has_grad:
                average = flat[offset : offset + size].view_as(parameter) / self.world_size
                parameter.grad = average.to(parameter.dtype)
            offset += size

    def on_main(self, compute: Callable[[], T]) -> T:
        """``compute()`` on rank 0, its (picklable) result broadcast to every process."""
        if not self.active:
            return compute()
        box: list[Any] = [compute() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def destroy(self) -> None:
        if self.active:
            dist.destroy_process_group()


_CONTEXT: DistributedContext | None = None


def context() -> DistributedContext:
    """The process's context, read from the environment on first use."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = DistributedContext.from_environment()
    return _CONTEXT


def is_main() -> bool:
    return context().is_main


def optimizer_parameters(optimizers: Iterable[torch.optim.Optimizer]) -> list[torch.nn.Parameter]:
    """Each parameter of ``optimizers`` once, in a fixed order."""
    seen: set[int] = set()
    parameters = []
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                if id(parameter) not in seen:
                    seen.add(id(parameter))
                    parameters.append(parameter)
    return parameters


def owned_optimizers(obj: object) -> list[torch.optim.Optimizer]:
    """The optimizers an object (a trainer callback) holds as attributes, e.g. the gate
    and multiplier optimizers of :class:`~spruce.masks.control.SparsityStep`."""
    attributes = getattr(obj, "__dict__", {})
    return [value for value in attributes.values() if isinstance(value, torch.optim.Optimizer)]
