"""`edgekit train`: fit a registered classifier on an image data set and report test metrics.

Recipe: Adam, ReduceLROnPlateau on the validation loss (or a cosine decay), early stopping, seeded. With
pretrained weights the fit has two stages: the head alone on a frozen backbone, then the last N backbone
blocks too at a lower learning rate. In both stages the backbone's BatchNorm layers stay in eval mode:
a frozen layer's running statistics would otherwise still be overwritten by every training batch (small
data sets would wreck the ImageNet statistics). ``train_bn`` lets them follow the new data instead, for data
far from ImageNet's photographs (the inflated clip teacher on grey 32x32 motion clips: with frozen statistics
it reached 0.49 validation accuracy in 8 epochs at the default rate and diverged at 1e-3).
"""
from __future__ import annotations

import copy
import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgekit.core.spec import ModelSpec
from edgekit.models.checkpoint import Checkpoint, save_checkpoint, torch_versions
from edgekit.core import checks
from edgekit.core.clips import ClipTable
from edgekit.core.data import SPLIT_KEYS, ImageTable, load_split, split_recipe
from edgekit.core.errors import BadInputError
from edgekit.core.metrics import classification_report, default_positive, format_report
from edgekit.models.registry import HeadConfig, build_model, get_arch
from edgekit.training.torchdata import make_loader
from edgekit.core import jsonio

log = logging.getLogger(__name__)


