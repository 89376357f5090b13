"""``breastus-train train``: train the Attention U-Net on the train split of a manifest.

Default recipe: BCE on the logits (``BCEWithLogitsLoss``), Adam (lr 1e-3), the
core's default ``ModelConfig()``, 256x256 input, batch 8. Each epoch is
validated on the manifest's ``val`` split (loss, mean per-image Dice and IoU at
threshold 0.5 on the input grid, pooled and per dataset); the validation score
(the mean over the datasets of their val IoU, so that each hospital counts the
same; with one dataset simply its val IoU) selects the saved model and drives
early stopping. The ``test`` split is never read here.

Precision: ``--precision auto`` trains under bf16 autocast on a CPU with native
bf16 (AVX512-BF16/AMX), fp16 autocast with a gradient scaler on CUDA, and fp32
otherwise; the weights, the loss and the optimizer state stay fp32.

The run folder holds ``config.json``, ``metrics.csv``, TensorBoard scalars,
``checkpoint_last.pt`` (written atomically every epoch) and ``best.safetensors``
with its model card; with ``--swa-start`` also ``swa.safetensors``, the average
of the weights of the later epochs (see ``weight_average``). ``--deep-supervision``
trains extra masks from the coarser decoder levels (see ``deep_supervision``);
their heads live in the checkpoint only. Running the same
command again resumes from the checkpoint and gives the same result as an
uninterrupted run.

Multi-GPU: ``torchrun --nproc_per_node=N -m breastus_training train ...``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import platform
import random
import subprocess
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from BreastUSSegmentLib.device import DEVICE_CHOICES, select_device
from BreastUSSegmentLib.fileio import write_text_atomically
from BreastUSSegmentLib.metrics import dice_score, iou_score
from BreastUSSegmentLib.model import AttentionUNet, ModelConfig
from BreastUSSegmentLib.options import UNTUNED_POSTPROCESSING
from BreastUSSegmentLib.weights import load_model, save_model, sha256_of_file

from .augment import AUGMENTATIONS, get_augmentation
from .busi import NORMAL_CLASS, load_manifest
from .checkpoint import ResumeError, capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .dataset import PreparedCases, SegmentationDataset, preload_cases
from .datasets import ADAPTER_BY_NAME, DataRoots
from .deep_supervision import DeeplySupervisedUNet, deep_supervision_loss
from .precision import PRECISIONS, autocast, resolve_precision
from .scanner_augment import TRANSFORMS
from .weight_average import SWA_NAME, averaged_epochs, recompute_batch_norm

CHECKPOINT_NAME = "checkpoint_last.pt"
BEST_NAME = "best.safetensors"
# What every checkpoint holds (later options add more, read with defaults).
CHECKPOINT_KEYS = ("config", "model", "optimizer", "scheduler", "rng", "epoch", "best_score", "best_epoch",
                   "epochs_without_improvement", "stopped", "history")
METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "val_iou", "lr", "seconds")
# Settings a resumed run may change: where and how fast it runs, how long it may go on (epochs,
# which may only grow, and early-stopping patience); none of them changes the epochs already trained.
RESUMABLE_CHANGES = {"data", "run_dir", "num_workers", "threads", "no_progress", "device", "epochs", "patience"}
# Options added after runs were already made: a stored run without one used this value.
LATER_OPTION_DEFAULTS = {"normal_repeat": 1, "swa_start": 0, "precision": "fp32", "augment_off": [],
                         "upsample": "transposed", "lesion_head_weight": 0.0, "deep_supervision": 0.0}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stops before that epoch replaces anything saved."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, action="append",
                        help="a dataset folder the manifest's paths are relative to (BUSI or BrEaST, recognised by "
                             "its layout); repeat for each dataset of the split")
    parser.add_argument("--split", required=True, type=Path, help="split manifest written by 'prepare'")
    parser.add_argument("--run-dir", required=True, type=Path, help="output folder; an existing run there is resumed")
    parser.add_argument("--epochs", type=int, default=100, help="number of epochs (default 100)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch and per process (default 8)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--loss", choices=("bce", "dice_bce"), default="bce", help="training loss (default bce)")
    parser.add_argument("--scheduler", choices=("none", "cosine", "plateau"), default="none",
                        help="learning-rate schedule (default none)")
    parser.add_argument("--augment", choices=AUGMENTATIONS, default="standard",
                        help="augmentation: standard; strong (wider rotation, zoom and intensity ranges plus a "
                             "shift); or scanner (strong plus crops around the lesion, depth gain, blur, speckle "
                             "grain, probe outline and on-screen marks); default standard")
    parser.add_argument("--augment-off", type=lambda text: sorted(filter(None, text.split(","))), default=[],
                        metavar="NAMES", help=f"scanner transforms to switch off, comma-separated ({', '.join(TRANSFORMS)})")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 autocast on a CPU with native bf16, fp16 on CUDA, else fp32 (default auto)")
    parser.add_argument("--patience", type=int, default=20,
                        help="stop after this many epochs without a better validation IoU; 0 disables (default 20)")
    parser.add_argument("--input-size", type=int, nargs="+", default=[256], metavar="N",
                        help="network input size: N for NxN or H W (default 256)")
    parser.add_argument("--base-channels", type=int, default=ModelConfig.base_channels, help="channels of the first level")
    parser.add_argument("--depth", type=int, default=ModelConfig.depth, help="number of poolings")
    parser.add_argument("--dropout", type=float, default=ModelConfig.dropout, help="dropout probability")
    parser.add_argument("--upsample", choices=("bilinear", "transposed"), default=ModelConfig.upsample,
                        help="decoder up-sampling: bilinear + 3x3 conv (default), or the older transposed conv")
    parser.add_argument("--lesion-head-weight", type=float, default=0.0, metavar="W",
                        help="add the image-level lesion-present head and train it with BCE on whether the image "
                             "holds a lesion, weighted W against the segmentation loss; 0 = no head (default)")
    parser.add_argument("--deep-supervision", type=float, default=0.0, metavar="W",
                        help="also train a mask from every decoder level above the output (training-only 1x1 "
                             "convolutions): the loss adds W x (1/2 loss of the level above the output + 1/4 of the "
                             "next + ...), train_loss includes it, val_loss does not; the exported model is "
                             "unchanged; 0 = off (default)")
    parser.add_argument("--init-weights", type=Path, default=None, metavar="SAFETENSORS",
                        help="start from these weights (e.g. an earlier run's best.safetensors, same architecture) "
                             "with a fresh optimizer and schedule; default: random initialisation")
    parser.add_argument("--normal-repeat", type=int, default=1, metavar="K",
                        help="show each normal (lesion-free) training image K times per epoch, each time with its "
                             "own augmentation, to weigh false lesions on normal tissue more (default 1)")
    parser.add_argument("--swa-start", type=int, default=0, metavar="EPOCH",
                        help="average the weights of every epoch from EPOCH on and save the average as "
                             f"{SWA_NAME} at the end (stochastic weight averaging; use a constant --lr, "
                             "i.e. --scheduler none); 0 = off (default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and augmentation")
    parser.add_argument("--limit", type=int, default=None, help="use only this many training cases (smoke tests)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader workers (default 0 on CPU, 4 on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="device (default auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (one summary line per epoch)")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.get_num_threads())
    context = setup_process(config)
    try:
        train(config, context)
    finally:
        if context.distributed:
            dist.destroy_process_group()
        # leave the caller's process as it was (the command can be called from Python)
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.set_num_threads(previous[2])
    return 0


def config_from_args(args: argparse.Namespace) -> dict:
    """The run configuration (every option, JSON-friendly), validated."""
    config = {key: (str(value) if isinstance(value, Path) else value)
              for key, value in sorted(vars(args).items()) if key not in ("handler", "command")}
    config["data"] = [str(path) for path in (args.data if isinstance(args.data, list) else [args.data])]
    get_augmentation(config.get("augment", "standard"), config.get("augment_off", []))  # names checked early
    size = config["input_size"]
    if len(size) not in (1, 2):
        raise ValueError(f"--input-size takes one or two numbers, got {size}")
    config["input_size"] = [size[0], size[0]] if len(size) == 1 else list(size)
    model_config = model_config_of(config)
    if any(side % model_config.size_multiple for side in config["input_size"]):
        raise ValueError(f"--input-size {config['input_size']} must be a multiple of {model_config.size_multiple} "
                         f"(2 to the power of --depth {config['depth']})")
    for key in ("epochs", "batch_size", "normal_repeat"):
        if config[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be at least 1, got {config[key]}")
    if not 0 <= config["swa_start"] <= config["epochs"]:
        raise ValueError(f"--swa-start must be between 1 and --epochs {config['epochs']} (or 0 for off), "
                         f"got {config['swa_start']}")
    for key in ("lesion_head_weight", "deep_supervision"):
        if not math.isfinite(config[key]) or config[key] < 0:
            raise ValueError(f"--{key.replace('_', '-')} must be a number >= 0, got {config[key]}")
    if config["deep_supervision"] and config["depth"] < 2:
        raise ValueError(f"--deep-supervision needs --depth 2 or more (coarser decoder levels), got {config['depth']}")
    if config["lr"] <= 0:
        raise ValueError(f"--lr must be positive, got {config['lr']}")
    if config["limit"] is not None and config["limit"] < 1:
        raise ValueError(f"--limit must be at least 1, got {config['limit']}")
    return config


@dataclass
class ProcessContext:
    """Where this process trains: its device and its place in a torchrun job."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_process(config: dict) -> ProcessContext:
    """Pick the device, set the determinism flags, join a torchrun job when there is one."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    if config["threads"]:
        torch.set_num_threads(config["threads"])
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        device = select_device(config["device"])
    except RuntimeError as error:  # e.g. --device cuda without a GPU: a settings error, reported by the CLI
        raise ValueError(str(error)) from error
    if world_size <= 1:
        return ProcessContext(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return ProcessContext(device=device, rank=rank, world_size=world_size)


def model_config_of(config: dict) -> ModelConfig:
    """The architecture a run configuration builds."""
    return ModelConfig(base_channels=config["base_channels"], depth=config["depth"], dropout=config["dropout"],
                       upsample=config.get("upsample", LATER_OPTION_DEFAULTS["upsample"]),
                       lesion_head=config.get("lesion_head_weight", 0.0) > 0)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def training_cases(manifest, limit: int | None, seed: int, normal_repeat: int = 1) -> list:
    """The train split (or a seeded random subset of ``limit`` cases), normal cases listed ``normal_repeat`` times."""
    cases = manifest.cases_for("train")
    if limit is not None and limit < len(cases):
        cases = random.Random(seed).sample(cases, limit)
    repeats = [case for case in cases if case.label == NORMAL_CLASS] * (normal_repeat - 1)
    return cases + repeats


class SoftDiceBCELoss(nn.Module):
    """BCE on logits plus (1 - soft Dice) per image, averaged over the batch."""

    def __init__(self, smooth: float = 1.0):
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probability = torch.sigmoid(logits).flatten(1)
        target_flat = target.flatten(1)
        overlap = (probability * target_flat).sum(1)
        dice = (2 * overlap + self.smooth) / (probability.sum(1) + target_flat.sum(1) + self.smooth)
        return self.bce(logits, target) + (1 - dice).mean()


def lesion_presence(masks: torch.Tensor) -> torch.Tensor:
    """Per image of an ``(N, 1, H, W)`` mask batch, 1.0 when it holds a lesion pixel, else 0.0."""
    return (masks.flatten(1).amax(1) >= 0.5).float()


def initialise_from(model: AttentionUNet, weights_path: str, verbose: bool) -> None:
    """Copy the weights of an exported model (checksum-verified) into ``model``; the architectures must match.

    A model without a lesion head may start one that has it: the head alone keeps its fresh initialisation.
    """
    source, card = load_model(weights_path)
    if card.model_config.members != 1:
        raise ValueError(f"--init-weights {weights_path} is an ensemble of {card.model_config.members} networks; "
                         "start from one of its members (the files named in its card's training.members)")
    adds_head = model.config.lesion_head and not card.model_config.lesion_head
    if replace(card.model_config, lesion_head=model.config.lesion_head) != model.config or (
            card.model_config.lesion_head and not model.config.lesion_head):
        raise ValueError(f"--init-weights {weights_path} has architecture {card.model_config}, "
                         f"but this run builds {model.config}; pass the matching --base-channels/--depth/--dropout/"
                         f"--upsample/--lesion-head-weight (weights from before the bilinear up-sampling need "
                         f"--upsample transposed)")
    missing, _unexpected = model.load_state_dict(source.state_dict(), strict=not adds_head)
    if adds_head and any(not key.startswith("lesion_head.") for key in missing):
        raise ValueError(f"--init-weights {weights_path} lacks tensors of this architecture: {missing}")
    if verbose:
        print(f"initialised from {weights_path} (sha256 {card.sha256[:12]}…)"
              + ("; the lesion head starts fresh" if adds_head else ""))


def init_weights_sha256(path: str, checkpoint: dict | None) -> str:
    """Checksum of the --init-weights file; a resumed run no longer needs the file and keeps its recorded one."""
    if Path(path).is_file():
        return sha256_of_file(path)
    if checkpoint is not None and checkpoint["config"].get("init_weights") == path:
        return checkpoint["config"]["init_weights_sha256"]
    raise ValueError(f"--init-weights {path}: file not found")


def make_loss(name: str) -> nn.Module:
    return nn.BCEWithLogitsLoss() if name == "bce" else SoftDiceBCELoss()


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, epochs: int):
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=5)
    return None


@torch.no_grad()
def validate(model: nn.Module, cases: PreparedCases, loss_fn: nn.Module, device: torch.device,
             batch_size: int, precision: str) -> dict:
    """Validation loss and mean per-image Dice and IoU at threshold 0.5 (empty vs empty counts 1.0), pooled and
    per dataset (``val_dice_<name>``, ``val_iou_<name>``), and the selection score ``val_score``."""
    model.eval()
    with_head = model.config.lesion_head
    total_loss, dice, iou, presence_right = 0.0, [], [], []
    for start in range(0, len(cases), batch_size):
        images = cases.images[start:start + batch_size].to(device)
        masks = cases.masks[start:start + batch_size].to(device)
        with autocast(device, precision):
            output = model(images)
        logits = output.logits.float()
        if with_head:
            presence_right.extend(((output.lesion_logit.float() >= 0) == (lesion_presence(masks) > 0)).tolist())
        total_loss += float(loss_fn(logits, masks)) * len(images)
        predictions = (logits >= 0).cpu().numpy()  # sigmoid(logit) >= 0.5
        targets = masks.cpu().numpy() >= 0.5
        for prediction, target in zip(predictions, targets):
            dice.append(dice_score(prediction[0], target[0]))
            iou.append(iou_score(prediction[0], target[0]))
    scores = {"val_loss": total_loss / len(cases), "val_dice": float(np.mean(dice)), "val_iou": float(np.mean(iou))}
    if with_head:
        scores["val_presence_accuracy"] = float(np.mean(presence_right))  # lesion head at probability 0.5
    names = cases.datasets or []
    for name in dict.fromkeys(names):
        chosen = [index for index, case_dataset in enumerate(names) if case_dataset == name]
        scores[f"val_dice_{name}"] = float(np.mean([dice[index] for index in chosen]))
        scores[f"val_iou_{name}"] = float(np.mean([iou[index] for index in chosen]))
    per_dataset = [scores[f"val_iou_{name}"] for name in dict.fromkeys(names)]
    scores["val_score"] = float(np.mean(per_dataset)) if len(per_dataset) > 1 else scores["val_iou"]
    return scores


def git_commit() -> str | None:
    """The commit of the code being run (with "-dirty" when files are modified), or None outside git."""
    folder = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if status else commit


def environment() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform()}


def check_resumable(stored: dict, requested: dict, checkpoint_path: Path) -> None:
    """Refuse to resume when the stored run used other settings (only --epochs may grow)."""
    stored = {**LATER_OPTION_DEFAULTS, **stored}
    differences = [f"{key}: run has {stored.get(key)!r}, requested {requested.get(key)!r}"
                   for key in sorted(set(stored) | set(requested))
                   if key not in RESUMABLE_CHANGES and stored.get(key) != requested.get(key)]
    if requested["epochs"] < stored["epochs"]:
        differences.append(f"epochs: run has {stored['epochs']}, requested {requested['epochs']} (may only be increased)")
    if differences:
        raise ResumeError(
            f"cannot resume {checkpoint_path}: the settings differ from the run's:\n  " + "\n  ".join(differences)
            + "\nUse the original settings, or another --run-dir for a new run."
        )


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    """Every epoch's row; per-dataset columns follow the fixed ones."""
    extra = sorted({key for row in history for key in row} - set(METRIC_COLUMNS))
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=[*METRIC_COLUMNS, *extra], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomically(path, stream.getvalue())


