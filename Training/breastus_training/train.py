"""``breastus-train train``: train the Attention U-Net on the train split of a manifest.

Default recipe: BCE on the logits (``BCEWithLogitsLoss``), Adam (lr 1e-3), the
core's default ``ModelConfig()``, 256x256 input, batch 8. Each epoch is
validated on the manifest's ``val`` split (loss, mean per-image Dice and IoU at
threshold 0.5 on the input grid); the best validation IoU selects the saved
model and drives early stopping. The ``test`` split is never read here.

The run folder holds ``config.json``, ``metrics.csv``, TensorBoard scalars,
``checkpoint_last.pt`` (written atomically every epoch) and ``best.safetensors``
with its model card; with ``--swa-start`` also ``swa.safetensors``, the average
of the weights of the later epochs (see ``weight_average``). Running the same
command again resumes from the checkpoint and gives the same result as an
uninterrupted run.

Multi-GPU: ``torchrun --nproc_per_node=N -m breastus_training train ...``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from BreastUSSegmentLib.device import select_device
from BreastUSSegmentLib.metrics import dice_score, iou_score
from BreastUSSegmentLib.model import AttentionUNet, ModelConfig
from BreastUSSegmentLib.weights import load_model, save_model, sha256_of_file

from .augment import AUGMENTATIONS, get_augmentation
from .busi import NORMAL_CLASS, load_manifest
from .checkpoint import ResumeError, capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .dataset import PreparedCases, SegmentationDataset, preload_cases
from .weight_average import SWA_NAME, averaged_epochs, recompute_batch_norm

CHECKPOINT_NAME = "checkpoint_last.pt"
BEST_NAME = "best.safetensors"
METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "val_iou", "lr", "seconds")
# Settings a resumed run may change: where and how fast it runs, how long it may go on (epochs,
# which may only grow, and early-stopping patience); none of them changes the epochs already trained.
RESUMABLE_CHANGES = {"data", "run_dir", "num_workers", "threads", "no_progress", "device", "epochs", "patience"}
# Options added after runs were already made: a stored run without one used this value.
LATER_OPTION_DEFAULTS = {"normal_repeat": 1, "swa_start": 0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="BUSI folder the manifest's paths are relative to")
    parser.add_argument("--split", required=True, type=Path, help="split manifest written by 'prepare'")
    parser.add_argument("--run-dir", required=True, type=Path, help="output folder; an existing run there is resumed")
    parser.add_argument("--epochs", type=int, default=100, help="number of epochs (default 100)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch and per process (default 8)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--loss", choices=("bce", "dice_bce"), default="bce", help="training loss (default bce)")
    parser.add_argument("--scheduler", choices=("none", "cosine", "plateau"), default="none",
                        help="learning-rate schedule (default none)")
    parser.add_argument("--augment", choices=AUGMENTATIONS, default="standard",
                        help="augmentation: standard, or strong (wider rotation, zoom and intensity "
                             "ranges plus a shift); default standard")
    parser.add_argument("--patience", type=int, default=20,
                        help="stop after this many epochs without a better validation IoU; 0 disables (default 20)")
    parser.add_argument("--input-size", type=int, nargs="+", default=[256], metavar="N",
                        help="network input size: N for NxN or H W (default 256)")
    parser.add_argument("--base-channels", type=int, default=ModelConfig.base_channels, help="channels of the first level")
    parser.add_argument("--depth", type=int, default=ModelConfig.depth, help="number of poolings")
    parser.add_argument("--dropout", type=float, default=ModelConfig.dropout, help="dropout probability")
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
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device (default auto)")
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
    size = config["input_size"]
    if len(size) not in (1, 2):
        raise ValueError(f"--input-size takes one or two numbers, got {size}")
    config["input_size"] = [size[0], size[0]] if len(size) == 1 else list(size)
    model_config = ModelConfig(base_channels=config["base_channels"], depth=config["depth"], dropout=config["dropout"])
    if any(side % model_config.size_multiple for side in config["input_size"]):
        raise ValueError(f"--input-size {config['input_size']} must be a multiple of {model_config.size_multiple} "
                         f"(2 to the power of --depth {config['depth']})")
    for key in ("epochs", "batch_size", "normal_repeat"):
        if config[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be at least 1, got {config[key]}")
    if not 0 <= config["swa_start"] <= config["epochs"]:
        raise ValueError(f"--swa-start must be between 1 and --epochs {config['epochs']} (or 0 for off), "
                         f"got {config['swa_start']}")
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


def initialise_from(model: AttentionUNet, weights_path: str, verbose: bool) -> None:
    """Copy the weights of an exported model (checksum-verified) into ``model``; the architectures must match."""
    source, card = load_model(weights_path)
    if card.model_config != model.config:
        raise ValueError(f"--init-weights {weights_path} has architecture {card.model_config}, "
                         f"but this run builds {model.config}; pass the matching --base-channels/--depth/--dropout")
    model.load_state_dict(source.state_dict())
    if verbose:
        print(f"initialised from {weights_path} (sha256 {card.sha256[:12]}…)")


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
             batch_size: int, use_amp: bool) -> dict:
    """Validation loss and mean per-image Dice and IoU at threshold 0.5 (empty vs empty counts 1.0)."""
    model.eval()
    total_loss, dice, iou = 0.0, [], []
    for start in range(0, len(cases), batch_size):
        images = cases.images[start:start + batch_size].to(device)
        masks = cases.masks[start:start + batch_size].to(device)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            logits = model(images)
        logits = logits.float()
        total_loss += float(loss_fn(logits, masks)) * len(images)
        predictions = (logits >= 0).cpu().numpy()  # sigmoid(logit) >= 0.5
        targets = masks.cpu().numpy() >= 0.5
        for prediction, target in zip(predictions, targets):
            dice.append(dice_score(prediction[0], target[0]))
            iou.append(iou_score(prediction[0], target[0]))
    return {"val_loss": total_loss / len(cases), "val_dice": float(np.mean(dice)), "val_iou": float(np.mean(iou))}


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
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        for row in history:
            writer.writerow({key: row[key] for key in METRIC_COLUMNS})
    os.replace(temporary, path)


def open_tensorboard(run_dir: Path, purge_step: int | None):
    """A TensorBoard writer, or None (with a warning) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("tensorboard is not installed: writing metrics.csv only (pip install tensorboard)")
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)