SCHEDULES = ("plateau", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    data: str
    model: str = "mobilenet_v2"
    out: str = "runs/train"
    weights: str = "auto"  # "imagenet", "none", a .pth file, or "auto" (imagenet where the arch has it)
    input_size: int = 32
    epochs: int = 10
    head_epochs: int = 2  # stage 1 (frozen backbone); pretrained weights only
    unfreeze_blocks: int = -1  # stage 2: last N backbone blocks trainable, -1 = all
    train_bn: bool = False  # pretrained: let the backbone's BatchNorm statistics follow the new data
    batch_size: int = 64
    lr: float = 1e-3
    finetune_lr: float = 1e-4
    weight_decay: float = 0.0
    dropout: float = 0.2
    hidden: int = 0
    binary: bool | None = None  # None: binary when there are exactly two classes
    positive: str | None = None  # two classes: the positive label (None: one named like "attentive", else the 2nd)
    pos_weight: float | None = None  # None: negatives / positives of the training split
    class_weights: bool = False  # inverse-frequency cross-entropy weights
    patience: int = 4
    lr_patience: int = 1
    schedule: str = "plateau"  # "plateau": ReduceLROnPlateau on the validation loss; "cosine": to zero per stage
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    group_column: str | None = None
    path_column: str = "path"
    label_column: str = "label"
    limit: int = 0  # use at most this many training images (0 = all), for quick runs
    hflip: bool = False
    teacher: str | None = None  # knowledge distillation from this checkpoint (see training/distill.py)
    kd_temperature: float = 4.0
    kd_alpha: float = 0.9  # weight of the soft-target loss; 1 - alpha on the hard labels
    seed: int = 0
    workers: int = 0
    threads: int = 0  # 0 = torch's default (per process with nproc > 1: the usable cores shared out)
    nproc: int = 1  # processes training together (DistributedDataParallel, gloo); see train()
    clip_frames: int = 16  # clip models (task "clip"): frames per clip
    frame_stride: int = 1  # clip models: take every frame_stride-th frame

    def __post_init__(self) -> None:
        arch = get_arch(self.model)  # unknown names fail before any data is read
        if self.weights == "auto":
            object.__setattr__(self, "weights", "imagenet" if arch.weights else "none")
        checks.one_of("--schedule", self.schedule, SCHEDULES)
        for name, value, low, high in (("--epochs", self.epochs, 1, 10_000), ("--batch", self.batch_size, 1, 4096),
                                       ("--imgsz", self.input_size, 16, 4096), ("--head-epochs", self.head_epochs, 0, 10_000),
                                       ("--unfreeze-blocks", self.unfreeze_blocks, -1, 1000), ("--hidden", self.hidden, 0, 65536),
                                       ("--patience", self.patience, 1, 10_000), ("--limit", self.limit, 0, 10**9),
                                       ("--workers", self.workers, 0, 4 * checks.usable_cpus()),
                                       ("--weight-decay", self.weight_decay, 0, 1), ("--dropout", self.dropout, 0, 0.99)):
            checks.within(name, value, low, high)
        checks.within("--lr", self.lr, 0, 10, low_open=True)
        checks.within("--finetune-lr", self.finetune_lr, 0, 10, low_open=True)
        checks.within("--val-fraction", self.val_fraction, 0, 0.99)
        checks.within("--test-fraction", self.test_fraction, 0, 0.99)
        if self.pos_weight is not None:
            checks.within("--pos-weight", self.pos_weight, 0, 1e6, low_open=True)
        checks.threads("--threads", self.threads)
        checks.within("--nproc", self.nproc, 1, 64)
        checks.within("--clip-frames", self.clip_frames, 2, 256)
        checks.within("--frame-stride", self.frame_stride, 1, 64)
        checks.within("--kd-temperature", self.kd_temperature, 0, 100, low_open=True)
        checks.within("--kd-alpha", self.kd_alpha, 0, 1)
        if self.teacher is not None and not Path(self.teacher).is_file():
            raise BadInputError(f"--teacher {self.teacher}: no such checkpoint")


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_data(cfg: TrainConfig) -> ImageTable:
    return load_split(cfg.data, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed,
                      group_column=cfg.group_column, path_column=cfg.path_column, label_column=cfg.label_column,
                      limit=cfg.limit)


def make_spec(cfg: TrainConfig, table: ImageTable) -> ModelSpec:
    """The model's spec. With two classes the positive one is chosen (``cfg.positive`` or a default) and put
    second, renumbering ``table`` to match: label 1 is what binary metrics, pos_weight and the sigmoid are about."""
    binary = len(table.class_names) == 2 if cfg.binary is None else cfg.binary
    recipe = split_recipe(table, **{k: getattr(cfg, k) for k in SPLIT_KEYS})  # of the data as loaded (sorted)
    labels, positive = tuple(table.class_names), ""
    if len(labels) == 2:
        positive = cfg.positive if cfg.positive is not None else default_positive(labels)
        if positive not in labels:
            raise BadInputError(f"--positive {positive!r} is not one of the data's labels {list(labels)}")
        labels = (labels[0] if positive == labels[1] else labels[1], positive)
        table.relabel(labels)
        log.info("positive class: %s%s", positive, "" if cfg.positive else " (choose with --positive)")
    elif cfg.positive is not None:
        raise BadInputError(f"--positive is for two-class data; this data has {len(labels)} classes")
    arch = get_arch(cfg.model)
    clips = isinstance(table, ClipTable)
    if clips != (arch.task == "clip"):
        raise BadInputError(f"{cfg.model} is {'a clip' if arch.task == 'clip' else 'an image'} model and {cfg.data} "
                            f"holds {'video clips' if clips else 'images'}: "
                            + ("train a clip model (mobilenet3d, mobilenet3d_x0_5, i3d_mobilenet_v2) on it" if clips
                               else "give it labelled videos (<label>/*.avi or a video,start,end,label CSV)"))
    planes = {}
    if arch.task == "clip":
        planes = {"task": "clip", "layout": "NCTHW", "clip_frames": cfg.clip_frames, "frame_stride": cfg.frame_stride}
    if arch.channels == 1:  # grey networks: one plane, normalised to about [-1, 1]
        planes = {"channels": 1, "color": "GRAY", "mean": (0.5,), "std": (0.5,)}
    return ModelSpec(arch=cfg.model, labels=labels, input_size=(cfg.input_size, cfg.input_size),
                     binary=binary, versions=torch_versions(), split=recipe, positive=positive, **planes)


def make_loss(cfg: TrainConfig, spec: ModelSpec, table: ImageTable):
    import torch

    counts = table.class_counts("train").astype(np.float64)
    if spec.binary:
        weight = cfg.pos_weight if cfg.pos_weight is not None else counts[0] / max(counts[1], 1.0)
        return torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([weight], dtype=torch.float32))
    weights = None
    if cfg.class_weights:
        weights = torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1.0)), dtype=torch.float32)
    return torch.nn.CrossEntropyLoss(weight=weights)


def set_trainable(model, stage: str, unfreeze_blocks: int) -> list:
    """Stage "all": everything trains. "head": classifier only. "finetune": classifier + last N blocks."""
    blocks = list(model.features)
    trainable = set()
    if stage == "all" or (stage == "finetune" and unfreeze_blocks < 0):
        trainable = set(range(len(blocks)))
    elif stage == "finetune":
        trainable = set(range(len(blocks) - unfreeze_blocks, len(blocks)))
    for i, block in enumerate(blocks):
        for p in block.parameters():
            p.requires_grad = i in trainable
    for p in model.classifier.parameters():
        p.requires_grad = True
    return [p for p in model.parameters() if p.requires_grad]


