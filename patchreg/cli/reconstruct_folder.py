"""`patchreg reconstruct --images DIR --output-dir OUT`: a folder of images, resumable, sharded over ranks.

Every image of DIR (sorted by name) is reconstructed as `--image FILE` would be, with seed --seed + its
index, into OUT/NAME.png (+ .npy) and OUT/NAME.json (its metrics, written last: an image with its .json
is done and skipped by a rerun). The model is loaded once per process. Under torchrun rank r takes the
images r, r + N, ... (patchreg.distributed.shard); an image that fails is recorded in OUT/NAME.failed.txt
and the others continue. At the end rank 0 writes OUT/summary.md and OUT/summary.json over all images.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

from . import reconstruct as single

SUMMARY_MD, SUMMARY_JSON = "summary.md", "summary.json"
# Ranks wait at the final barrier for the slowest one: allow long shards.
BARRIER_TIMEOUT_S = 7 * 24 * 3600.0


def list_images(folder: Path) -> list[Path]:
    """The readable image files of `folder`, sorted; their names (without suffix) must be unique."""
    suffixes = single.IMAGE_SUFFIXES + (".npy",)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise ValueError(f"--images {str(folder)!r} holds no image ({', '.join(suffixes)})")
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise ValueError(f"--images: {stems[path.stem].name} and {path.name} would both be written as "
                             f"{path.stem}.png; rename one")
        stems[path.stem] = path
    return files


def _check_folder_options(args) -> tuple[Path, Path]:
    for option, value in (("--output", args.output), ("--metrics", args.metrics)):
        if value is not None:
            raise ValueError(f"{option} does not apply with --images (every image gets OUT/NAME.png and "
                             f"OUT/NAME.json in --output-dir)")
    if args.output_dir is None:
        raise ValueError("--images needs --output-dir OUT")
    images, out = Path(args.images), Path(args.output_dir)
    if not images.is_dir():
        raise FileNotFoundError(f"--images {args.images!r}: no such folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output-dir {args.output_dir!r} is a file, not a folder")
    if out.resolve() == images.resolve():
        raise ValueError("--output-dir must differ from --images (the estimates would be read as inputs next time)")
    single._check_output_path("--output-dir", out / "summary.json", (".json",))
    return images, out


def _paths(out: Path, image: Path) -> dict[str, Path]:
    stem = out / image.stem
    return {"png": stem.with_suffix(".png"), "npy": stem.with_suffix(".npy"), "json": stem.with_suffix(".json"),
            "failed": stem.with_suffix(".failed.txt")}


def is_done(out: Path, image: Path) -> bool:
    paths = _paths(out, image)
    return all(paths[key].is_file() for key in ("png", "npy", "json"))


def run_folder(args) -> int:
    from .. import distributed

    images_dir, out = _check_folder_options(args)
    single._check_options(args)
    files = list_images(images_dir)
    args.checkpoint_path = single._resolve_checkpoint(args)
    with distributed.session("cpu", timeout_s=BARRIER_TIMEOUT_S) as world:
        if world.is_main:
            out.mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        done, failed = _reconstruct_shard(args, files, out, world)
        distributed.barrier()  # every rank's files are written
        if not world.is_main:
            return 0
        rows = write_summary(args, files, out)
    failures = [row for row in rows if row["status"] == "failed"]
    print(f"{len(files)} images: {sum(r['status'] == 'done' for r in rows)} done, {len(failures)} failed; "
          f"summary: {out / SUMMARY_MD}")
    print((out / SUMMARY_MD).read_text())
    return 1 if failures else 0


def _reconstruct_shard(args, files: list[Path], out: Path, world) -> tuple[int, int]:
    """Reconstruct this rank's images not done yet; returns (done now, failed now)."""
    import torch
    from tqdm.auto import tqdm

    from ..io import atomic_write_bytes

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    mine = [(i, f) for i, f in enumerate(files)][world.rank :: world.world_size]
    todo = [(i, f) for i, f in mine if not is_done(out, f)]
    model = single._load_model(args, args.checkpoint_path) if todo else None
    done = failed = 0
    bar = tqdm(todo, desc=f"images (rank {world.rank})" if world.distributed else "images",
               disable=args.quiet or not world.is_main, unit="image")
    for index, image in bar:
        paths = _paths(out, image)
        one = copy.copy(args)
        one.images, one.image, one.quiet = None, str(image), True
        one.output, one.metrics, one.seed = str(paths["png"]), str(paths["json"]), args.seed + index
        try:
            single._check_input_files(one)
            problem = single._load_problem(one)
            single._solve_and_write(one, model, *problem)
        except (ValueError, TypeError, FileNotFoundError) as exc:
            atomic_write_bytes(paths["failed"], f"{image.name}: {exc}\n".encode())
            failed += 1
            continue
        if paths["failed"].exists():
            paths["failed"].unlink()
        done += 1
    return done, failed


def _row(image: Path, out: Path) -> dict:
    paths = _paths(out, image)
    row = {"image": image.name, "status": "missing", "psnr": None, "ssim": None, "seconds": None}
    if is_done(out, image):
        metrics = json.loads(paths["json"].read_text())
        row.update(status="done", psnr=metrics.get("psnr"), ssim=metrics.get("ssim"), seconds=metrics.get("seconds"))
    elif paths["failed"].is_file():
        row.update(status="failed", error=paths["failed"].read_text().strip())
    return row


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def write_summary(args, files: list[Path], out: Path) -> list[dict]:
    """OUT/summary.md (a table, one row per image, and the means) and OUT/summary.json; returns the rows."""
    from ..io import atomic_write_bytes, atomic_write_json

    rows = [_row(f, out) for f in files]
    done = [r for r in rows if r["status"] == "done"]
    scored = [r for r in done if r["psnr"] is not None]
    means = {key: (sum(r[key] for r in scored) / len(scored) if scored else None) for key in ("psnr", "ssim")}
    seconds = sum(r["seconds"] or 0.0 for r in done)
    lines = [f"# {args.task} with {args.prior} ({args.solver}) on {args.images}", "",
             f"checkpoint `{args.checkpoint_path}`, seed {args.seed} + image index; "
             f"{len(done)}/{len(files)} images done", "",
             "| image | PSNR (dB) | SSIM | seconds | status |", "|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['image']} | {_fmt(r['psnr'], '.2f')} | {_fmt(r['ssim'], '.4f')} | "
                     f"{_fmt(r['seconds'], '.2f')} | {r['status']} |")
    lines.append(f"| **mean** | {_fmt(means['psnr'], '.2f')} | {_fmt(means['ssim'], '.4f')} | {seconds:.2f} (sum) | |")
    atomic_write_bytes(out / SUMMARY_MD, ("\n".join(lines) + "\n").encode())
    finite = {k: (v if v is None or math.isfinite(v) else None) for k, v in means.items()}
    atomic_write_json(out / SUMMARY_JSON, {"task": args.task, "prior": args.prior, "solver": args.solver,
                                           "images": str(args.images), "seed": args.seed, "rows": rows,
                                           "mean_psnr": finite["psnr"], "mean_ssim": finite["ssim"],
                                           "seconds": seconds, "world_size": int(os.environ.get("WORLD_SIZE", 1))})
    return rows
