"""`patchreg reconstruct --images DIR | --observations DIR --output-dir OUT`: a folder, in batches, resumable,
sharded over ranks.

--images: every clean image of DIR (sorted by name) is reconstructed as `--image FILE` would be, with seed
--seed + its index. --observations: every measurement of DIR as `--observation FILE`, with the clean image
of the same name (without suffix) in --references DIR for the metrics and, for inpainting, the mask of the
same name in --masks DIR; every pairing is checked before any work.

Estimates go to OUT/NAME.png (+ .npy) and OUT/NAME.json (its metrics, written last: an image with its .json
is done and skipped by a rerun). The model is loaded once per process. --batch-size B solves up to B
images of the same size as one batch: the solvers treat every image of a batch as if alone (HQS patch
steps and conjugate gradients per image; Adam on the sum of the per-image objectives), so the estimates
do not depend on B, except PatchNR's (and the chart prior's, with --n-patches) random patch positions,
which are drawn per batch from the seed of its first image. L-BFGS shares one line search over a batch
and therefore runs with --batch-size 1 only. Under torchrun rank r takes the images r, r + N, ...
(patchreg.distributed.shard); an image that fails is recorded in OUT/NAME.failed.txt and the others
continue. At the end rank 0 writes OUT/summary.md and OUT/summary.json over all images.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import reconstruct as single

SUMMARY_MD, SUMMARY_JSON = "summary.md", "summary.json"
# Ranks wait at the final barrier for the slowest one: allow long shards.
BARRIER_TIMEOUT_S = 7 * 24 * 3600.0
FOLDER_SUFFIXES = single.IMAGE_SUFFIXES + (".npy",)


def list_images(folder: Path, option: str = "--images") -> list[Path]:
    """The readable image files of `folder`, sorted; their names (without suffix) must be unique."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FOLDER_SUFFIXES)
    if not files:
        raise ValueError(f"{option} {str(folder)!r} holds no image ({', '.join(FOLDER_SUFFIXES)})")
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise ValueError(f"{option}: {stems[path.stem].name} and {path.name} have the same name "
                             f"{path.stem!r} (estimates are written as NAME.png, files matched by NAME); rename one")
        stems[path.stem] = path
    return files


def _folder(option: str, value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    if not path.is_dir():
        raise FileNotFoundError(f"{option} {value!r}: no such folder")
    return path


def _check_folder_options(args) -> tuple[Path, Path]:
    """The source folder and OUT, after every folder-mode option is checked."""
    for option, value in (("--output", args.output), ("--metrics", args.metrics)):
        if value is not None:
            raise ValueError(f"{option} does not apply with --images/--observations (every image gets OUT/NAME.png "
                             f"and OUT/NAME.json in --output-dir)")
    for option, value, plural in (("--reference", args.reference, "--references DIR"),
                                  ("--mask", args.mask, "--masks DIR")):
        if value is not None:
            raise ValueError(f"{option} is for one image; with a folder give {plural} (files matched by name)")
    source_option = "--images" if args.images is not None else "--observations"
    if args.output_dir is None:
        raise ValueError(f"{source_option} needs --output-dir OUT")
    if not (isinstance(args.batch_size, int) and args.batch_size >= 1):
        raise ValueError(f"--batch-size must be an int >= 1, got {args.batch_size!r}")
    source = _folder(source_option, args.images if args.images is not None else args.observations)
    if args.images is not None:
        for option, value in (("--references", args.references), ("--masks", args.masks),
                              ("--image-size", args.image_size)):
            if value is not None:
                raise ValueError(f"{option} applies only with --observations (with --images the clean images are "
                                 f"the references, the mask is drawn at random and the image gives the size)")
    else:
        _check_observation_options(args)
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output-dir {args.output_dir!r} is a file, not a folder")
    for option, folder in ((source_option, source), ("--references", args.references), ("--masks", args.masks)):
        if folder is not None and out.resolve() == Path(folder).resolve():
            raise ValueError(f"--output-dir must differ from {option} (the estimates would be read as inputs "
                             f"next time)")
    single._check_output_path("--output-dir", out / "summary.json", (".json",))
    return source, out


def _check_observation_options(args) -> None:
    _folder("--references", args.references)
    _folder("--masks", args.masks)
    if args.masks is not None and args.task != "inpaint":
        raise ValueError("--masks applies only to --task inpaint")
    if args.task == "inpaint" and args.masks is None:
        raise ValueError("--task inpaint with --observations needs --masks DIR (NAME.npy or NAME.png per "
                         "observation, nonzero = observed)")
    if args.image_size is not None and args.task != "ct":
        raise ValueError(f"--image-size applies only to --task ct, got --task {args.task}")
    if args.task == "ct" and args.image_size is None and args.references is None:
        raise ValueError("--task ct with --observations needs --image-size H W or --references DIR")


def _check_solver_batching(args) -> None:
    if args.batch_size > 1 and args.solver == "lbfgs":
        raise ValueError(f"--batch-size {args.batch_size} with --solver lbfgs: L-BFGS would share one line search "
                         "over the batch, so the estimates would depend on the batch; use --batch-size 1 "
                         "(or --solver adam / hqs)")


# ------------------------------------------------------------------------------------ the images to do
@dataclass
class Item:
    """One image of the folder: its index (seed offset, shard), input files and per-image options."""

    index: int
    name: str  # the input's file name, the summary's row
    args: object  # a copy of the command's args for this image (--image or --observation, its outputs)
    problem: tuple = field(default=None, repr=False)  # single._load_problem's result, once loaded


def _matched(option: str, folder: str | None, files: list[Path]) -> dict[str, Path]:
    """NAME -> file of `folder` for every input file; an error listing the inputs that have none."""
    if folder is None:
        return {}
    found = {p.stem: p for p in list_images(Path(folder), option)}
    missing = [p.name for p in files if p.stem not in found]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{option} {folder!r} has no file for {len(missing)} of the {len(files)} observations "
                         f"(matched by name without suffix): {shown}")
    return found


