"""Structured (channel) pruning as part of the checkpoint format: record a pruning plan, replay it.

A channel-pruned network has narrower layers than its registry architecture, so its state dict does not
fit the module that ``build_model`` makes. Instead of pickling the pruned module, the checkpoint keeps the
*plan*: for each pruning step, the layer whose output channels were removed and their indices. Replaying
the plan with torch-pruning's dependency graph on a fresh registry model reproduces the pruned structure
exactly (every coupled layer -- BatchNorm, the next convolution's inputs, both sides of a residual add --
shrinks with it), and the state dict then loads. ``edgekit.models.loading.float_model`` replays it, so every
runtime, exporter, quantizer and bench loads a pruned checkpoint like any other.

The plan lives in ``checkpoint.model["pruning"]``: ``{"method": "channel", "ratio": r, "plan": [[layer,
[idx, ...]], ...]}``. Unstructured pruning keeps the architecture (its zeros are ordinary weights) and
records ``{"method": "l1-unstructured", ...}`` without a plan.
"""
from __future__ import annotations

from edgekit.core.errors import BadInputError, require


def _out_channels_fn(module):
    import torch
    import torch_pruning as tp

    if isinstance(module, torch.nn.Conv2d):
        return tp.prune_conv_out_channels
    if isinstance(module, torch.nn.Linear):
        return tp.prune_linear_out_channels
    raise BadInputError(f"pruning plan names a {type(module).__name__}; only Conv2d and Linear layers are roots")


def prune_channels(model, example, ratio: float, protect: list[str]) -> list:
    """Remove ``ratio`` of the output channels of every prunable layer group (L1 magnitude of the whole group,
    torch-pruning's ``GroupMagnitudeImportance``), in place; returns the plan. ``protect``: module names
    whose output channels stay (the classifier always does, so the number of outputs never changes)."""
    import torch

    tp = require("torch_pruning", "train", "structured pruning")
    names = {module: name for name, module in model.named_modules()}
    modules = dict(model.named_modules())
    last = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))][-1]
    ignored = [last, *(modules[name] for name in protect)]
    pruner = tp.pruner.BasePruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=ignored)
    plan = []
    for group in pruner.step(interactive=True):
        dep, idxs = group[0]
        plan.append([names[dep.target.module], sorted(int(i) for i in idxs)])
        group.prune()
    return plan


def replay_channel_plan(model, example, plan: list) -> None:
    """Apply a recorded plan to a fresh model of the same architecture, in place."""
    tp = require("torch_pruning", "train", "loading a channel-pruned checkpoint")
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    modules = dict(model.named_modules())
    for name, idxs in plan:
        if name not in modules:
            raise BadInputError(f"pruning plan names layer {name!r}, which this architecture does not have")
        module = modules[name]
        graph.get_pruning_group(module, _out_channels_fn(module), idxs=list(idxs)).prune()
