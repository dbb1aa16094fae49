"""compute_metrics / selection_metric on small hand-checkable cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from dlink.metrics import METRICS, compute_metrics, selection_metric, to_probs


def test_selection_metric():
    assert selection_metric(2) == "auroc"
    assert selection_metric(5) == "bacc"
    with pytest.raises(ValueError, match="at least 2"):
        selection_metric(1)


def test_binary_perfect_and_logits_equal_probs():
    y = np.array([0, 0, 1, 1])
    logits = np.array([[2.0, -1.0], [1.0, 0.0], [0.0, 3.0], [-1.0, 1.0]])
    m = compute_metrics(y, logits, class_names=["rest", "task"])
    assert set(METRICS) <= set(m)
    for key in ("acc", "bacc", "kappa", "f1_weighted", "auroc", "auprc"):
        assert m[key] == pytest.approx(1.0), key
    assert m["recall/rest"] == m["recall/task"] == 1.0
    probs = torch.softmax(torch.tensor(logits), dim=1)
    assert compute_metrics(torch.tensor(y), probs) == {k: v for k, v in m.items() if "/" not in k}


def test_binary_uses_positive_class_probability():
    y = np.array([0, 1, 0, 1, 1])
    p1 = np.array([0.2, 0.6, 0.7, 0.9, 0.4])
    m = compute_metrics(y, np.stack([1 - p1, p1], 1))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p1))
    assert m["auprc"] == pytest.approx(average_precision_score(y, p1))
    assert compute_metrics(y, p1)["auroc"] == m["auroc"]  # (n,) scores accepted


def test_multiclass_macro_ovr_and_chance_level():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    logits = rng.normal(size=(60, 3))
    m = compute_metrics(y, logits)
    probs = to_probs(logits)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr",
                                                     average="macro"))
    assert m["bacc"] < 0.6 and abs(m["kappa"]) < 0.3
    assert np.allclose(probs.sum(1), 1)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_multiclass_with_absent_class_and_single_class():
    y = np.array([0, 0, 1, 1])  # class 2 never occurs
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]])
    assert compute_metrics(y, probs)["auroc"] == pytest.approx(1.0)
    assert math.isnan(compute_metrics(np.zeros(4, int), probs)["auroc"])


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="3 labels but scores have 2 rows"):
        compute_metrics([0, 1, 1], np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        compute_metrics([0, 2], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="1 class_names for 2"):
        compute_metrics([0, 1], np.zeros((2, 2)), class_names=["a"])