def open_tensorboard(run_dir: Path, purge_step: int | None):
    """A TensorBoard writer, or None (with a warning) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("tensorboard is not installed: writing metrics.csv only (pip install tensorboard)")
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)


@dataclass
class Run:
    """Everything one training run works with, built by :func:`build_run`."""

    config: dict
    context: ProcessContext
    precision: str
    train_cases: list
    val_cases: list
    train_data: PreparedCases
    val_data: PreparedCases
    model: AttentionUNet
    supervised: DeeplySupervisedUNet | None  # the model with its auxiliary heads, under --deep-supervision
    trained_model: nn.Module  # the model (or ``supervised``), or its DistributedDataParallel wrapper
    average: AveragedModel | None
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    dataset: SegmentationDataset
    sampler: DistributedSampler
    loader: DataLoader
    state: dict

    @property
    def run_dir(self) -> Path:
        return Path(self.config["run_dir"])


def train(config: dict, context: ProcessContext) -> dict:
    """Train (or resume) the run described by ``config``; return the last checkpoint state."""
    run_dir = Path(config["run_dir"])
    checkpoint_path = run_dir / CHECKPOINT_NAME
    manifest = load_manifest(config["split"])
    config = dict(config, split_sha256=manifest.sha256)
    checkpoint = load_checkpoint(checkpoint_path, required=CHECKPOINT_KEYS) if checkpoint_path.is_file() else None
    if config.get("init_weights"):
        config["init_weights_sha256"] = init_weights_sha256(config["init_weights"], checkpoint)
    if checkpoint is not None:
        check_resumable(checkpoint["config"], config, checkpoint_path)
        if run_is_complete(checkpoint, config, run_dir):
            if context.is_main:
                print(f"run {run_dir} is complete (epoch {checkpoint['epoch']}, best val score "
                      f"{checkpoint['best_score']:.4f} at epoch {checkpoint['best_epoch']}); nothing to do")
            return checkpoint

    run = build_run(config, context, manifest, checkpoint)
    if context.is_main:
        write_run_record(run)
    writer = open_tensorboard(run_dir, purge_step=run.state["epoch"] + 1 if run.state["epoch"] else None) \
        if context.is_main else None
    progress = not config["no_progress"] and context.is_main
    epochs = tqdm(range(run.state["epoch"] + 1, config["epochs"] + 1), desc="epochs", unit="epoch",
                  initial=run.state["epoch"], total=config["epochs"], disable=not progress)
    for epoch in epochs:
        row, improved = run_epoch(run, epoch, progress)
        if not all(math.isfinite(row[key]) for key in ("train_loss", "val_loss")):
            if writer is not None:
                writer.close()
            raise TrainingDiverged(
                f"epoch {epoch}: train_loss {row['train_loss']}, val_loss {row['val_loss']}: the loss is not finite; "
                f"stopped before saving epoch {epoch}" + (
                    f", so {checkpoint_path} keeps epoch {epoch - 1}" if epoch > 1 else ""
                ) + " (try a lower --lr, or --precision fp32)")
        if context.is_main:
            save_epoch(run, row, improved, writer, progress)
        if run.state["stopped"]:
            if context.is_main:
                print(f"early stopping: no better validation score for {config['patience']} epochs "
                      f"(best {run.state['best_score']:.4f} at epoch {run.state['best_epoch']})")
            break
    if writer is not None:
        writer.close()
    if context.is_main:
        state = run.state
        print(f"best model: {run_dir / BEST_NAME} (val score {state['best_score']:.4f} at epoch {state['best_epoch']})")
        finished = state["stopped"] or state["epoch"] >= config["epochs"]
        if run.average is not None and finished and averaged_epochs(run.average):
            finish_average(run)
    return run.state


def run_is_complete(checkpoint: dict, config: dict, run_dir: Path) -> bool:
    """Whether a stored run has nothing left to do (a finished run killed while saving its average has)."""
    swa_pending = (checkpoint.get("swa_model") is not None and int(checkpoint["swa_model"]["n_averaged"]) > 0
                   and not (run_dir / SWA_NAME).is_file())
    return (checkpoint["stopped"] or checkpoint["epoch"] >= config["epochs"]) and not swa_pending


def build_run(config: dict, context: ProcessContext, manifest, checkpoint: dict | None) -> Run:
    """Load the data, build model, optimizer and loader, and restore them from ``checkpoint`` when resuming."""
    device = context.device
    precision = resolve_precision(config.get("precision", "fp32"), device)
    progress = not config["no_progress"] and context.is_main
    seed_everything(config["seed"])
    train_cases = training_cases(manifest, config["limit"], config["seed"], config["normal_repeat"])
    val_cases = manifest.cases_for("val")
    if not train_cases or not val_cases:
        raise ValueError(f"split {config['split']} needs train and val cases; it has {len(train_cases)} train "
                         f"and {len(val_cases)} val")
    roots = DataRoots.from_paths(config["data"])
    augment = get_augmentation(config["augment"], config.get("augment_off", []))
    input_size = tuple(config["input_size"])
    train_data = preload_cases(roots, train_cases, input_size, progress, "loading train",
                               with_sources=augment is not None and augment.uses_source)
    val_data = preload_cases(roots, val_cases, input_size, progress, "loading val")

    model = AttentionUNet(model_config_of(config))
    if checkpoint is None and config.get("init_weights"):
        initialise_from(model, config["init_weights"], context.is_main)
    # channels-last halves the CPU training step time of this network (measured on 2 cores) and suits GPU tensor cores.
    model = model.to(device, memory_format=torch.channels_last)
    average = AveragedModel(model) if config["swa_start"] else None  # copies the model before any hook is added
    supervised = DeeplySupervisedUNet(model).to(device, memory_format=torch.channels_last) \
        if config.get("deep_supervision") else None
    optimizer = torch.optim.Adam((model if supervised is None else supervised).parameters(), lr=config["lr"])
    scheduler = make_scheduler(config["scheduler"], optimizer, config["epochs"])
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    state = {"epoch": 0, "best_score": -1.0, "best_epoch": 0, "epochs_without_improvement": 0,
             "stopped": False, "history": []}
    if checkpoint is not None:
        state = restore(checkpoint, config, model, optimizer, scheduler, scaler, average, supervised)
        if context.is_main:
            print(f"resuming {config['run_dir']} after epoch {state['epoch']}")
    trained_model = model if supervised is None else supervised
    if context.distributed:
        trained_model = nn.parallel.DistributedDataParallel(
            trained_model, device_ids=[device.index] if device.type == "cuda" else None)

    dataset = SegmentationDataset(train_data, augment, seed=config["seed"])
    sampler = DistributedSampler(dataset, num_replicas=context.world_size, rank=context.rank,
                                 shuffle=True, seed=config["seed"], drop_last=False)
    workers = config["num_workers"] if config["num_workers"] is not None else (4 if device.type == "cuda" else 0)
    per_process = -(-len(dataset) // context.world_size)
    loader = DataLoader(dataset, batch_size=config["batch_size"], sampler=sampler, num_workers=workers,
                        pin_memory=device.type == "cuda", drop_last=per_process > config["batch_size"])
    return Run(config, context, precision, train_cases, val_cases, train_data, val_data, model, supervised,
               trained_model, average, optimizer, scheduler, scaler, make_loss(config["loss"]), dataset, sampler,
               loader, state)


def restore(checkpoint: dict, config: dict, model, optimizer, scheduler, scaler, average, supervised=None) -> dict:
    """Load a checkpoint's model (and auxiliary heads), optimizer, schedule, scaler, average and random state;
    return its run state."""
    model.load_state_dict(checkpoint["model"])
    if supervised is not None:
        supervised.auxiliary_heads.load_state_dict(checkpoint["auxiliary_heads"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
        if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
            scheduler.T_max = config["epochs"]  # an extended run stretches the schedule
    if scaler.is_enabled() and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    if average is not None and checkpoint.get("swa_model") is not None:
        average.load_state_dict(checkpoint["swa_model"])
    restore_rng_state(checkpoint["rng"])
    return {key: checkpoint[key] for key in ("epoch", "best_score", "best_epoch", "epochs_without_improvement",
                                             "stopped", "history")}


def write_run_record(run: Run) -> None:
    """``config.json``: the settings, code version, environment and data of the run; and a start line."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    record = {"args": run.config, "git_commit": git_commit(), "environment": environment(),
              "train_cases": len(run.train_cases), "val_cases": len(run.val_cases),
              "world_size": run.context.world_size, "device": str(run.context.device), "precision": run.precision,
              "datasets": sorted(set(run.train_data.datasets or []))}
    write_text_atomically(run.run_dir / "config.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(f"training on {run.context.device} in {run.precision} ({run.context.world_size} process(es)): "
          f"{len(run.train_cases)} train, {len(run.val_cases)} val cases, {len(run.loader)} batches per epoch")


