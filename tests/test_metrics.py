import numpy as np
import pytest
from sklearn import metrics as sk

from edgekit.core.metrics import average_precision, classification_report, confusion_matrix, roc_auc


@pytest.fixture(scope="module")
def multiclass():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4))
    logits[np.arange(300), y] += 1.0  # better than chance, not perfect
    return y, logits


def test_confusion_and_per_class_scores_match_sklearn(multiclass):
    y, logits = multiclass
    pred = logits.argmax(1)
    np.testing.assert_array_equal(confusion_matrix(y, pred, 4), sk.confusion_matrix(y, pred, labels=range(4)))
    report = classification_report(y, logits, ("a", "b", "c", "d"), binary=False)
    assert report["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    p, r, f, _ = sk.precision_recall_fscore_support(y, pred, labels=range(4), zero_division=0)
    for i, name in enumerate("abcd"):
        row = report["per_class"][name]
        assert row["precision"] == pytest.approx(p[i])
        assert row["recall"] == pytest.approx(r[i])
        assert row["f1"] == pytest.approx(f[i])
    assert report["f1"] == pytest.approx(f.mean())


def test_binary_auc_scores_match_sklearn_including_ties():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    score = np.round(y * 0.6 + rng.normal(size=400), 1)  # rounding makes ties
    assert roc_auc(y, score) == pytest.approx(sk.roc_auc_score(y, score))
    assert average_precision(y, score) == pytest.approx(sk.average_precision_score(y, score))


def test_binary_report_has_specificity_and_aucs():
    y = np.array([0, 0, 1, 1, 1, 0])
    logits = np.array([-2.0, 0.5, 1.0, 3.0, -1.0, -0.5])[:, None]
    report = classification_report(y, logits, ("neg", "pos"), binary=True)
    # predictions (logit > 0): 0 1 1 1 0 0 -> TP 2, FN 1, FP 1, TN 2
    assert report["precision"] == pytest.approx(2 / 3)
    assert report["recall"] == pytest.approx(2 / 3)
    assert report["specificity"] == pytest.approx(2 / 3)
    assert report["roc_auc"] == pytest.approx(sk.roc_auc_score(y, logits[:, 0]))
    assert report["pr_auc"] == pytest.approx(sk.average_precision_score(y, logits[:, 0]))
