"""`edgekit prune`: sweep pruning ratios on a checkpoint, before and after fine-tuning, and say what each saves.

Two methods, because they save different things:

- ``l1-unstructured``: the smallest-magnitude weights of each convolution and linear layer (L1 per layer,
  ``torch.nn.utils.prune``) become zeros. The architecture is unchanged, so the dense file is as large
  and as slow as before; only a compressed file (gzip of the checkpoint) shrinks, and a runtime with sparse
  kernels could be faster. The table reports exactly that: sparsity, dense size, gzip size, latency.
- ``channel``: whole output channels go, chosen by the L1 magnitude of each dependency group
  (torch-pruning's dependency graph keeps BatchNorm, the next layer's inputs and both sides of every
  residual add consistent). The network is physically smaller and faster. The classifier's outputs and
  any ``--protect`` layers are kept; the checkpoint records the plan so every other command rebuilds it
  (edgekit.models.pruning).

Fine-tuning (``--finetune-epochs``) trains on the checkpoint's own train split with Adam and keeps the
weights of the best validation loss; an unstructured mask stays applied while fine-tuning, so pruned weights
stay zero, and is made permanent before saving.
"""
from __future__ import annotations

import copy
import gzip
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.core import checks, jsonio
from edgekit.core.errors import BadInputError
from edgekit.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

METHODS = ("l1-unstructured", "channel")


@dataclass(frozen=True)
class PruneConfig:
    checkpoint: str
    data: str
    method: str = "channel"
    ratios: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)
    finetune_epochs: int = 0
    lr: float = 1e-3
    batch_size: int = 64
    protect: tuple[str, ...] = ()
    out: str = "runs/prune"
    limit_train: int = 0  # fine-tune on at most N train images (0 = all)
    limit_test: int = 0
    seed: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        checks.one_of("--method", self.method, METHODS)
        if not self.ratios:
            raise BadInputError("--ratios: give at least one ratio, e.g. 0.1,0.3,0.5")
        for ratio in self.ratios:
            checks.within("--ratios", ratio, 0, 0.95, low_open=True)
        if len(set(self.ratios)) != len(self.ratios):
            raise BadInputError(f"--ratios: each ratio once, got {', '.join(map(str, self.ratios))}")
        checks.within("--finetune-epochs", self.finetune_epochs, 0, 1000)
        checks.within("--lr", self.lr, 0, 10, low_open=True)
        checks.within("--batch", self.batch_size, 1, 4096)
        checks.at_least("--limit-train", self.limit_train, 0)
        checks.at_least("--limit-test", self.limit_test, 0)
        checks.threads("--threads", self.threads)


def _prunable(model, protect: tuple[str, ...]) -> list:
    import torch

    return [(module, "weight") for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and name not in protect]


def prune_unstructured(model, ratio: float, protect: tuple[str, ...]) -> None:
    """L1 magnitude pruning of each Conv2d/Linear weight by ``ratio`` (masks stay attached until made permanent).

    Per layer, not global: weight scales differ between layers (BatchNorm after a convolution makes its
    weights' magnitude arbitrary), and one global threshold on the Fashion-MNIST MobileNetV2 at 50% zeroed the
    depthwise convolutions of blocks 15-17 entirely and 95.5% of the classifier: accuracy 0.10, and no
    fine-tuning brings a zeroed layer back (its mask stays)."""
    import torch.nn.utils.prune as tprune

    for module, name in _prunable(model, protect):
        tprune.l1_unstructured(module, name, amount=ratio)


def plain_copy(model, unpruned):
    """A copy of ``model`` without pruning masks: masked weights become ordinary tensors with their zeros.
    (A module with masks attached cannot be deep-copied; ``unpruned`` is a mask-free module of the same
    structure to copy instead.)"""
    state = model.state_dict()
    masked = [key[: -len("_orig")] for key in state if key.endswith("_orig")]
    if not masked:
        return copy.deepcopy(model)
    for key in masked:
        state[key] = state.pop(key + "_orig") * state.pop(key + "_mask")
    twin = copy.deepcopy(unpruned)
    twin.load_state_dict(state)
    return twin


def sparsity(model) -> float:
    """Share of exact zeros among the Conv2d/Linear weights."""
    weights = [module.weight.detach() for module, _ in _prunable(model, ())]
    total = sum(w.numel() for w in weights)
    return float(sum(int((w == 0).sum()) for w in weights) / total) if total else 0.0