def plan_items(args, source: Path, out: Path) -> list[Item]:
    """Every image of the folder with its per-image options; pairings checked before any work."""
    option = "--images" if args.images is not None else "--observations"
    files = list_images(source, option)
    references = _matched("--references", getattr(args, "references", None), files) if args.images is None else {}
    masks = _matched("--masks", getattr(args, "masks", None), files) if args.images is None else {}
    items = []
    for index, path in enumerate(files):
        paths = _paths(out, path)
        one = copy.copy(args)
        one.images = one.observations = None
        one.image, one.observation = (str(path), None) if args.images is not None else (None, str(path))
        one.reference = str(references[path.stem]) if path.stem in references else None
        one.mask = str(masks[path.stem]) if path.stem in masks else None
        one.output, one.metrics, one.seed, one.quiet = str(paths["png"]), str(paths["json"]), args.seed + index, True
        items.append(Item(index, path.name, one))
    return items


def _paths(out: Path, image: Path) -> dict[str, Path]:
    stem = out / image.stem
    return {"png": stem.with_suffix(".png"), "npy": stem.with_suffix(".npy"), "json": stem.with_suffix(".json"),
            "failed": stem.with_suffix(".failed.txt")}


def is_done(out: Path, image: Path) -> bool:
    paths = _paths(out, image)
    return all(paths[key].is_file() for key in ("png", "npy", "json"))


# ------------------------------------------------------------------------------------ the run
def run_folder(args) -> int:
    from .. import distributed

    source, out = _check_folder_options(args)
    checked = _as_single(args)
    single._check_options(checked)
    args.solver, args.steps, args.betas_list = checked.solver, checked.steps, checked.betas_list  # resolved there
    _check_solver_batching(args)
    single.check_device(args)
    args.checkpoint_path = single._resolve_checkpoint(args)
    items = plan_items(args, source, out)
    with distributed.session(args.device, timeout_s=BARRIER_TIMEOUT_S) as world:
        if world.is_main:
            out.mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        _reconstruct_shard(args, items, out, world)
        distributed.barrier()  # every rank's files are written
        if not world.is_main:
            return 0
        rows = write_summary(args, source, items, out)
    failures = [row for row in rows if row["status"] == "failed"]
    print(f"{len(items)} images: {sum(r['status'] == 'done' for r in rows)} done, {len(failures)} failed; "
          f"summary: {out / SUMMARY_MD}")
    print((out / SUMMARY_MD).read_text())
    return 1 if failures else 0


def _as_single(args):
    """args as single._check_options sees one image of the folder (the folder's files stand in for the files)."""
    one = copy.copy(args)
    if args.observations is not None:
        one.observation, one.reference, one.mask = args.observations, args.references, args.masks
    else:
        one.image = args.images
    return one


def _reconstruct_shard(args, items: list[Item], out: Path, world) -> tuple[int, int]:
    """Reconstruct this rank's images not done yet, in batches of equal size; returns (done now, failed now)."""
    import torch
    from tqdm.auto import tqdm

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    mine = items[world.rank :: world.world_size]
    todo = [item for item in mine if not is_done(out, Path(item.name))]
    model = single._load_model(args, args.checkpoint_path) if todo else None
    counts = {"done": 0, "failed": 0}
    pending: dict[tuple, list[Item]] = {}
    bar = tqdm(total=len(todo), desc=f"images (rank {world.rank})" if world.distributed else "images",
               disable=args.quiet or not world.is_main, unit="image")
    for item in todo:
        try:
            single._check_input_files(item.args)
            item.problem = single._load_problem(item.args)
            single._check_patch_fits(model, item.problem[4], item.args)
        except (ValueError, TypeError, FileNotFoundError) as exc:
            _record_failure(out, item, exc, counts, bar)
            continue
        clean, y = item.problem[0], item.problem[1]
        key = (tuple(y.shape), item.problem[4], clean is None)
        pending.setdefault(key, []).append(item)
        if len(pending[key]) == args.batch_size:
            _solve_batch(args, model, pending.pop(key), out, counts, bar)
    for batch in pending.values():
        _solve_batch(args, model, batch, out, counts, bar)
    bar.close()
    return counts["done"], counts["failed"]