def run_epoch(run: Run, epoch: int, progress: bool) -> tuple[dict, bool]:
    """Train and validate one epoch, step the schedule and the average, update the run state."""
    config, context, state = run.config, run.context, run.state
    started = time.perf_counter()
    torch.manual_seed(config["seed"] * 100_003 + epoch * 101 + context.rank)  # dropout: a function of the epoch
    run.dataset.set_epoch(epoch)
    run.sampler.set_epoch(epoch)
    learning_rate = run.optimizer.param_groups[0]["lr"]
    train_loss = train_one_epoch(run, progress, f"epoch {epoch}")
    scores = validate(run.model, run.val_data, run.loss_fn, context.device, config["batch_size"], run.precision)
    if context.distributed:  # every process follows the main process's scores (same early stopping)
        keys = sorted(scores)
        shared = torch.tensor([scores[key] for key in keys], dtype=torch.float64, device=context.device)
        dist.broadcast(shared, src=0)
        scores = dict(zip(keys, shared.tolist()))
    if isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        run.scheduler.step(scores["val_score"])
    elif run.scheduler is not None:
        run.scheduler.step()
    if run.average is not None and epoch >= config["swa_start"]:
        run.average.update_parameters(run.model)

    improved = scores["val_score"] > state["best_score"]
    if improved:
        state.update(best_score=scores["val_score"], best_epoch=epoch, epochs_without_improvement=0)
    else:
        state["epochs_without_improvement"] += 1
    row = {"epoch": epoch, "train_loss": train_loss, **scores, "lr": learning_rate,
           "seconds": round(time.perf_counter() - started, 3)}
    state["history"].append(row)
    state["epoch"] = epoch
    state["stopped"] = bool(config["patience"]) and state["epochs_without_improvement"] >= config["patience"]
    return row, improved