def _evaluate(model, table, spec, test: np.ndarray, batch_size: int) -> np.ndarray:
    from edgekit.core.metrics import predictions
    from edgekit.models.loading import run_model

    batches = (table.inputs(test[i:i + batch_size], spec) for i in range(0, len(test), batch_size))
    return predictions(run_model(model, batches), spec.binary)


def _finetune(model, table, spec, cfg: PruneConfig) -> list[dict]:
    import torch

    from edgekit.training.torchdata import make_loader
    from edgekit.training.trainer import run_epoch

    train_idx = table.indices("train")[: cfg.limit_train or None]
    loaders = {"train": make_loader(table, train_idx, spec, cfg.batch_size, train=True, seed=cfg.seed)}
    if len(table.indices("val")):
        loaders["val"] = make_loader(table, table.indices("val"), spec, cfg.batch_size, train=False)
    loss_fn = torch.nn.BCEWithLogitsLoss() if spec.binary else torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.finetune_epochs)
    history, best = [], (float("inf"), copy.deepcopy(model.state_dict()))
    for epoch in range(1, cfg.finetune_epochs + 1):
        tr_loss, tr_acc, _, _ = run_epoch(model, loaders["train"], loss_fn, spec.binary, optimizer,
                                          desc=f"fine-tune {epoch}")
        va_loss, va_acc = (run_epoch(model, loaders["val"], loss_fn, spec.binary, desc="val")[:2]
                           if "val" in loaders else (tr_loss, tr_acc))
        scheduler.step()
        history.append({"epoch": epoch, "train_loss": tr_loss, "train_acc": tr_acc, "val_loss": va_loss,
                        "val_acc": va_acc})
        if va_loss < best[0]:
            best = (va_loss, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[1])
    return history


def _measure(model, spec, path: Path) -> dict:
    import torch_pruning as tp

    from edgekit.models.loading import example_input
    from edgekit.training.quantize import latency_ms

    macs, params = tp.utils.count_ops_and_params(model, example_input(spec))
    data = path.read_bytes()
    return {"params": int(params), "macs": int(macs), "sparsity": sparsity(model), "size_mb": len(data) / 1e6,
            "gzip_mb": len(gzip.compress(data, 6)) / 1e6, "latency_ms": latency_ms(model, spec)}


