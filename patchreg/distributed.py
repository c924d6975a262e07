"""Running patchreg under torch.distributed (torchrun): world info, setup, rank-0 helpers, sharding.

patchreg builds on torch.distributed and nothing else: launch any training or `patchreg reconstruct`
with `torchrun --nproc_per_node N -m patchreg ...` (gloo on CPUs, NCCL on GPUs; several nodes
through torchrun's rendezvous). Without torchrun's variables every function here describes a world
of one process, so single-process code paths stay exactly as they were.

Determinism: rank r of a flow or chart training with seed s draws its patches with `rank_seed(s, r)`
(rank 0 keeps s, so one process gives the single-process stream); the GMM's EM, whose iterations
revisit one fixed set of patches, splits the single-process stream itself into strided batches
(`patchreg.data.RankBatches`), so its patches do not depend on N. Shards of a list are the strided
slices `items[r::N]` (`shard`), which do not depend on timing.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "World", "WorldConfigError", "world_from_env", "current_world", "init", "cleanup", "session", "is_main", "barrier",
    "rank_seed", "shard", "split_count", "all_reduce_sum", "broadcast_tensors", "broadcast_object", "gather_rows",
]

class WorldConfigError(RuntimeError, ValueError):
    """torchrun's environment describes an impossible world (a ValueError, so the CLI reports it as bad input)."""


_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """rank, world_size, local_rank (rank on this node); distributed = world_size > 1 or launched by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(env, name: str) -> int:
    text = env.get(name)
    try:
        return int(text)
    except (TypeError, ValueError):
        raise WorldConfigError(f"torch.distributed: environment variable {name}={text!r} is not an integer "
                           f"(set by torchrun; launch with `torchrun --nproc_per_node N -m patchreg ...`)") from None


def world_from_env(env=None) -> World:
    """The world torchrun describes in `env` (default os.environ); World() when none of its variables is set.

    Raises RuntimeError naming the variable when the description is partial or inconsistent.
    """
    env = os.environ if env is None else env
    present = [name for name in _TORCHRUN_VARS if name in env]
    if not present:
        return World()
    missing = [name for name in _TORCHRUN_VARS if name not in env]
    if missing:
        raise WorldConfigError(f"torch.distributed: {', '.join(present)} set but {', '.join(missing)} missing; "
                           "launch with torchrun (it sets all of them) or unset them for one process")
    rank, size, local = (_env_int(env, name) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if size < 1:
        raise WorldConfigError(f"torch.distributed: WORLD_SIZE must be >= 1, got {size}")
    if not 0 <= rank < size:
        raise WorldConfigError(f"torch.distributed: RANK must lie in [0, WORLD_SIZE={size}), got {rank}")
    if local < 0 or local > rank:
        raise WorldConfigError(f"torch.distributed: LOCAL_RANK must lie in [0, RANK={rank}], got {local}")
    _env_int(env, "MASTER_PORT")
    return World(rank, size, local, launched=True)


def current_world() -> World:
    """The initialised process group's world, else the one of the environment (no torchrun: one process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        env = world_from_env()
        return World(torch.distributed.get_rank(), torch.distributed.get_world_size(), env.local_rank, True)
    return world_from_env()


def default_backend(device) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init(device="cpu", backend: str | None = None, timeout_s: float = 1800.0) -> World:
    """Join torchrun's process group (env:// rendezvous) once; a no-op for one process without torchrun.

    device: "cpu" (gloo) or "cuda" (NCCL; this rank uses GPU LOCAL_RANK). Returns the world.
    """
    world = world_from_env()
    if not world.launched:
        return world
    if not torch.distributed.is_available():
        raise WorldConfigError("torch.distributed is not available in this PyTorch build; run one process")
    backend = backend or default_backend(device)
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise WorldConfigError("the NCCL backend needs CUDA GPUs; use --device cpu (gloo) on this machine")
        if world.local_rank >= torch.cuda.device_count():
            raise WorldConfigError(f"LOCAL_RANK={world.local_rank} but this node has {torch.cuda.device_count()} GPUs; "
                               "use --nproc_per_node <= the GPU count")
        torch.cuda.set_device(world.local_rank)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return current_world()


def cleanup() -> None:
    """Leave the process group (if this process joined one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def session(device="cpu", backend: str | None = None, timeout_s: float = 1800.0):
    """`with session(device) as world:` init on entry, cleanup on exit (only if this call initialised).

    timeout_s bounds every collective, e.g. how long ranks wait for the slowest at a barrier.
    """
    owned = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    world = init(device, backend, timeout_s)
    try:
        yield world
    finally:
        if owned:
            cleanup()


def _active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


def is_main() -> bool:
    return current_world().is_main


def barrier() -> None:
    if _active():
        torch.distributed.barrier()


def rank_seed(seed: int, rank: int) -> int:
    """The patch-stream seed of `rank`: seed itself on rank 0, an independent 63-bit stream elsewhere."""
    if rank == 0:
        return int(seed)
    state = np.random.SeedSequence([int(seed), int(rank)]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def shard(items, world: World | None = None) -> list:
    """This rank's items: the strided slice items[rank::world_size] (deterministic, balanced to one item)."""
    world = world or current_world()
    return list(items)[world.rank :: world.world_size]


def split_count(total: int, world: World | None = None) -> int:
    """This rank's share of `total` (the first total % N ranks take one more), so the shares sum to total."""
    world = world or current_world()
    base, extra = divmod(int(total), world.world_size)
    return base + (1 if world.rank < extra else 0)


def _comm_device(tensor: torch.Tensor) -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks in place (a no-op for one process); returns it."""
    if _active():
        device = _comm_device(tensor)
        work = tensor.to(device)
        torch.distributed.all_reduce(work, op=torch.distributed.ReduceOp.SUM)
        if work is not tensor:
            tensor.copy_(work)
    return tensor


def broadcast_tensors(tensors, src: int = 0) -> None:
    """Copy each tensor of rank `src` into the same tensor of every other rank, in place."""
    if not _active():
        return
    for tensor in tensors:
        device = _comm_device(tensor)
        work = tensor.detach().to(device)
        torch.distributed.broadcast(work, src)
        if work is not tensor:
            with torch.no_grad():
                tensor.copy_(work)


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s picklable `obj` on every rank (obj itself for one process)."""
    if not _active():
        return obj
    box = [obj]
    device = _comm_device(torch.empty(0)) if torch.distributed.get_backend() == "nccl" else None
    torch.distributed.broadcast_object_list(box, src, device=device)
    return box[0]


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Concatenation in rank order of every rank's rows (n_r, ...) (the n_r may differ); rows itself for one process."""
    if not _active():
        return rows
    device = _comm_device(rows)
    count = torch.tensor([rows.shape[0]], dtype=torch.int64, device=device)
    counts = [torch.zeros_like(count) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(counts, count)
    counts = [int(c) for c in counts]
    padded = rows.new_zeros((max(counts),) + tuple(rows.shape[1:])).to(device)
    padded[: rows.shape[0]] = rows.to(device)
    parts = [torch.empty_like(padded) for _ in counts]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts)]).to(rows.device)
