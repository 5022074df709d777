"""torch.distributed glue for data-parallel runs: the rank and world size torchrun gives, and the
communicator the runner uses (every rank's state gathered to rank 0 at the end of each stage, and
rank 0's decisions broadcast)."""
import atexit
import os
from typing import List, Optional, Tuple


def world() -> Tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) outside torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), size) if size > 1 else (0, 1)


class Comm:
    """gather(State) -> [State] on rank 0 (rank order), [] elsewhere; broadcast(int) -> rank 0's int."""

    def __init__(self, device: str = "cpu"):
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
            # Destroyed while the interpreter is alive: left to the interpreter's teardown, gloo's
            # worker threads can abort the process ("terminate called without an active
            # exception", seen on a rank after its results were written; pytorch/pytorch#179291).
            atexit.register(_destroy, dist)
        self.dist = dist
        self.rank, self.size = dist.get_rank(), dist.get_world_size()

    def gather(self, state):
        from ._C import State
        mine = (state.kind, {k: v.cpu() for k, v in state.tensors.items()})
        out = [None] * self.size if self.rank == 0 else None
        self.dist.gather_object(mine, out, dst=0)
        return [State(k, t) for k, t in out] if self.rank == 0 else []

    def broadcast(self, value: int) -> int:
        box = [int(value)]
        self.dist.broadcast_object_list(box, src=0)
        return int(box[0])


def _destroy(dist) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def comm(device: str = "cpu") -> Optional[Comm]:
    return Comm(device) if world()[1] > 1 else None
