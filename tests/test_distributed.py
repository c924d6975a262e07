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


def _sampler(batch_size: int = 64, seed: int = 4):
    from patchreg.data import PatchSampler

    image = torch.linspace(0, 1, 40 * 36, dtype=torch.float64).reshape(40, 36).sin() + \
        0.1 * torch.randn(40, 36, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return PatchSampler([image, image.T.contiguous()], 3, batch_size, seed=seed, dtype=torch.float64)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_rank_batches_split_the_one_process_stream(world_size):
    """The ranks' batches, interleaved, are the single-process stream cut at `total` as GMM.fit cuts it."""
    from patchreg.data import RankBatches
    from patchreg.priors.gmm import _PatchStream

    total = 5 * 64 + 17  # 6 batches, the last one cut short
    single = torch.cat(list(_PatchStream(_sampler(), 9, 64, total).epoch()))
    shares = [RankBatches(_sampler(), total, rank, world_size) for rank in range(world_size)]
    batches = [list(share) for share in shares]
    interleaved = [batches[b % world_size][b // world_size] for b in range(6)]
    assert torch.equal(torch.cat(interleaved), single)
    assert [share.count for share in shares] == [sum(len(x) for x in mine) for mine in batches]
    assert sum(share.count for share in shares) == total and sum(len(s) for s in shares) == 6
    shares[0].reset()  # rewinds: the next pass is the same patches
    assert torch.equal(torch.cat(list(shares[0])), torch.cat(batches[0]))


def test_rank_batches_check_their_arguments():
    from patchreg.data import RankBatches

    with pytest.raises(ValueError, match=r"rank must lie in \[0, world_size=2\), got 2"):
        RankBatches(_sampler(), 100, 2, 2)
    with pytest.raises(ValueError, match="total"):
        RankBatches(_sampler(), 0)


def _train_gmm_cli(folder: str, out: str, iters: int, resume: bool):
    from patchreg.cli import main

    args = ["train", "gmm", "--images", folder, "--patch-size", "3", "--components", "3", "--patches-per-iter", "2500",
            "--batch-size", "400", "--iters", str(iters), "--tol", "0", "--seed", "2", "--out", out, "--quiet"]
    return main(args + (["--resume"] if resume else []))


def _gmm_folder(tmp_path) -> str:
    import imageio.v3 as iio
    import numpy as np

    from patchreg.data import load_bundled

    folder = tmp_path / "images"
    folder.mkdir()
    iio.imwrite(folder / "a.png", (load_bundled("train")[0][:80, :80] * 255).astype(np.uint8))
    return str(folder)


def test_gmm_cli_resumes_under_another_number_of_processes(tmp_path):
    """2 EM iterations in one process, 2 more on 2 ranks: the 4-iteration single-process fit (the ranks see the
    same patches; only the float64 summation order differs)."""
    folder = _gmm_folder(tmp_path)
    reference, resumed = str(tmp_path / "one.safetensors"), str(tmp_path / "mixed.safetensors")
    assert _train_gmm_cli(folder, reference, 4, False) == 0
    assert _train_gmm_cli(folder, resumed, 2, False) == 0
    codes = run_world(_train_gmm_cli, 2, tmp_path, folder, resumed, 4, True)
    assert codes == [0, 0]
    a, b = GMM.load(reference), GMM.load(resumed)
    assert b.hyperparameters["iterations_done"] == 4 and b.hyperparameters["world_size"] == 2
    assert b.history == pytest.approx(a.history, rel=1e-12)
    for key in ("weights", "means", "covariances"):
        torch.testing.assert_close(getattr(b, key), getattr(a, key), rtol=1e-9, atol=1e-12)


def test_gmm_cli_needs_a_batch_per_process(tmp_path, monkeypatch, capsys):
    from patchreg.cli import main

    monkeypatch.setenv("RANK", "0")
    for name, value in dict(WORLD_SIZE="3", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="1").items():
        monkeypatch.setenv(name, value)
    args = ["train", "gmm", "--images", "bundled", "--patches-per-iter", "500", "--batch-size", "400",
            "--out", str(tmp_path / "g.safetensors")]
    assert main(args) == 2
    assert "makes 2 batches of --batch-size 400; every process needs one: at least 3" in capsys.readouterr().err


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


# --------------------------------------------------------------------------- chart mixtures: DDP
CHART_PHASES = ("pretrain", "mixture", "overlap")


def _chart_setup():
    from patchreg.charts import TrainConfig, build_mixture

    torch.manual_seed(0)
    model = build_mixture("fif", 2, 4, 2, width=8, n_blocks=1).double()
    config = TrainConfig(pretrain_steps=1, mixture_steps=1, overlap_steps=1, batch_size=16, lr=1e-2)
    g = torch.Generator().manual_seed(5)
    batches = [torch.randn(16, 4, generator=g, dtype=torch.float64) for _ in CHART_PHASES]
    centers = torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]], dtype=torch.float64)
    return model, config, batches, centers


