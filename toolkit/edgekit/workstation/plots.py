"""Report figures (workstation only: matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from edgekit import fileio


def _save(figure: Any, path: Path) -> Path:
    with fileio.atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=110, bbox_inches="tight", format="png")
    plt.close(figure)
    return path


def confusion_matrix(matrix: np.ndarray, labels: Sequence[str], path: Path, title: str) -> Path:
    figure, axes = plt.subplots(figsize=(8, 7))
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    threshold = matrix.max() / 2
    for row in range(matrix.shape[0]):
        for column in range(matrix.shape[1]):
            value = int(matrix[row, column])
            axes.text(column, row, str(value), ha="center", va="center", fontsize=7,
                      color="white" if value > threshold else "black")
    return _save(figure, path)


def training_curves(epochs: Sequence[dict[str, Any]], path: Path) -> Path:
    numbers = [record["epoch"] for record in epochs]
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4))
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.plot(numbers, [record[metric] for record in epochs], marker=".", label="train")
        axes.plot(numbers, [record[f"val_{metric}"] for record in epochs], marker=".",
                  label="validation")
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3)
        axes.legend()
    loss_axes.set_title("loss")
    accuracy_axes.set_title("accuracy")
    return _save(figure, path)


def _show(axes: Any, image: np.ndarray) -> None:
    if image.shape[-1] == 1:
        axes.imshow(image[:, :, 0], cmap="gray", vmin=0, vmax=255)
    else:
        axes.imshow(image)


def prediction_grid(images: np.ndarray, labels: np.ndarray, predicted: np.ndarray,
                    confidence: np.ndarray, names: Sequence[str], path: Path,
                    columns: int = 8) -> Path:
    """Test images with their predicted label; wrong predictions in red with the true label."""
    rows = int(np.ceil(len(images) / columns))
    figure, grid = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.9))
    for index, axes in enumerate(np.ravel(grid)):
        axes.axis("off")
        if index >= len(images):
            continue
        _show(axes, images[index])
        right = predicted[index] == labels[index]
        text = f"{names[predicted[index]]}\n{confidence[index]:.0%}"
        if not right:
            text += f"\n(true: {names[labels[index]]})"
        axes.set_title(text, fontsize=7, color="green" if right else "red")
    figure.suptitle("test predictions (red: wrong)")
    return _save(figure, path)


def samples_per_class(images: np.ndarray, labels: np.ndarray, names: Sequence[str], path: Path,
                      per_class: int = 8) -> Path:
    figure, grid = plt.subplots(len(names), per_class, figsize=(per_class * 1.1, len(names) * 1.2),
                                squeeze=False)
    for row, label in enumerate(names):
        members = np.flatnonzero(labels == row)[:per_class]
        for column in range(per_class):
            axes = grid[row, column]
            axes.axis("off")
            if column < len(members):
                _show(axes, images[members[column]])
        grid[row, 0].set_title(label, fontsize=8, loc="left")
    figure.suptitle("training samples per class")
    return _save(figure, path)