def _freeze_batchnorm(model) -> None:
    import torch.nn as nn

    for module in getattr(model, "module", model).features.modules():  # a DistributedDataParallel wrapper too
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def _targets(y, binary: bool):
    return y.float().unsqueeze(1) if binary else y


def run_epoch(model, loader, loss_fn, binary: bool, optimizer=None, freeze_bn: bool = False, desc: str = "",
              distill=None, clip_grad: float = 0.0):
    """One pass; trains when an optimizer is given. Returns (mean loss, accuracy, logits, labels).
    ``distill(x, logits, targets) -> loss`` replaces ``loss_fn`` while training (knowledge distillation);
    evaluation passes always report ``loss_fn``, so early stopping compares like with like. ``clip_grad`` > 0:
    the gradient norm is clipped to it before each step."""
    import torch
    from tqdm import tqdm

    model.train(optimizer is not None)
    if optimizer is not None and freeze_bn:
        _freeze_batchnorm(model)
    total_loss, outputs, labels = 0.0, [], []
    with torch.set_grad_enabled(optimizer is not None):
        bar = tqdm(loader, desc=desc, unit="batch", leave=False, disable=None)
        for x, y in bar:
            logits = model(x)
            if distill is not None and optimizer is not None:
                loss = distill(x, logits, _targets(y, binary))
            else:
                loss = loss_fn(logits, _targets(y, binary))
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip_grad:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
                optimizer.step()
            total_loss += loss.detach().item() * len(y)
            outputs.append(logits.detach().numpy())
            labels.append(y.numpy())
            bar.set_postfix(loss=f"{loss.detach().item():.3f}")
    logits, labels = np.concatenate(outputs), np.concatenate(labels)
    preds = (logits.reshape(-1) > 0).astype(int) if binary else logits.argmax(1)
    return total_loss / max(len(labels), 1), float((preds == labels).mean()), logits, labels


def fit(model, loaders: dict, loss_fn, cfg: TrainConfig, spec: ModelSpec, distill=None, wrap=None) -> list[dict]:
    """Run the stages; keeps the weights of the best validation loss in ``model``. ``wrap(model)``, when
    given, is what trains each stage (DistributedDataParallel, made after the stage sets what trains)."""
    import torch

    pretrained = cfg.weights != "none"
    stages = [("head", min(cfg.head_epochs, cfg.epochs), cfg.lr),
              ("finetune", cfg.epochs - min(cfg.head_epochs, cfg.epochs), cfg.finetune_lr)] if pretrained \
        else [("all", cfg.epochs, cfg.lr)]
    history, best = [], (float("inf"), copy.deepcopy(model.state_dict()))
    epoch = 0
    for stage, epochs, lr in stages:
        if epochs <= 0:
            continue
        params = set_trainable(model, stage, cfg.unfreeze_blocks)
        net = wrap(model) if wrap else model
        optimizer = torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
        scheduler = _scheduler(optimizer, cfg, epochs)
        stale = 0
        for _ in range(epochs):
            epoch += 1
            start = time.perf_counter()
            if hasattr(loaders["train"].sampler, "set_epoch"):  # distributed: a new shuffle every epoch
                loaders["train"].sampler.set_epoch(epoch)
            tr_loss, tr_acc, _, _ = run_epoch(net, loaders["train"], loss_fn, spec.binary, optimizer,
                                              freeze_bn=stage != "all" and not cfg.train_bn,
                                              desc=f"epoch {epoch} {stage}",
                                              distill=distill)
            va_loss, va_acc = (run_epoch(model, loaders["val"], loss_fn, spec.binary, desc="val")[:2]
                               if loaders.get("val") else (tr_loss, tr_acc))
            if cfg.schedule == "plateau":
                scheduler.step(va_loss)
            else:
                scheduler.step()
            row = {"epoch": epoch, "stage": stage, "train_loss": tr_loss, "train_acc": tr_acc,
                   "val_loss": va_loss, "val_acc": va_acc, "lr": optimizer.param_groups[0]["lr"],
                   "seconds": time.perf_counter() - start}
            history.append(row)
            log.info("epoch %d (%s): train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.0f s", epoch, stage,
                     tr_loss, tr_acc, va_loss, va_acc, row["seconds"])
            if va_loss < best[0]:
                best, stale = (va_loss, copy.deepcopy(model.state_dict())), 0
            else:
                stale += 1
                if stale >= cfg.patience:
                    log.info("early stopping: no validation improvement for %d epochs", stale)
                    break
    model.load_state_dict(best[1])
    return history