def prune_sweep(cfg: PruneConfig) -> dict:
    """Prune at every ratio, fine-tune if asked, save each result as a checkpoint, and measure all of them."""
    import torch

    from edgekit.core.errors import require
    from edgekit.core.spec import sha256_file
    from edgekit.models.loading import checkpoint_data, example_input, load_model

    require("torch_pruning", "train", "pruning")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt = load_checkpoint(cfg.checkpoint)
    if ckpt.spec.precision != "fp32":
        raise BadInputError(f"{cfg.checkpoint} is {ckpt.spec.precision}; prune the FP32 checkpoint, then quantize")
    if (ckpt.model.get("pruning") or {}).get("plan"):
        raise BadInputError(f"{cfg.checkpoint} is already channel-pruned; prune its unpruned source instead")
    table = checkpoint_data(ckpt, cfg.data)
    if not table.labelled:
        raise BadInputError("prune needs labelled data (accuracy before and after, and fine-tuning)")
    test = table.indices("test")[: cfg.limit_test or None]
    if not len(test):
        raise BadInputError("the data has no test split to measure on")
    base = load_model(ckpt)
    names = dict(base.named_modules())
    for name in cfg.protect:
        if name not in names:
            raise BadInputError(f"--protect: no module named {name!r}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    base_preds = _evaluate(base, table, ckpt.spec, test, cfg.batch_size)
    labels = table.labels[test]
    base_row = {"ratio": 0.0, "stage": "base", "accuracy": float((base_preds == labels).mean()), "agreement": 1.0,
                "path": cfg.checkpoint, **_measure(base, ckpt.spec, Path(cfg.checkpoint))}
    rows = [base_row]
    source_sha = sha256_file(cfg.checkpoint)
    for ratio in cfg.ratios:
        start = time.perf_counter()
        model = copy.deepcopy(base)
        recipe = {"method": cfg.method, "ratio": ratio, "protect": list(cfg.protect),
                  "finetune_epochs": cfg.finetune_epochs, "source_checkpoint_sha256": source_sha}
        if cfg.method == "channel":
            from edgekit.models.pruning import prune_channels

            recipe["plan"] = prune_channels(model, example_input(ckpt.spec), ratio, list(cfg.protect))
        else:
            prune_unstructured(model, ratio, cfg.protect)
        stages = [("pruned", None)]
        if cfg.finetune_epochs:
            stages.append(("fine-tuned", "finetune"))
        folder = out / f"{cfg.method}_{ratio:g}"
        folder.mkdir(exist_ok=True)
        history: list[dict] = []
        for stage, action in stages:
            if action == "finetune":
                history = _finetune(model, table, ckpt.spec, cfg)
            snapshot = plain_copy(model, base).eval()
            preds = _evaluate(snapshot, table, ckpt.spec, test, cfg.batch_size)
            path = folder / ("model.pt" if stage == stages[-1][0] else "model_pruned_only.pt")
            model_info = {**ckpt.model, "pruning": {**recipe, "finetuned": action == "finetune"}}
            save_checkpoint(path, Checkpoint(ckpt.spec.replace(source_checkpoint_sha256=source_sha), model_info,
                                             snapshot.state_dict(), ckpt.history + history, {}))
            rows.append({"ratio": ratio, "stage": stage, "accuracy": float((preds == labels).mean()),
                         "agreement": float((preds == base_preds).mean()), "path": str(path),
                         **_measure(snapshot, ckpt.spec, path)})
        log.info("ratio %g done in %.0f s", ratio, time.perf_counter() - start)
    for row in rows:
        row["delta_pp"] = 100 * (row["accuracy"] - base_row["accuracy"])
        row["speedup"] = base_row["latency_ms"] / row["latency_ms"]
    result = {"method": cfg.method, "checkpoint": cfg.checkpoint, "test_images": int(len(test)),
              "finetune_epochs": cfg.finetune_epochs, "threads": torch.get_num_threads(), "rows": rows}
    jsonio.write(out / "prune.json", result, indent=2)
    result["plot"] = str(plot_sweep(result, out / "prune.png"))
    return result


def format_sweep(result: dict) -> str:
    head = (f"{'ratio':>6} {'stage':<11}{'accuracy':>9}{'delta pp':>9}{'agree':>7}{'params':>10}{'MMACs':>8}"
            f"{'zeros':>7}{'MB':>7}{'gzip MB':>8}{'p50 ms':>8}{'x base':>7}")
    lines = [head]
    for r in result["rows"]:
        lines.append(f"{r['ratio']:>6g} {r['stage']:<11}{r['accuracy']:>9.4f}{r['delta_pp']:>+9.2f}{r['agreement']:>7.3f}"
                     f"{r['params']:>10,}{r['macs'] / 1e6:>8.1f}{r['sparsity']:>7.1%}{r['size_mb']:>7.2f}"
                     f"{r['gzip_mb']:>8.2f}{r['latency_ms']:>8.2f}{r['speedup']:>6.2f}x")
    lines.append(f"{result['method']} pruning of {result['checkpoint']}, {result['test_images']} test images, "
                 f"fine-tune epochs {result['finetune_epochs']}, latency: PyTorch FP32 batch 1, "
                 f"{result['threads']} threads (median; use `edgekit bench` on exported files for runtime tables)")
    return "\n".join(lines)


def plot_sweep(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgekit.training.trainer import save_panels

    fig, (ax_acc, ax_cost) = plt.subplots(1, 2, figsize=(10, 4))
    base = result["rows"][0]
    for stage, marker in (("pruned", "o"), ("fine-tuned", "s")):
        rows = [base] + [r for r in result["rows"] if r["stage"] == stage]
        if len(rows) > 1:
            ax_acc.plot([r["ratio"] for r in rows], [r["accuracy"] for r in rows], marker=marker, label=stage)
    ax_acc.set(xlabel="pruning ratio", ylabel="test accuracy", title=f"{result['method']}: accuracy")
    rows = [base] + [r for r in result["rows"] if r["stage"] == result["rows"][-1]["stage"]]
    ax_cost.plot([r["ratio"] for r in rows], [r["latency_ms"] for r in rows], marker="o", label="p50 ms")
    ax_cost.plot([r["ratio"] for r in rows], [r["gzip_mb"] for r in rows], marker="s", label="gzip MB")
    ax_cost.plot([r["ratio"] for r in rows], [r["size_mb"] for r in rows], marker="^", label="file MB")
    ax_cost.set(xlabel="pruning ratio", title="cost")
    return save_panels(fig, (ax_acc, ax_cost), path)
