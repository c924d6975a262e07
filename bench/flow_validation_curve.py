"""The validation curve of a flow training checkpoint, and PatchNR's stopping rule read on it (issue 11).

`patchreg train flow --val-images ...` keeps [(step, validation NLL)] in the checkpoint's "training" entry (the
starting weights first). This writes it as a table with the training NLL beside it, and says whether the rule
"the validation NLL has not improved for PATIENCE steps" holds at the last step.

    python bench/flow_validation_curve.py RUN.safetensors --patience 20000 --out bench/results/flow_continuation
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from patchreg import io  # noqa: E402


def read(path: Path) -> dict:
    training = io.load_checkpoint(path, "flow")[1].get("training") or {}
    if not training.get("validation"):
        raise SystemExit(f"{path}: no validation history (train with --val-images)")
    return training


def train_nll_near(history: list, step: int, window: int) -> float | None:
    """Mean of the logged training NLL windows in (step - window, step]."""
    vals = [v for s, v in history if step - window < s <= step]
    return sum(vals) / len(vals) if vals else None


def verdict(validation: list, patience: int) -> dict:
    best_step, best = min(validation, key=lambda h: (h[1], h[0]))
    last_step = validation[-1][0]
    return dict(best_step=best_step, best_nll=best, last_step=last_step, stalled_for=last_step - best_step,
                rule_met=last_step - best_step >= patience, patience=patience)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--patience", type=int, default=20000)
    ap.add_argument("--window", type=int, default=2500, help="training-NLL average over this many steps")
    ap.add_argument("--title", default="Validation curve of a flow training run")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.patience < 1 or args.window < 1:
        raise SystemExit("--patience and --window must be >= 1")
    training = read(Path(args.checkpoint))
    validation = [tuple(h) for h in training["validation"]]
    history = [tuple(h) for h in training.get("history", [])]
    v = verdict(validation, args.patience)
    command = "python bench/flow_validation_curve.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"# {args.title}", "", f"Command: `{command}`", "",
             f"Run: {training['step']} Adam steps, lr {training.get('lr')}, batch {training.get('batch_size')}, "
             f"{training.get('seconds', 0.0) / 60:.1f} min of training time.", "",
             f"| step | validation NLL (nats / patch) | change from the start | training NLL, mean of the last {args.window} steps |",
             "|---|---|---|---|"]
    first = validation[0][1]
    for step, nll in validation:
        tr = train_nll_near(history, step, args.window)
        lines.append(f"| {step} | {nll:.4f} | {nll - first:+.4f} | {'-' if tr is None else f'{tr:.3f}'} |")
    lines += ["", f"Best validation NLL {v['best_nll']:.4f} at step {v['best_step']}; last measured at step "
              f"{v['last_step']}, so it has not improved for {v['stalled_for']} steps: the rule (patience "
              f"{args.patience}) is **{'met' if v['rule_met'] else 'not met'}**."]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"validation": validation, "verdict": v}, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
