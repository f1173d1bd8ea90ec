"""Utterance-level classification metrics as the SER literature reports them.

WA (weighted accuracy) is plain accuracy; UA (unweighted accuracy) is the macro-averaged recall.
Macro-F1 and weighted-F1 complete the set (the GLAM README calls weighted-F1 "micro F1", but true
micro-F1 equals WA). A class absent from both truth and predictions does not count in the macro
averages; a class present in the truth but never predicted has precision 0 by convention.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; rows are true classes, columns predictions."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D of equal length, got {y_true.shape} and {y_pred.shape}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} holds class indices outside [0, {num_classes})")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict:
    """WA, UA, macro-F1, weighted-F1, per-class recall / precision / F1 / support, confusion matrix."""
    classes = list(classes)
    matrix = confusion_matrix(y_true, y_pred, len(classes))
    total = int(matrix.sum())
    if total == 0:
        raise ValueError("no predictions to score")
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    hits = np.diag(matrix)
    zeros = np.zeros(len(classes))
    recall = np.divide(hits, support, out=zeros.copy(), where=support > 0)
    precision = np.divide(hits, predicted, out=zeros.copy(), where=predicted > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=zeros.copy(), where=denominator > 0)
    present = support > 0
    return {
        "wa": float(hits.sum() / total),
        "ua": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "weighted_f1": float((f1 * support).sum() / total),
        "per_class": {
            c: {"recall": float(recall[i]), "precision": float(precision[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, c in enumerate(classes)
        },
        "confusion": matrix.tolist(),
        "classes": classes,
        "n": total,
    }


def format_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> str:
    """Text confusion matrix: rows true, columns predicted."""
    width = max(5, *(len(c) for c in classes)) + 1
    lines = ["true \\ pred".ljust(width) + "".join(c[:width - 1].rjust(width) for c in classes)]
    for name, row in zip(classes, matrix):
        lines.append(name.ljust(width) + "".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)