def _chart_ddp_steps():
    from patchreg.charts.training import training_step, wrap_for_training

    world = distributed.current_world()
    model, config, batches, centers = _chart_setup()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_of = wrap_for_training(model, config, torch.Generator().manual_seed(100 + world.rank))
    for step, (phase, x) in enumerate(zip(CHART_PHASES, batches)):
        training_step(loss_of, model, optimizer, x[8 * world.rank:8 * (world.rank + 1)], config, phase, centers, step)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_ddp_chart_steps_equal_the_one_process_steps_on_the_global_batch(tmp_path):
    from patchreg.charts.training import mixture_loss

    model, config, batches, centers = _chart_setup()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generators = [torch.Generator().manual_seed(100 + r) for r in range(2)]  # each half's noise draws
    for phase, x in zip(CHART_PHASES, batches):
        halves = [mixture_loss(model, x[8 * r:8 * (r + 1)], config, phase, centers, generators[r]) for r in range(2)]
        loss = (halves[0][0] + halves[1][0]) / 2  # the mean over the 16 points
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if phase != "pretrain":
            with torch.no_grad():
                w = torch.cat([halves[0][1], halves[1][1]]).mean(0)
                alpha = config.alpha_momentum * model.log_alpha.exp() + (1 - config.alpha_momentum) * w
                model.log_alpha.copy_(torch.log(alpha.clamp_min(1e-6) / alpha.sum()))
    ranks = run_world(_chart_ddp_steps, 2, tmp_path)
    start = _chart_setup()[0].state_dict()
    for result in ranks:
        for key, value in model.state_dict().items():
            torch.testing.assert_close(result[key], value, rtol=1e-9, atol=1e-12)
    assert any(not torch.equal(start[k], v) for k, v in ranks[0].items() if k != "log_alpha")
    assert not torch.equal(start["log_alpha"], ranks[0]["log_alpha"])


class _Killed(Exception):
    pass


def _train_charts_points(checkpoint: str | None, resume: bool, kill_at_draw: int | None = None):
    from patchreg.charts import TrainConfig, build_mixture, train_mixture

    torch.manual_seed(0)
    model = build_mixture("fif", 2, 3, 1, width=8, n_blocks=1)
    points = torch.randn(400, 3, generator=torch.Generator().manual_seed(1))
    draws = []

    def sampler(n, generator):  # every rank draws with its own stream; a "kill" stops all ranks at one step
        draws.append(n)
        if len(draws) == kill_at_draw:
            raise _Killed
        return points[torch.randint(400, (n,), generator=generator)]

    config = TrainConfig(pretrain_steps=2, mixture_steps=4, overlap_steps=2, batch_size=16, seed_points=200,
                         checkpoint_every=2, log_every=1)
    try:
        train_mixture(model, sampler, config, checkpoint, resume=resume, progress=False)
    except _Killed:
        return None
    return {k: v.clone() for k, v in model.state_dict().items()}


def _train_charts_killed_then_resumed(checkpoint: str):
    whole = _train_charts_points(None, False)
    assert _train_charts_points(checkpoint, False, kill_at_draw=7) is None  # seeding + 5 steps + the 6th's draw
    from patchreg import io

    step = io.load_checkpoint(checkpoint, "charts")[1]["training"]["step"]
    return {"whole": whole, "killed_at": step, "resumed": _train_charts_points(checkpoint, True)}


def test_ddp_chart_training_resumes_every_rank_stream(tmp_path):
    from patchreg import io

    ckpt = str(tmp_path / "charts.safetensors")
    ranks = run_world(_train_charts_killed_then_resumed, 2, tmp_path, ckpt)
    for result in ranks:
        assert result["killed_at"] == 4
        for key, value in result["whole"].items():  # the resumed run is the uninterrupted one
            torch.testing.assert_close(result["resumed"][key], value, rtol=1e-6, atol=1e-7)
    tensors = io.load_checkpoint(ckpt, "charts")[0]
    assert not torch.equal(tensors["rng/data.rank1"], tensors["rng/data"])  # every rank streams its own points
