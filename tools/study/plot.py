"""Held-out loss vs step for both routers, from the study runs' TensorBoard event files.

Usage: plot.py RUNS_DIR DOC_DIR   (writes DOC_DIR/study/heldout-{scratch,sparsify}.png)
Each curve is the mean over seeds of `eval/loss/all`, with the seeds' range shaded.
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def curve(run_dir: Path) -> dict[int, float]:
    """step -> held-out loss of one run (the last value logged for a step wins)."""
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    if "eval/loss/all" not in acc.Tags()["scalars"]:
        return {}
    return {e.step: e.value for e in acc.Scalars("eval/loss/all")}


def draw(ax, runs: Path, run: str, label: str, style: str) -> None:
    curves = [curve(d) for d in sorted((runs / run).glob("seed*"))]
    curves = [c for c in curves if c]
    if not curves:
        return
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    mean = [sum(c[s] for c in curves) / len(curves) for s in steps]
    lo = [min(c[s] for c in curves) for s in steps]
    hi = [max(c[s] for c in curves) for s in steps]
    (line,) = ax.plot(steps, mean, style, label=f"{label} ({len(curves)} seeds)")
    ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2)


def main() -> None:
    runs, doc = Path(sys.argv[1]), Path(sys.argv[2]) / "study"
    doc.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for router, style in [("topk", "-"), ("seqtopk", "--")]:
        draw(ax, runs, f"scratch-{router}-k4", f"{router}, K = 4", style)
    ax.set(xlabel="step", ylabel="held-out loss (nats/token)",
           title="Pretraining from scratch, 16 experts, K = 4")
    ax.legend()
    fig.tight_layout()
    fig.savefig(doc / "heldout-scratch.png", dpi=100)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, k in zip(axes, (2, 1)):
        for router, style in [("topk", "-"), ("seqtopk", "--")]:
            draw(ax, runs, f"sparsify-{router}-k{k}", f"{router}, K = {k}", style)
        ax.set(xlabel="fine-tuning step", title=f"From the TopK K = 4 model, at K = {k}")
        ax.legend()
    axes[0].set_ylabel("held-out loss (nats/token)")
    fig.tight_layout()
    fig.savefig(doc / "heldout-sparsify.png", dpi=100)


if __name__ == "__main__":
    main()
