"""Classification metrics in plain numpy (no torch, no scikit-learn), so any runtime can report them."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def scores_from_logits(logits: np.ndarray, binary: bool) -> np.ndarray:
    """Positive-class probability (binary, shape N) or class probabilities (N x K)."""
    logits = np.asarray(logits, np.float64)
    if binary:
        return 1.0 / (1.0 + np.exp(-logits.reshape(-1)))
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def predictions(logits: np.ndarray, binary: bool) -> np.ndarray:
    logits = np.asarray(logits)
    return (logits.reshape(-1) > 0).astype(np.int64) if binary else logits.argmax(axis=1)


# Label names that mean "the positive class" when a two-class data set does not say (any case).
POSITIVE_NAMES = ("attentive", "engaged", "positive", "pos", "yes", "true", "1", "present", "alert")


def default_positive(labels: Sequence[str]) -> str:
    """The positive label of a two-class data set: one named like POSITIVE_NAMES, else the second."""
    lowered = [str(label).lower() for label in labels]
    for name in POSITIVE_NAMES:
        if name in lowered:
            return labels[lowered.index(name)]
    return labels[1]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count half)."""
    positives, negatives = int(y_true.sum()), int(len(y_true) - y_true.sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    sorted_scores = score[order]
    ranks = np.empty(len(score))
    # average ranks over tied scores
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts):
        ranks[order[start:start + count]] = start + (count + 1) / 2.0
    rank_sum = ranks[y_true == 1].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """PR-AUC as average precision: mean of the precision at the rank of each positive."""
    positives = int(y_true.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-score, kind="mergesort")
    hits = y_true[order]
    sorted_scores = score[order]
    # Evaluate only at the last index of each run of tied scores (thresholds), as a threshold sweep does.
    last_of_tie = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    tp = np.cumsum(hits)[last_of_tie]
    seen = (np.arange(len(hits)) + 1)[last_of_tie]
    recall_steps = np.diff(np.r_[0, tp]) / positives
    return float(np.sum(recall_steps * tp / seen))


def classification_report(y_true: Sequence[int], logits: np.ndarray, labels: Sequence[str],
                          binary: bool) -> dict[str, Any]:
    """All the numbers `edgekit train` reports on the test split, as a JSON-ready dict."""
    y_true = np.asarray(y_true, np.int64)
    y_pred = predictions(logits, binary)
    k = len(labels)
    cm = confusion_matrix(y_true, y_pred, k)
    tp = np.diag(cm).astype(np.float64)
    fp, fn = cm.sum(axis=0) - tp, cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    precision, recall = _safe_div(tp, tp + fp), _safe_div(tp, tp + fn)
    specificity = _safe_div(tn, tn + fp)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    per_class = {name: {"precision": precision[i], "recall": recall[i], "specificity": specificity[i],
                        "f1": f1[i], "support": int(cm[i].sum())} for i, name in enumerate(labels)}
    report: dict[str, Any] = {
        "samples": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else float("nan"),
        "confusion_matrix": cm.tolist(),
        "per_class": {n: {m: float(v) if m != "support" else v for m, v in d.items()} for n, d in per_class.items()},
    }
    if binary:  # report the positive class (label index 1), plus threshold-free areas
        score = scores_from_logits(logits, True)
        report.update(positive=labels[1], precision=float(precision[1]), recall=float(recall[1]), specificity=float(specificity[1]),
                      f1=float(f1[1]), roc_auc=roc_auc(y_true, score), pr_auc=average_precision(y_true, score))
    else:
        report.update(precision=float(precision.mean()), recall=float(recall.mean()),
                      specificity=float(specificity.mean()), f1=float(f1.mean()), average="macro")
    return report


def format_report(report: dict[str, Any]) -> str:
    """A readable table: the headline numbers, then one row per class, then the confusion matrix."""
    keys = [k for k in ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc") if k in report]
    suffix = f" ({report['average']})" if "average" in report else ""
    if "positive" in report:
        suffix = f" (precision/recall/f1 of the positive class {report['positive']!r})"
    lines = [f"test samples: {report['samples']}" + suffix,
             "  ".join(f"{k}={report[k]:.4f}" for k in keys), ""]
    names = list(report["per_class"])
    width = max(12, max(len(n) for n in names) + 2)
    lines.append(f"{'class':<{width}}{'precision':>10}{'recall':>10}{'specif.':>10}{'f1':>10}{'support':>9}")
    for name, row in report["per_class"].items():
        lines.append(f"{name:<{width}}{row['precision']:>10.4f}{row['recall']:>10.4f}"
                     f"{row['specificity']:>10.4f}{row['f1']:>10.4f}{row['support']:>9d}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    cell = max(5, len(str(max(max(r) for r in report["confusion_matrix"]))) + 1)
    for name, row in zip(names, report["confusion_matrix"]):
        lines.append(f"{name[:width - 1]:<{width}}" + "".join(f"{v:>{cell}d}" for v in row))
    return "\n".join(lines)
