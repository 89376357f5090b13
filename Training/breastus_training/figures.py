"""Evaluation figures (matplotlib, Agg backend): training curves and a best/worst case grid.

The grid follows the layout of Figure 2 of the paper: one row per case with
the image, the ground truth, the predicted (raw) mask, the processed mask and
the attention heatmap over the image.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from BreastUSSegmentLib.preprocessing import normalize_intensity, to_grayscale_frames  # noqa: E402

CURVE_COLUMNS = ("epoch", "train_loss", "val_loss", "val_iou")
GRID_COLUMNS = ("Image", "Ground truth", "Predicted (raw)", "Processed", "Attention")
CELL_INCHES = 2.0
DPI = 100


@dataclass
class CaseFigure:
    """One row of the case grid; every array is on the image's own ``(H, W)`` grid."""

    case_id: str
    label: str
    image: np.ndarray  # (H, W) or (H, W, C), any dtype
    target: np.ndarray  # bool
    raw_mask: np.ndarray  # bool
    processed_mask: np.ndarray  # bool
    attention: np.ndarray  # float in [0, 1]
    dice: float  # processed Dice, shown in the row title


def read_metrics_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Columns of a training run's ``metrics.csv`` as float arrays (empty cells become NaN)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"training metrics not found: {path} (is --run-dir a training run folder?)")
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        missing = [name for name in CURVE_COLUMNS if name not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (found {reader.fieldnames})")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path}: no epochs recorded")
    columns = {}
    for name in reader.fieldnames:
        try:
            columns[name] = np.array([float(row[name]) if row[name] not in ("", None) else math.nan for row in rows])
        except ValueError as error:
            raise ValueError(f"{path}: column {name!r} holds a value that is not a number ({error})") from error
    return columns


def selection_score(columns: dict[str, np.ndarray]) -> tuple[str, np.ndarray]:
    """The score ``train`` chose its saved epoch by: ``val_score`` (the mean over the datasets of their val IoU),
    or for runs from before it existed the val IoU."""
    name = "val_score" if "val_score" in columns and np.isfinite(columns["val_score"]).any() else "val_iou"
    return name, columns[name]


def chosen_epoch(columns: dict[str, np.ndarray]) -> tuple[float, float] | None:
    """``(epoch, score)`` of the epoch ``train`` saved: the first with the highest selection score."""
    _, score = selection_score(columns)
    if not np.isfinite(score).any():
        return None
    best = int(np.nanargmax(score))
    return float(columns["epoch"][best]), float(score[best])


def training_curves_figure(columns: dict[str, np.ndarray]):
    """Loss (training and validation) and the validation scores per epoch, side by side; the right panel draws
    the selection score and marks the chosen epoch. Legends sit beside the panels, off the curves."""
    epochs = columns["epoch"]
    figure, (loss_axis, score_axis) = plt.subplots(1, 2, figsize=(10, 4), dpi=DPI, constrained_layout=True)
    loss_axis.plot(epochs, columns["train_loss"], label="training")
    loss_axis.plot(epochs, columns["val_loss"], label="validation")
    loss_axis.set(xlabel="epoch", ylabel="loss", title="Loss")
    loss_axis.legend(loc="upper left", bbox_to_anchor=(0.0, -0.16), ncol=2, fontsize=8, frameon=False)
    name, score = selection_score(columns)
    datasets = sorted(key[len("val_iou_"):] for key in columns if key.startswith("val_iou_"))
    for dataset in datasets if name == "val_score" else []:
        score_axis.plot(epochs, columns[f"val_iou_{dataset}"], label=f"IoU {dataset}", linewidth=1, alpha=0.7)
    if name == "val_score":
        score_axis.plot(epochs, columns["val_iou"], label="IoU, all images", color="tab:gray", linewidth=1, alpha=0.7)
    score_axis.plot(epochs, score, color="tab:green", linewidth=2,
                    label="selection score (mean of the datasets' IoU)" if name == "val_score" else "IoU (selection)")
    chosen = chosen_epoch(columns)
    if chosen is not None:
        score_axis.axvline(chosen[0], color="tab:red", linestyle=":", linewidth=1)
        score_axis.scatter([chosen[0]], [chosen[1]], color="tab:red", zorder=3,
                           label=f"chosen: epoch {chosen[0]:g}, score {chosen[1]:.3f}")
    score_axis.set(xlabel="epoch", ylabel="score", title="Validation", ylim=(0, 1))
    score_axis.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    for axis in (loss_axis, score_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    return figure


def plot_training_curves(metrics_csv: str | os.PathLike, output_png: str | os.PathLike) -> Path:
    """The training curves of a run's ``metrics.csv`` (see :func:`training_curves_figure`) as a PNG."""
    return _save(training_curves_figure(read_metrics_csv(metrics_csv)), output_png)


def _display_gray(image: np.ndarray) -> np.ndarray:
    return normalize_intensity(to_grayscale_frames(image))[0]


def plot_case_grid(cases: list[CaseFigure], output_png: str | os.PathLike, title: str | None = None) -> Path:
    """One row per case, columns as in :data:`GRID_COLUMNS`; masks in white on black."""
    if not cases:
        raise ValueError("no cases to draw")
    rows, columns = len(cases), len(GRID_COLUMNS)
    figure, axes = plt.subplots(
        rows, columns, figsize=(columns * CELL_INCHES, rows * CELL_INCHES + 0.5), dpi=DPI,
        squeeze=False, constrained_layout=True,
    )
    for row, case in enumerate(cases):
        gray = _display_gray(case.image)
        for name, array in (("target", case.target), ("raw_mask", case.raw_mask),
                            ("processed_mask", case.processed_mask), ("attention", case.attention)):
            if np.shape(array) != gray.shape:
                raise ValueError(f"case {case.case_id}: {name} has shape {np.shape(array)}, the image {gray.shape}")
        panels = (gray, case.target, case.raw_mask, case.processed_mask)
        for column, panel in enumerate(panels):
            axes[row, column].imshow(np.asarray(panel, dtype=np.float32), cmap="gray", vmin=0, vmax=1)
        axes[row, 4].imshow(gray, cmap="gray", vmin=0, vmax=1)
        axes[row, 4].imshow(case.attention, cmap="jet", vmin=0, vmax=1, alpha=0.45)
        name = case.case_id if case.label in case.case_id else f"{case.case_id} ({case.label})"
        axes[row, 0].set_ylabel(f"{name}\nDice {case.dice:.3f}", fontsize=8)
        for column in range(columns):
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
            if row == 0:
                axes[row, column].set_title(GRID_COLUMNS[column], fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, output_png)


def _save(figure, output_png: str | os.PathLike) -> Path:
    output_png = Path(output_png)
    output_png.parent.mkdir(parents=True, exist_ok=True)
    try:
        figure.savefig(output_png, dpi=DPI)
    finally:
        plt.close(figure)
    return output_png