def save_epoch(run: Run, row: dict, improved: bool, writer, progress: bool) -> None:
    """Save the best weights (when improved), the checkpoint, metrics.csv and TensorBoard; print the epoch line."""
    config, epoch = run.config, row["epoch"]
    if improved:
        save_weights(run.model, run.run_dir / BEST_NAME, config, epoch, row)
    checkpoint = {"config": config, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                  "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
                  "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
                  "swa_model": run.average.state_dict() if run.average is not None else None,
                  "auxiliary_heads": None if run.supervised is None else run.supervised.auxiliary_heads.state_dict(),
                  "rng": capture_rng_state(), **run.state}
    save_checkpoint(checkpoint, run.run_dir / CHECKPOINT_NAME)
    write_metrics_csv(run.run_dir / "metrics.csv", run.state["history"])
    if writer is not None:
        for key, value in row.items():
            if key not in ("epoch", "seconds"):
                writer.add_scalar(key, value, epoch)
        writer.flush()
    per_dataset = "".join(f"  {key[len('val_iou_'):]} {value:.4f}" for key, value in row.items()
                          if key.startswith("val_iou_"))
    summary = (f"epoch {epoch}/{config['epochs']}: train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
               f"val_dice {row['val_dice']:.4f}  val_iou {row['val_iou']:.4f}{per_dataset}"
               + (f"  presence {row['val_presence_accuracy']:.3f}" if "val_presence_accuracy" in row else "")
               + f"  score {row['val_score']:.4f}  lr {row['lr']:.2e}  {row['seconds']:.1f}s" + ("  (best)" if improved else ""))
    tqdm.write(summary) if progress else print(summary, flush=True)


