"""Classification metrics, checked against hand-computed values."""

import numpy as np
import pytest

from glam_fast.metrics import classification_metrics, confusion_matrix, format_confusion


def test_hand_computed_example():
    classes = ["anger", "joy", "sad"]
    y_true = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 0, 1, 2, 1, 0, 2, 2, 2, 1]
    m = classification_metrics(y_true, y_pred, classes)
    assert m["confusion"] == [[2, 1, 1], [1, 1, 0], [0, 1, 3]]
    assert m["wa"] == pytest.approx(6 / 10)
    recalls = [2 / 4, 1 / 2, 3 / 4]
    precisions = [2 / 3, 1 / 3, 3 / 4]
    f1s = [2 * p * r / (p + r) for p, r in zip(precisions, recalls)]
    assert m["ua"] == pytest.approx(np.mean(recalls))
    assert m["macro_f1"] == pytest.approx(np.mean(f1s))
    assert m["weighted_f1"] == pytest.approx((4 * f1s[0] + 2 * f1s[1] + 4 * f1s[2]) / 10)
    assert m["per_class"]["joy"] == pytest.approx({"recall": 0.5, "precision": 1 / 3, "f1": f1s[1], "support": 2})


def test_class_never_predicted_and_class_absent():
    m = classification_metrics([0, 0, 1, 1], [0, 0, 0, 0], ["a", "b", "c"])
    assert m["per_class"]["b"] == {"recall": 0.0, "precision": 0.0, "f1": 0.0, "support": 2}
    assert m["ua"] == pytest.approx(0.5)  # class c is absent from the truth: not averaged
    assert m["macro_f1"] == pytest.approx((2 * 0.5 * 1 / 1.5 + 0.0) / 2)


def test_errors():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="equal length"):
        confusion_matrix([0, 1], [0], 3)
    with pytest.raises(ValueError, match="no predictions"):
        classification_metrics([], [], ["a"])


def test_format_confusion():
    text = format_confusion([[1, 2], [3, 4]], ["x", "y"])
    assert text.splitlines()[1].split() == ["x", "1", "2"]
