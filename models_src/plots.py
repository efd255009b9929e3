"""history.png: training loss and validation curves, as the movie recommender plotted them."""

from __future__ import annotations

from pathlib import Path


def plot_history(history: list[dict], path: Path, monitor: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a scheduler's machine
    import matplotlib.pyplot as plt

    if not history:
        return
    epochs = [row["epoch"] for row in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [row["train_loss"] for row in history], marker="o")
    left.set(title="training loss", xlabel="epoch", ylabel="loss")
    for key in sorted(
        k for k in history[0] if k.startswith("val_") and "@" in k or k == "val_rmse"
    ):
        if key.startswith(("val_hit", "val_mrr", "val_coverage")):
            continue
        right.plot(
            epochs, [row[key] for row in history], marker="o", label=key.removeprefix("val_")
        )
    right.set(title=f"validation (early stopping on {monitor})", xlabel="epoch")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
