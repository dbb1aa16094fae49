"""Classification metrics for teacher, student and export gates (scikit-learn underneath).

Every metric is computed from class indices and per-class scores; logits are turned into
probabilities with a softmax. Threshold-free metrics use the positive-class probability for
two classes and a macro one-vs-rest average otherwise.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    recall_score,
    roc_auc_score,
)

METRICS = ("acc", "bacc", "kappa", "f1_weighted", "auroc", "auprc")


def tune_threshold(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(bias, BAcc): the shift added to class 1's logit that maximises two-class balanced
    accuracy of ``logits`` (n, 2) against ``y``; ties go to the smallest |shift|."""
    margin = logits[:, 1] - logits[:, 0]  # class 1 when margin + bias > 0
    cuts = np.unique(margin)
    candidates = np.concatenate([[0.0], -(cuts[:-1] + cuts[1:]) / 2, [-cuts[0] + 1e-3, -cuts[-1] - 1e-3]])
    scored = [(balanced_accuracy_score(y, (margin + b > 0).astype(int)), -abs(b), b) for b in candidates]
    best = max(scored)
    return float(best[2]), float(best[0])


def selection_metric(n_classes: int) -> str:
    """Metric that picks the best checkpoint: AUROC for 2 classes, balanced accuracy above."""
    if n_classes < 2:
        raise ValueError(f"n_classes={n_classes}; a classification task needs at least 2.")
    return "auroc" if n_classes == 2 else "bacc"


def _numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):  # torch.Tensor, without importing torch here
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def to_probs(logits_or_probs) -> np.ndarray:
    """(n, K) logits or probabilities -> (n, K) probabilities; (n,) binary scores -> (n, 2).

    Rows already in [0, 1] that sum to 1 are taken as probabilities; anything else as logits
    (softmax; for (n,) scores a sigmoid).
    """
    s = _numpy(logits_or_probs).astype(np.float64)
    if s.ndim == 1:
        p1 = s if s.min(initial=0) >= 0 and s.max(initial=0) <= 1 else 1 / (1 + np.exp(-s))
        return np.stack([1 - p1, p1], axis=1)  # (n, 2)
    if s.ndim != 2:
        raise ValueError(f"scores must be (n, n_classes) or (n,), got shape {s.shape}.")
    if s.min(initial=0) >= 0 and s.max(initial=0) <= 1 and np.allclose(s.sum(1), 1, atol=1e-4):
        return s
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)  # (n, K)


def _macro_ovr(y_true: np.ndarray, probs: np.ndarray, score_fn) -> float:
    """Mean over classes of ``score_fn(is_class_k, p_k)``, for classes with both outcomes
    present; NaN when no class qualifies (e.g. y_true holds a single class)."""
    scores = [score_fn(y_true == k, probs[:, k]) for k in range(probs.shape[1])
              if 0 < (y_true == k).sum() < len(y_true)]
    return float(np.mean(scores)) if scores else float("nan")


def compute_metrics(y_true, logits_or_probs, class_names: list[str] | None = None) -> dict:
    """Balanced accuracy, Cohen's kappa, weighted F1, AUROC and AUC-PR of one prediction set.

    Parameters
    ----------
    y_true : (n,) int class indices in [0, K).
    logits_or_probs : (n, K) logits or probabilities (numpy or torch); (n,) positive-class
        scores for a binary task.
    class_names : K names; adds ``recall/<name>`` entries.

    Returns
    -------
    dict of floats: ``acc``, ``bacc``, ``kappa``, ``f1_weighted``, ``auroc`` and ``auprc``
    (binary: of the positive class 1; K > 2: macro one-vs-rest over the classes present in
    ``y_true``, NaN if it holds a single class), ``n``, and per-class recalls if named.
    """
    y = _numpy(y_true).astype(np.int64).ravel()
    probs = to_probs(logits_or_probs)
    n, K = probs.shape
    if len(y) != n:
        raise ValueError(f"y_true has {len(y)} labels but scores have {n} rows.")
    if n == 0:
        raise ValueError("no predictions to score: y_true is empty.")
    if y.min() < 0 or y.max() >= K:
        raise ValueError(f"labels must be in [0, {K}) for {K} score columns; got "
                         f"{sorted(set(y.tolist()))}.")
    if class_names is not None and len(class_names) != K:
        raise ValueError(f"{len(class_names)} class_names for {K} score columns.")
    pred = probs.argmax(axis=1)
    labels = list(range(K))
    out = {
        "n": float(n),
        "acc": float(accuracy_score(y, pred)),
        "bacc": float(balanced_accuracy_score(y, pred)),
        "kappa": float(cohen_kappa_score(y, pred, labels=labels)),
        "f1_weighted": float(f1_score(y, pred, labels=labels, average="weighted",
                                      zero_division=0)),
    }
    if K == 2:
        two = 0 < y.sum() < n
        out["auroc"] = float(roc_auc_score(y, probs[:, 1])) if two else float("nan")
        out["auprc"] = float(average_precision_score(y, probs[:, 1])) if two else float("nan")
    else:
        out["auroc"] = _macro_ovr(y, probs, roc_auc_score)
        out["auprc"] = _macro_ovr(y, probs, average_precision_score)
    if class_names is not None:
        recalls = recall_score(y, pred, labels=labels, average=None, zero_division=0)
        pairs = zip(class_names, recalls, strict=True)
        out.update({f"recall/{name}": float(r) for name, r in pairs})
    return out