def _record_failure(out: Path, item: Item, exc: Exception, counts: dict, bar) -> None:
    from ..io import atomic_write_bytes

    atomic_write_bytes(_paths(out, Path(item.name))["failed"], f"{item.name}: {exc}\n".encode())
    counts["failed"] += 1
    bar.update(1)


def batch_physics(physics_list: list):
    """One operator for a batch of problems of the same size: the shared one, or the masks stacked (B, 1, H, W)."""
    import torch

    from ..physics import Inpainting

    first = physics_list[0]
    if isinstance(first, Inpainting) and len(physics_list) > 1:
        masks = [p.mask.reshape(p.mask.shape[-2:]) for p in physics_list]
        return Inpainting(torch.stack(masks)[:, None], first.noise_model)
    return first


def _solve_batch(args, model, batch: list[Item], out: Path, counts: dict, bar) -> None:
    """Solve the images of `batch` together; write each one's estimate and metrics (per-image failures kept apart)."""
    import time

    import torch

    first = batch[0].args
    y = torch.cat([item.problem[1] for item in batch])
    physics = batch_physics([item.problem[2] for item in batch])
    sigma, image_shape = batch[0].problem[3], batch[0].problem[4]
    start = time.perf_counter()
    try:
        x, lam = single._solve(first, model, y, physics, sigma, image_shape)
    except (ValueError, TypeError) as exc:
        for item in batch:
            _record_failure(out, item, exc, counts, bar)
        return
    seconds = time.perf_counter() - start
    x = x.double().cpu()
    extra = {"batch_size": len(batch), "batch_seconds": seconds, "batch_seed": first.seed}
    for k, item in enumerate(batch):
        estimate = x[k : k + 1]
        if not bool(torch.isfinite(estimate).all()):
            _record_failure(out, item, ValueError(
                f"the reconstruction diverged (non-finite values) with --solver {args.solver}; try a smaller --lr "
                "or --lam, or --solver hqs"), counts, bar)
            continue
        single._write_outputs(item.args, estimate, item.problem[0], seconds / len(batch), sigma, lam, extra)
        failed = _paths(out, Path(item.name))["failed"]
        if failed.exists():
            failed.unlink()
        item.problem = None  # free the batch's tensors as soon as they are written
        counts["done"] += 1
        bar.update(1)


# ------------------------------------------------------------------------------------ the summary
def _row(item: Item, out: Path) -> dict:
    paths = _paths(out, Path(item.name))
    row = {"image": item.name, "status": "missing", "psnr": None, "ssim": None, "seconds": None}
    if is_done(out, Path(item.name)):
        metrics = json.loads(paths["json"].read_text())
        row.update(status="done", psnr=metrics.get("psnr"), ssim=metrics.get("ssim"), seconds=metrics.get("seconds"))
    elif paths["failed"].is_file():
        row.update(status="failed", error=paths["failed"].read_text().strip())
    return row


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def write_summary(args, source: Path, items: list[Item], out: Path) -> list[dict]:
    """OUT/summary.md (a table, one row per image, and the means) and OUT/summary.json; returns the rows."""
    from ..io import atomic_write_bytes, atomic_write_json

    rows = [_row(item, out) for item in items]
    done = [r for r in rows if r["status"] == "done"]
    scored = [r for r in done if r["psnr"] is not None]
    means = {key: (sum(r[key] for r in scored) / len(scored) if scored else None) for key in ("psnr", "ssim")}
    seconds = sum(r["seconds"] or 0.0 for r in done)
    kind = "images" if args.images is not None else "observations"
    lines = [f"# {args.task} with {args.prior} ({args.solver}) on {kind} {source}", "",
             f"checkpoint `{args.checkpoint_path}`, seed {args.seed} + image index, batch size {args.batch_size}; "
             f"{len(done)}/{len(items)} images done"
             + ("" if kind == "images" or args.references else "; no --references, so no metrics"), "",
             "| image | PSNR (dB) | SSIM | seconds | status |", "|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['image']} | {_fmt(r['psnr'], '.2f')} | {_fmt(r['ssim'], '.4f')} | "
                     f"{_fmt(r['seconds'], '.2f')} | {r['status']} |")
    lines.append(f"| **mean** | {_fmt(means['psnr'], '.2f')} | {_fmt(means['ssim'], '.4f')} | {seconds:.2f} (sum) | |")
    lines += ["", "seconds: a batch's solve time divided by its images."]
    atomic_write_bytes(out / SUMMARY_MD, ("\n".join(lines) + "\n").encode())
    finite = {k: (v if v is None or math.isfinite(v) else None) for k, v in means.items()}
    atomic_write_json(out / SUMMARY_JSON, {"task": args.task, "prior": args.prior, "solver": args.solver,
                                           kind: str(source), "seed": args.seed, "batch_size": args.batch_size,
                                           "rows": rows, "mean_psnr": finite["psnr"], "mean_ssim": finite["ssim"],
                                           "seconds": seconds, "world_size": int(os.environ.get("WORLD_SIZE", 1))})
    return rows