def finish_average(run: Run) -> None:
    """Recompute the averaged model's BatchNorm statistics, validate it and save it as ``swa.safetensors``."""
    config, device, last_epoch = run.config, run.context.device, run.state["epoch"]
    recompute_batch_norm(run.average, run.train_data.images, config["batch_size"], device, config["seed"])
    scores = validate(run.average.module, run.val_data, run.loss_fn, device, config["batch_size"], run.precision)
    weight_average = {"first_epoch": config["swa_start"], "last_epoch": last_epoch,
                      "epochs": averaged_epochs(run.average), "batch_norm": "recomputed on the train images"}
    path = run.run_dir / SWA_NAME
    save_weights(run.average.module, path, config, last_epoch, scores, weight_average=weight_average)
    print(f"weight average of epochs {config['swa_start']}-{last_epoch}: {path} (val IoU {scores['val_iou']:.4f}, "
          f"val Dice {scores['val_dice']:.4f})")


def train_one_epoch(run: Run, progress: bool, description: str) -> float:
    """One pass over the training data; returns the mean training loss (over all processes)."""
    device = run.context.device
    run.trained_model.train()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, image count
    for images, masks in tqdm(run.loader, desc=description, unit="batch", leave=False, disable=not progress):
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
        masks = masks.to(device, non_blocking=True)
        head_weight = run.config.get("lesion_head_weight", 0.0)
        with autocast(device, run.precision):
            output = run.trained_model(images)
        loss = run.loss_fn(output.logits.float(), masks)  # the loss in fp32 whatever the forward pass ran in
        if run.supervised is not None:
            loss = loss + deep_supervision_loss(run.loss_fn, output.auxiliary, masks, run.config["deep_supervision"])
        if head_weight:
            loss = loss + head_weight * F.binary_cross_entropy_with_logits(output.lesion_logit.float(),
                                                                          lesion_presence(masks))
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        total += torch.stack([loss.detach().double() * len(images), torch.tensor(len(images), dtype=torch.float64,
                                                                                 device=device)])
    if run.context.distributed:
        dist.all_reduce(total)
    return float(total[0] / total[1])


