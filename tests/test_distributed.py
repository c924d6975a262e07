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


# --------------------------------------------------------------------------- flow: DistributedDataParallel
class _FixedBatches:
    """A sampler whose k-th draw is rows [k * n, (k + 1) * n) of the given patches (one rank's share)."""

    def __init__(self, patches: torch.Tensor, rank: int = 0, world_size: int = 1):
        self.patches, self.rank, self.world_size, self.draws = patches, rank, world_size, 0

    def reset(self):
        self.draws = 0

    def sample(self, n: int) -> torch.Tensor:
        step = self.patches[self.draws * n * self.world_size:(self.draws + 1) * n * self.world_size]
        self.draws += 1
        return step[self.rank * n:(self.rank + 1) * n]


def _flow_patches() -> torch.Tensor:
    return torch.rand(3 * 16, 9, generator=torch.Generator().manual_seed(4))


def _small_flow():
    from patchreg.priors.flow import PatchFlow

    return PatchFlow(patch_size=3, n_blocks=2, hidden=16, seed=2)


def _flow_state(flow) -> dict:
    return {k: v.detach().clone() for k, v in flow.state_dict().items()}


def _train_flow_shard(checkpoint: str, steps: int, resume: bool):
    world = distributed.current_world()
    flow = _small_flow()
    sampler = _FixedBatches(_flow_patches(), world.rank, world.world_size)
    history = flow.fit(sampler, steps, lr=1e-2, batch_size=16, checkpoint=checkpoint, checkpoint_every=1,
                       resume=resume, progress=False, log_every=1)
    return {"state": _flow_state(flow), "history": history}


def test_ddp_flow_steps_equal_the_one_process_steps(tmp_path):
    reference = _small_flow()
    history = reference.fit(_FixedBatches(_flow_patches()), 3, lr=1e-2, batch_size=16, progress=False, log_every=1)
    ranks = run_world(_train_flow_shard, 2, tmp_path, str(tmp_path / "flow.safetensors"), 3, False)
    for result in ranks:
        for key, value in _flow_state(reference).items():
            torch.testing.assert_close(result["state"][key], value, rtol=1e-5, atol=1e-6)
        assert [s for s, _ in result["history"]] == [1, 2, 3]
        assert [v for _, v in result["history"]] == pytest.approx([v for _, v in history], rel=1e-5)
    untrained = _flow_state(_small_flow())
    assert any(not torch.allclose(untrained[k], v) for k, v in ranks[0]["state"].items())  # the steps moved it
    from patchreg import io

    header = io.load_checkpoint(tmp_path / "flow.safetensors", "flow")[1]
    assert header["training"]["step"] == 3 and header["training"]["world_size"] == 2


def _train_flow_interrupted_then_resumed(checkpoint: str):
    _train_flow_shard(checkpoint, 2, False)
    distributed.barrier()
    return _train_flow_shard(checkpoint, 3, True)


def test_ddp_flow_resumes_its_checkpoint(tmp_path):
    reference = _small_flow()
    reference.fit(_FixedBatches(_flow_patches()), 3, lr=1e-2, batch_size=16, progress=False)
    ranks = run_world(_train_flow_interrupted_then_resumed, 2, tmp_path, str(tmp_path / "flow.safetensors"))
    for key, value in _flow_state(reference).items():
        torch.testing.assert_close(ranks[1]["state"][key], value, rtol=1e-5, atol=1e-6)


def test_flow_global_batch_must_split_evenly():
    from patchreg.priors.flow_training import _local_batch_size

    with pytest.raises(ValueError, match="batch_size=15 must be a multiple of the number of processes"):
        _local_batch_size(15, distributed.World(0, 2, 0, True))
