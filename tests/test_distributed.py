"""patchreg.distributed and multi-process training: 2-rank gloo worlds spawned from pytest."""

from __future__ import annotations

import pytest
import torch

from patchreg import distributed
from patchreg.priors.gmm import GMM

from .distributed_harness import run_world

TORCHRUN = dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")


# --------------------------------------------------------------------------- world description
def test_no_torchrun_variables_is_one_process():
    world = distributed.world_from_env({})
    assert (world.rank, world.world_size, world.is_main, world.distributed, world.launched) == (0, 1, True, False, False)


def test_torchrun_variables_are_read():
    world = distributed.world_from_env(TORCHRUN)
    assert (world.rank, world.world_size, world.local_rank, world.is_main) == (1, 2, 1, False)


@pytest.mark.parametrize("change, message", [
    (dict(RANK="2"), r"RANK must lie in \[0, WORLD_SIZE=2\)"),
    (dict(WORLD_SIZE="0"), "WORLD_SIZE must be >= 1"),
    (dict(RANK="x"), "RANK='x' is not an integer"),
    (dict(LOCAL_RANK="-1"), "LOCAL_RANK must lie in"),
    (dict(MASTER_PORT="http"), "MASTER_PORT='http' is not an integer"),
])
def test_misconfigured_world_is_named(change, message):
    with pytest.raises(RuntimeError, match=message):
        distributed.world_from_env({**TORCHRUN, **change})


def test_partial_torchrun_environment_is_an_error():
    with pytest.raises(RuntimeError, match="MASTER_ADDR, MASTER_PORT missing"):
        distributed.world_from_env(dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0"))


def test_rank_seeds_and_shards():
    assert distributed.rank_seed(7, 0) == 7  # one process keeps the single-process stream
    seeds = {distributed.rank_seed(7, r) for r in range(8)}
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)
    assert distributed.rank_seed(7, 3) == distributed.rank_seed(7, 3)
    worlds = [distributed.World(r, 3, r, True) for r in range(3)]
    shards = [distributed.shard(range(10), w) for w in worlds]
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert [distributed.split_count(10, w) for w in worlds] == [4, 3, 3]


def test_one_process_helpers_are_no_ops():
    x = torch.arange(4.0)
    assert distributed.all_reduce_sum(x) is x and torch.equal(x, torch.arange(4.0))
    assert distributed.gather_rows(x) is x
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}


# --------------------------------------------------------------------------- GMM: EM with all-reduced statistics
def _gmm_patches(n: int = 1500) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    centers = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 0.5, 0.0], [-1.0, 1.0, 0.0, 0.7]], dtype=torch.float64)
    labels = torch.randint(3, (n,), generator=g)
    return centers[labels] + 0.3 * torch.randn(n, 4, generator=g, dtype=torch.float64)


GMM_FIT = dict(n_iter=6, tol=0.0, batch_size=256, init_size=500, seed=1, progress=False)


def _fit_gmm_shard(split: int, checkpoint: str | None, n_iter: int, resume: bool, seed: int = 1):
    world = distributed.current_world()
    x = _gmm_patches()
    shard = x[:split] if world.rank == 0 else x[split:]
    model = GMM(3, 2, remove_mean=False)
    model.fit(shard, **{**GMM_FIT, "n_iter": n_iter, "seed": seed}, checkpoint=checkpoint, resume=resume)
    return {k: getattr(model, k) for k in ("weights", "means", "covariances")} | {"history": model.history}


def test_two_ranks_fit_the_one_process_gmm(tmp_path):
    reference = GMM(3, 2, remove_mean=False).fit(_gmm_patches(), **GMM_FIT)
    # Unequal shards; rank 0's holds fewer than init_size patches, so the initialisation spans both.
    ranks = run_world(_fit_gmm_shard, 2, tmp_path, 300, str(tmp_path / "gmm.safetensors"), 6, False)
    for result in ranks:
        for key in ("weights", "means", "covariances"):
            torch.testing.assert_close(result[key], getattr(reference, key), rtol=1e-10, atol=1e-12)
        assert result["history"] == pytest.approx(reference.history, rel=1e-12)
    saved = GMM.load(tmp_path / "gmm.safetensors")  # written by rank 0
    torch.testing.assert_close(saved.means, reference.means, rtol=1e-10, atol=1e-12)
    assert saved.hyperparameters["world_size"] == 2 and saved.hyperparameters["patches_per_iter"] == 1500


def _fit_gmm_interrupted_then_resumed(split: int, checkpoint: str):
    _fit_gmm_shard(split, checkpoint, 3, False)  # "killed" after 3 iterations
    distributed.barrier()
    done = GMM.load(checkpoint).hyperparameters["iterations_done"]
    # another seed: a resumed fit skips the initialisation, a restarted one would end elsewhere
    return _fit_gmm_shard(split, checkpoint, 6, True, seed=5) | {"done_before": done}


def test_two_ranks_resume_a_gmm_checkpoint(tmp_path):
    ranks = run_world(_fit_gmm_interrupted_then_resumed, 2, tmp_path, 750, str(tmp_path / "gmm.safetensors"))
    reference = GMM(3, 2, remove_mean=False).fit(_gmm_patches(), **GMM_FIT)
    for result in ranks:
        assert result["done_before"] == 3
        torch.testing.assert_close(result["covariances"], reference.covariances, rtol=1e-10, atol=1e-12)
        assert result["history"] == pytest.approx(reference.history, rel=1e-12)