def dataset_credits(config: dict) -> list[dict]:
    """Name, citation and licence of every dataset the run's split trains on."""
    names = load_manifest(config["split"]).datasets
    return [{"name": name, "citation": ADAPTER_BY_NAME[name].citation, "licence": ADAPTER_BY_NAME[name].licence}
            for name in names if name in ADAPTER_BY_NAME]


def save_weights(model: AttentionUNet, path: Path, config: dict, epoch: int, scores: dict, **training_extra) -> None:
    """Save ``model`` as ``path`` with its model card: training provenance (plus ``training_extra``), val scores
    and the complete untuned post-processing (``sweep`` on val, then ``export``, choose the model's own)."""
    credits = dataset_credits(config)
    training = {**config, "epoch": epoch, "val_iou": scores["val_iou"], "git_commit": git_commit(),
                "split_sha256": config["split_sha256"], "dataset": " + ".join(item["name"] for item in credits),
                "datasets": credits, **training_extra}
    val = {"dice": scores["val_dice"], "iou": scores["val_iou"], "loss": scores["val_loss"], "epoch": epoch}
    val.update({key[len("val_"):]: value for key, value in scores.items()
                if key.startswith(("val_dice_", "val_iou_")) or key == "val_score"})
    save_model(model, path, input_size=tuple(config["input_size"]), postprocessing=UNTUNED_POSTPROCESSING,
               training=training, metrics={"val": val})
