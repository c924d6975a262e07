"""Training curves of the three patch priors, read from their checkpoints (no training is rerun).

Every trainer stores its history in the checkpoint header: the GMM the mean log-likelihood per
patch after each EM iteration, the flow the mean training NLL per logged window of steps, the chart
mixture its loss per logged step and phase. This script plots them (one PNG, three panels) and
writes a markdown summary with the numbers that decide convergence: the GMM's gain per EM iteration
against the 1e-4 nats/patch target, the flow's NLL over the last windows.

    python bench/training_curves.py --gmm pretrained:gmm --flow pretrained:flow --charts pretrained:charts \
        --out bench/results/training_curves
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from patchreg.pretrained import resolve_checkpoint  # noqa: E402

GMM_TARGET_GAIN = 1e-4  # nats per patch per EM iteration (issue 11's convergence rule)


def header(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["patchreg"])


def gmm_curve(path):
    h = header(path)
    loglik = [float(v) for v in h.get("history") or []]
    gains = [b - a for a, b in zip(loglik, loglik[1:])]
    return loglik, gains, h.get("hyperparameters", {})


def flow_curve(path):
    training = header(path).get("training") or {}
    history = [(int(s), float(v)) for s, v in training.get("history", [])]
    return history, training


def smooth(values, window: int):
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1): i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gmm", default="pretrained:gmm")
    ap.add_argument("--flow", default="pretrained:flow")
    ap.add_argument("--charts", default="pretrained:charts")
    ap.add_argument("--out", default="bench/results/training_curves")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    loglik, gains, hyper = gmm_curve(resolve_checkpoint(args.gmm))
    flow_hist, flow_training = flow_curve(resolve_checkpoint(args.flow))
    charts_hist = header(resolve_checkpoint(args.charts)).get("history") or []

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    ax.semilogy(range(2, len(loglik) + 1), [max(g, 1e-8) for g in gains], "o-", ms=3, label="gain per iteration")
    ax.axhline(GMM_TARGET_GAIN, color="r", ls="--", label="target 1e-4")
    ax.set_xlabel("EM iteration")
    ax.set_ylabel("mean log-likelihood gain (nats/patch)")
    ax.set_title(f"GMM K={header(resolve_checkpoint(args.gmm))['n_components']}: "
                 f"{hyper.get('patches_per_iter', '?')} patches/iteration")
    ax.legend()
    ax = axes[1]
    steps = [s for s, _ in flow_hist]
    nll = [v for _, v in flow_hist]
    ax.plot(steps, nll, lw=0.4, alpha=0.4, label="window mean")
    ax.plot(steps, smooth(nll, 50), lw=1.5, label="running mean of 50 windows")
    if nll:
        ax.set_ylim(min(smooth(nll, 50)) - 3, sorted(nll)[len(nll) // 20] + 10)
    ax.set_xlabel("Adam step")
    ax.set_ylabel("training NLL (nats/patch)")
    ax.set_title(f"PatchNR flow: {flow_training.get('step', 0)} steps, batch {flow_training.get('batch_size', '?')}")
    ax.legend()
    ax = axes[2]
    for phase in dict.fromkeys(h["phase"] for h in charts_hist):
        rows = [h for h in charts_hist if h["phase"] == phase]
        ax.plot([h["step"] for h in rows], [h["loss"] for h in rows], "o-", ms=3, label=phase)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("chart mixture")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=90)
    plt.close(fig)

    command = "python bench/training_curves.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# Training curves of the shipped patch priors", "", f"Command: `{command}`", "",
             f"![curves]({out.with_suffix('.png').name})", "", "## GMM (EPLL)", ""]
    if gains:
        first_below = next((i + 2 for i, g in enumerate(gains) if abs(g) < GMM_TARGET_GAIN), None)
        lines += [f"- {len(loglik)} EM iterations, final mean log-likelihood {loglik[-1]:.4f} nats/patch "
                  f"(on the iteration's training patches).",
                  f"- gain of the last 5 iterations: {', '.join(f'{g:.4f}' for g in gains[-5:])} nats/patch; "
                  f"target {GMM_TARGET_GAIN:g}: " + ("reached at iteration " + str(first_below) if first_below
                                                     else "**not reached**") + "."]
    lines += ["", "## PatchNR flow", ""]
    if nll:
        tail = nll[-50:]
        previous = nll[-250:-200] if len(nll) >= 250 else []
        lines += [f"- {flow_training.get('step')} steps in {flow_training.get('seconds', 0) / 3600:.1f} h of training.",
                  f"- training NLL, mean of the last 50 windows ({flow_hist[-50][0]}-{flow_hist[-1][0]}): "
                  f"{statistics.mean(tail):.3f} nats/patch"
                  + (f"; 20k steps earlier: {statistics.mean(previous):.3f}" if previous else "") + "."]
    lines += ["", "## Chart mixture", ""]
    if charts_hist:
        lines.append(f"- {charts_hist[-1]['step']} steps, final loss {charts_hist[-1]['loss']:.3f} "
                     f"({charts_hist[-1]['phase']}).")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
