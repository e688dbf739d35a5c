"""Learning curves of the folds (one PNG: training and stopping loss, stopping C-index per epoch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from survival_model.training.folds import FoldResult


def learning_curves(folds: Sequence[FoldResult], path: Path) -> Path:
    """Write the folds' curves to ``path`` (PNG), the best epoch of each fold marked."""
    import matplotlib  # matplotlib: only when curves are drawn (the ensemble stage's key imports this module)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: as above, after choosing the Agg backend

    fig, (loss_ax, c_ax) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for i, fold in enumerate(folds):
        history = fold.history()
        colour = f"C{i % 10}"
        loss_ax.plot(history["epoch"], history["train_loss"], color=colour, alpha=0.5, linestyle="--")
        loss_ax.plot(history["epoch"], history["stop_loss"], color=colour, label=fold.name)
        c_ax.plot(history["epoch"], history["stop_cindex"], color=colour, label=fold.name)
        best = history.loc[history["epoch"] == fold.summary["best_epoch"]]
        c_ax.scatter(best["epoch"], best["stop_cindex"], color=colour, zorder=3)
        loss_ax.scatter(best["epoch"], best["stop_loss"], color=colour, zorder=3)
    loss_ax.set(title="loss (dashed: training, solid: stopping patients)", xlabel="epoch", ylabel="loss")
    c_ax.axhline(0.5, color="grey", linewidth=0.8)
    c_ax.set(title="C-index on the stopping patients (dot: epoch kept)", xlabel="epoch", ylabel="Harrell's C")
    c_ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