def train(config: dict, context: ProcessContext) -> dict:
    """Train (or resume) the run described by ``config``; return the last checkpoint state."""
    run_dir = Path(config["run_dir"])
    checkpoint_path = run_dir / CHECKPOINT_NAME
    manifest = load_manifest(config["split"])
    config = dict(config, split_sha256=manifest.sha256)
    progress = not config["no_progress"] and context.is_main
    device = context.device
    use_amp = device.type == "cuda"

    checkpoint = load_checkpoint(checkpoint_path) if checkpoint_path.is_file() else None
    if config.get("init_weights"):
        config["init_weights_sha256"] = init_weights_sha256(config["init_weights"], checkpoint)
    # A finished run killed while saving its weight average saves it on the next call.
    swa_pending = (checkpoint is not None and checkpoint.get("swa_model") is not None
                   and int(checkpoint["swa_model"]["n_averaged"]) > 0 and not (run_dir / SWA_NAME).is_file())
    if checkpoint is not None:
        check_resumable(checkpoint["config"], config, checkpoint_path)
        if (checkpoint["stopped"] or checkpoint["epoch"] >= config["epochs"]) and not swa_pending:
            if context.is_main:
                print(f"run {run_dir} is complete (epoch {checkpoint['epoch']}, best val IoU "
                      f"{checkpoint['best_score']:.4f} at epoch {checkpoint['best_epoch']}); nothing to do")
            return checkpoint

    seed_everything(config["seed"])
    train_cases = training_cases(manifest, config["limit"], config["seed"], config["normal_repeat"])
    val_cases = manifest.cases_for("val")
    if not train_cases or not val_cases:
        raise ValueError(f"split {config['split']} needs train and val cases; it has {len(train_cases)} train "
                         f"and {len(val_cases)} val")
    input_size = tuple(config["input_size"])
    train_data = preload_cases(config["data"], train_cases, input_size, progress, "loading train")
    val_data = preload_cases(config["data"], val_cases, input_size, progress, "loading val")

    model_config = ModelConfig(base_channels=config["base_channels"], depth=config["depth"], dropout=config["dropout"])
    # channels-last halves the CPU training step time of this network (measured on 2 cores) and suits GPU tensor cores.
    model = AttentionUNet(model_config)
    if checkpoint is None and config.get("init_weights"):
        initialise_from(model, config["init_weights"], context.is_main)
    model = model.to(device, memory_format=torch.channels_last)
    average = AveragedModel(model) if config["swa_start"] else None
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    scheduler = make_scheduler(config["scheduler"], optimizer, config["epochs"])
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = make_loss(config["loss"])
    state = {"epoch": 0, "best_score": -1.0, "best_epoch": 0, "epochs_without_improvement": 0,
             "stopped": False, "history": []}
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(checkpoint["scheduler"])
            if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
                scheduler.T_max = config["epochs"]  # an extended run stretches the schedule
        if use_amp and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        if average is not None and checkpoint.get("swa_model") is not None:
            average.load_state_dict(checkpoint["swa_model"])
        restore_rng_state(checkpoint["rng"])
        state = {key: checkpoint[key] for key in state}
        if context.is_main:
            print(f"resuming {run_dir} after epoch {state['epoch']}")

    trained_model = model
    if context.distributed:
        trained_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    dataset = SegmentationDataset(train_data, get_augmentation(config["augment"]), seed=config["seed"])
    sampler = DistributedSampler(dataset, num_replicas=context.world_size, rank=context.rank,
                                 shuffle=True, seed=config["seed"], drop_last=False)
    workers = config["num_workers"] if config["num_workers"] is not None else (4 if device.type == "cuda" else 0)
    per_process = -(-len(dataset) // context.world_size)
    loader = DataLoader(dataset, batch_size=config["batch_size"], sampler=sampler, num_workers=workers,
                        pin_memory=device.type == "cuda", drop_last=per_process > config["batch_size"])

    writer = None
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        record = {"args": config, "git_commit": git_commit(), "environment": environment(),
                  "train_cases": len(train_cases), "val_cases": len(val_cases), "world_size": context.world_size,
                  "device": str(device), "mixed_precision": use_amp}
        (run_dir / "config.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        writer = open_tensorboard(run_dir, purge_step=state["epoch"] + 1 if state["epoch"] else None)
        print(f"training on {device} ({context.world_size} process(es)): {len(train_cases)} train, "
              f"{len(val_cases)} val cases, {len(loader)} batches per epoch")

    epochs = tqdm(range(state["epoch"] + 1, config["epochs"] + 1), desc="epochs", unit="epoch",
                  initial=state["epoch"], total=config["epochs"], disable=not progress)
    for epoch in epochs:
        started = time.perf_counter()
        torch.manual_seed(config["seed"] * 100_003 + epoch * 101 + context.rank)  # dropout: a function of the epoch
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        learning_rate = optimizer.param_groups[0]["lr"]
        train_loss = train_one_epoch(trained_model, loader, optimizer, scaler, loss_fn, device, use_amp, context,
                                     progress, f"epoch {epoch}")
        scores = validate(model, val_data, loss_fn, device, config["batch_size"], use_amp)
        if context.distributed:  # every process follows the main process's scores (same early stopping)
            shared = torch.tensor([scores["val_loss"], scores["val_dice"], scores["val_iou"]], dtype=torch.float64,
                                  device=device)
            dist.broadcast(shared, src=0)
            scores = dict(zip(("val_loss", "val_dice", "val_iou"), shared.tolist()))
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(scores["val_iou"])
        elif scheduler is not None:
            scheduler.step()
        if average is not None and epoch >= config["swa_start"]:
            average.update_parameters(model)

        improved = scores["val_iou"] > state["best_score"]
        if improved:
            state.update(best_score=scores["val_iou"], best_epoch=epoch, epochs_without_improvement=0)
        else:
            state["epochs_without_improvement"] += 1
        row = {"epoch": epoch, "train_loss": train_loss, **scores, "lr": learning_rate,
               "seconds": round(time.perf_counter() - started, 3)}
        state["history"].append(row)
        state["epoch"] = epoch
        state["stopped"] = bool(config["patience"]) and state["epochs_without_improvement"] >= config["patience"]

        if context.is_main:
            if improved:
                save_weights(model, run_dir / BEST_NAME, config, epoch, scores)
            checkpoint = {"config": config, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict() if scheduler is not None else None,
                          "scaler": scaler.state_dict() if use_amp else None,
                          "swa_model": average.state_dict() if average is not None else None,
                          "rng": capture_rng_state(), **state}
            save_checkpoint(checkpoint, checkpoint_path)
            write_metrics_csv(run_dir / "metrics.csv", state["history"])
            if writer is not None:
                for key in ("train_loss", "val_loss", "val_dice", "val_iou", "lr"):
                    writer.add_scalar(key, row[key], epoch)
                writer.flush()
            summary = (f"epoch {epoch}/{config['epochs']}: train_loss {train_loss:.4f}  val_loss {scores['val_loss']:.4f}  "
                       f"val_dice {scores['val_dice']:.4f}  val_iou {scores['val_iou']:.4f}  lr {learning_rate:.2e}  "
                       f"{row['seconds']:.1f}s" + ("  (best)" if improved else ""))
            tqdm.write(summary) if progress else print(summary, flush=True)
        if state["stopped"]:
            if context.is_main:
                print(f"early stopping: no better validation IoU for {config['patience']} epochs "
                      f"(best {state['best_score']:.4f} at epoch {state['best_epoch']})")
            break
    if writer is not None:
        writer.close()
    if context.is_main:
        print(f"best model: {run_dir / BEST_NAME} (val IoU {state['best_score']:.4f} at epoch {state['best_epoch']})")
        finished = state["stopped"] or state["epoch"] >= config["epochs"]
        if average is not None and finished and averaged_epochs(average):
            finish_average(average, train_data, val_data, loss_fn, device, config, state["epoch"], use_amp)
    return state


def finish_average(average: AveragedModel, train_data: PreparedCases, val_data: PreparedCases, loss_fn: nn.Module,
                   device: torch.device, config: dict, last_epoch: int, use_amp: bool) -> None:
    """Recompute the averaged model's BatchNorm statistics, validate it and save it as ``swa.safetensors``."""
    recompute_batch_norm(average, train_data.images, config["batch_size"], device, config["seed"])
    scores = validate(average.module, val_data, loss_fn, device, config["batch_size"], use_amp)
    weight_average = {"first_epoch": config["swa_start"], "last_epoch": last_epoch,
                      "epochs": averaged_epochs(average), "batch_norm": "recomputed on the train images"}
    path = Path(config["run_dir"]) / SWA_NAME
    save_weights(average.module, path, config, last_epoch, scores, weight_average=weight_average)
    print(f"weight average of epochs {config['swa_start']}-{last_epoch}: {path} (val IoU {scores['val_iou']:.4f}, "
          f"val Dice {scores['val_dice']:.4f})")


def train_one_epoch(model, loader, optimizer, scaler, loss_fn, device, use_amp, context, progress, description) -> float:
    """One pass over the training data; returns the mean training loss (over all processes)."""
    model.train()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, image count
    for images, masks in tqdm(loader, desc=description, unit="batch", leave=False, disable=not progress):
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
        masks = masks.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            logits = model(images)
        loss = loss_fn(logits.float(), masks)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += torch.stack([loss.detach().double() * len(images), torch.tensor(len(images), dtype=torch.float64,
                                                                                 device=device)])
    if context.distributed:
        dist.all_reduce(total)
    return float(total[0] / total[1])


def save_weights(model: AttentionUNet, path: Path, config: dict, epoch: int, scores: dict, **training_extra) -> None:
    """Save ``model`` as ``path`` with its model card: training provenance (plus ``training_extra``), val scores
    and the complete untuned post-processing (``sweep`` on val, then ``export``, choose the model's own)."""
    from BreastUSSegmentLib.postprocessing import UNTUNED_POSTPROCESSING

    training = {**config, "epoch": epoch, "val_iou": scores["val_iou"], "git_commit": git_commit(),
                "split_sha256": config["split_sha256"], "dataset": "BUSI", **training_extra}
    metrics = {"val": {"dice": scores["val_dice"], "iou": scores["val_iou"], "loss": scores["val_loss"], "epoch": epoch}}
    save_model(model, path, input_size=tuple(config["input_size"]), postprocessing=UNTUNED_POSTPROCESSING,
               training=training, metrics=metrics)
