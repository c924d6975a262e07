"""Spawning small torch.distributed (gloo) worlds from pytest: free port, torchrun's variables, one result per rank."""

from __future__ import annotations

import os
import socket
import traceback

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn, args, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from patchreg import distributed

    try:
        with distributed.session("cpu"):
            result = fn(*args)
    except BaseException:
        result = {"error": traceback.format_exc()}
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


def run_world(fn, world_size: int, out_dir, *args) -> list:
    """fn(*args) on each of `world_size` gloo ranks (fn: a module-level function); returns their results.

    The ranks are forked (a spawned child would spend seconds importing torch again); each runs one thread.
    """
    port = free_port()
    mp.start_processes(_worker, args=(world_size, port, fn, args, str(out_dir)), nprocs=world_size,
                       join=True, start_method="fork")
    results = [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]
    for rank, result in enumerate(results):
        if isinstance(result, dict) and "error" in result:
            raise AssertionError(f"rank {rank} failed:\n{result['error']}")
    return results