def _scheduler(optimizer, cfg: TrainConfig, epochs: int):
    """Plateau: cut the rate when the validation loss stalls. Cosine: a smooth decay to zero over the stage,
    which on small data sets ends with a better-converged model (fewer test images sit on a decision
    boundary, so INT8 rounding flips fewer of them)."""
    import torch

    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.3, patience=cfg.lr_patience)


def collapse_warnings(logits: np.ndarray, spec: ModelSpec) -> list[str]:
    """A model that gives every test image the same class learned nothing usable, whatever its accuracy
    says (on a data set where one class dominates, that can look respectable)."""
    preds = (logits.reshape(-1) > 0).astype(int) if spec.binary else logits.argmax(1)
    classes = np.unique(preds)
    if len(preds) and len(classes) == 1 and len(spec.labels) > 1:
        return [f"the model predicts {spec.labels[int(classes[0])]!r} for every one of the {len(preds)} test "
                "images: training collapsed to one class (check the data, the learning rate, the class balance)"]
    return []


def plot_curves(history: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train", "train"), ("val", "validation")):
        ax_loss.plot(epochs, [h[f"{key}_loss"] for h in history], marker="o", label=label)
        ax_acc.plot(epochs, [h[f"{key}_acc"] for h in history], marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    return save_panels(fig, (ax_loss, ax_acc), path)


def save_panels(fig, axes, path: Path) -> Path:
    """Grid and legend on every panel, then write the figure and free it (curves.png, prune.png)."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# BatchNorm momentum for a network trained from scratch here. torchvision builds MobileNetV3 with 0.01 (tuned
# for its long ImageNet schedule); in a run of a few hundred steps the running statistics then lag far behind
# the weights: MobileNetV3-Small on 20,000 Fashion-MNIST images kept 0.10 validation accuracy for three epochs
# while its training accuracy was 0.76; on 4,000 images, 2 epochs, test accuracy 0.10 with 0.01 and 0.54 with
# PyTorch's default, 0.1, which follows the weights.
SCRATCH_BN_MOMENTUM = 0.1


def from_scratch_batchnorm(model) -> int:
    """Set every BatchNorm's momentum to SCRATCH_BN_MOMENTUM where it is lower; returns how many changed."""
    import torch

    changed = 0
    for module in model.modules():
        # momentum None means a cumulative average: left as it is
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and (module.momentum or 1) < SCRATCH_BN_MOMENTUM:
            module.momentum = SCRATCH_BN_MOMENTUM
            changed += 1
    return changed


def distributed_rank() -> tuple[int, int] | None:
    """(rank, world size) when this process belongs to a torch.distributed job (started by torchrun or by
    ``train(nproc=N)``: RANK and WORLD_SIZE in the environment), else None."""
    import os

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


def _spawned(rank: int, cfg: TrainConfig, port: int, log_level: int) -> None:
    """One process of ``train(nproc=N)``; logs like its parent (a spawned process starts unconfigured)."""
    import os
    import sys

    if log_level != logging.NOTSET and not logging.getLogger().handlers:
        logging.basicConfig(level=log_level, stream=sys.stderr, format="%(message)s")
        logging.getLogger("torch").setLevel(logging.WARNING)

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(cfg.nproc))
    train(cfg)


def _train_in_processes(cfg: TrainConfig) -> dict:
    """``--nproc N`` on this machine: N processes on torch.distributed's gloo backend (CPU), joined here;
    rank 0 writes the outputs, which are read back."""
    import socket

    import torch.multiprocessing as mp

    from edgekit.models.checkpoint import load_checkpoint

    load_data(cfg)  # bad data fails once, here, not in N processes
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log.info("training in %d processes (DistributedDataParallel, gloo)", cfg.nproc)
    root = logging.getLogger()
    mp.spawn(_spawned, args=(cfg, port, root.level if root.handlers else logging.NOTSET), nprocs=cfg.nproc,
             join=True)
    out = Path(cfg.out)
    report = json.loads((out / "metrics.json").read_text())
    path = out / "model.pt"
    table_text = "\n".join([format_report(report), *(f"warning: {w}" for w in report["warnings"])])
    return {"checkpoint": path, "report": report, "table": table_text, "history": load_checkpoint(path).history}


def train(cfg: TrainConfig) -> dict | None:
    """Train, evaluate on the test split, write model.pt, metrics.json and curves.png to ``cfg.out``.

    Several processes (``cfg.nproc`` > 1, or started by ``torchrun``): DistributedDataParallel on the gloo
    backend. Every process holds the whole model; the train split is shared out by a seeded
    DistributedSampler (the recorded split itself is unchanged), each process takes ``batch / N`` images a
    step so that the gradient averaged over processes is that of the single-process batch, BatchNorm
    statistics are per process (as on one machine with a smaller batch), and every process evaluates the whole
    validation split so that early stopping decides the same everywhere. Only rank 0 tests and writes;
    the others return None."""
    if cfg.nproc > 1 and distributed_rank() is None:
        return _train_in_processes(cfg)
    out = Path(cfg.out)
    table = load_data(cfg)  # bad data fails here, before torch is imported
    spec = make_spec(cfg, table)
    import torch

    dist = distributed_rank()
    rank, world = dist or (0, 1)
    if dist:
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
        if rank:  # one voice: rank 0 logs progress
            logging.getLogger("edgekit").setLevel(logging.WARNING)
    if cfg.threads or dist:
        torch.set_num_threads(cfg.threads or max(1, checks.usable_cpus() // world))
    seed_everything(cfg.seed)
    model = build_model(cfg.model, spec.num_outputs, HeadConfig(cfg.dropout, cfg.hidden), cfg.weights)
    if cfg.weights == "none":
        from_scratch_batchnorm(model)
    loaders = {name: make_loader(table, table.indices(name), spec,
                                 max(1, cfg.batch_size // world) if name == "train" else cfg.batch_size,
                                 train=name == "train", hflip=cfg.hflip, seed=cfg.seed, workers=cfg.workers,
                                 shard=(rank, world) if dist and name == "train" else None)
               for name in ("train", "val", "test") if len(table.indices(name))}
    log.info("data: %s", ", ".join(f"{n} {len(table.indices(n))}" for n in ("train", "val", "test")))
    distill = None
    if cfg.teacher:
        from edgekit.training.distill import Distiller

        distill = Distiller.from_checkpoint(cfg.teacher, spec, cfg.kd_temperature, cfg.kd_alpha,
                                            make_loss(cfg, spec, table))
        log.info("distilling from %s (T=%g, alpha=%g)", cfg.teacher, cfg.kd_temperature, cfg.kd_alpha)
    wrap = None
    if dist:
        from torch.nn.parallel import DistributedDataParallel

        wrap = DistributedDataParallel  # CPU: no device ids
        log.info("process %d of %d: %d train images a step per process", rank, world, max(1, cfg.batch_size // world))
    start = time.perf_counter()
    try:
        history = fit(model, loaders, make_loss(cfg, spec, table), cfg, spec, distill, wrap)
    finally:
        if dist:
            torch.distributed.destroy_process_group()
    train_seconds = time.perf_counter() - start
    if rank:
        return None
    _, _, logits, labels = run_epoch(model, loaders["test"], make_loss(cfg, spec, table), spec.binary, desc="test")
    report = classification_report(labels, logits, spec.labels, spec.binary)
    report["warnings"] = collapse_warnings(logits, spec)
    for warning in report["warnings"]:
        log.warning("%s", warning)
    report.update(train_seconds=train_seconds, skipped_images=len(table.skipped), config=asdict(cfg))
    if dist:
        report["distributed"] = {"backend": "gloo", "world_size": world, "batch_per_process": max(1, cfg.batch_size // world),
                                 "train_images_per_process": len(loaders["train"].sampler)}
    if distill is not None:
        report["distillation"] = distill.describe()
    model_info = {"arch": cfg.model, "head": asdict(HeadConfig(cfg.dropout, cfg.hidden))}
    path = save_checkpoint(out / "model.pt", Checkpoint(spec, model_info, model.state_dict(), history, report))
    jsonio.write(out / "metrics.json", report, indent=2)
    plot_curves(history, out / "curves.png")
    table_text = "\n".join([format_report(report), *(f"warning: {w}" for w in report["warnings"])])
    return {"checkpoint": path, "report": report, "table": table_text, "history": history}
