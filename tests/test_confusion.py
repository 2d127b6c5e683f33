"""Per-class figures from predictions: the confusion matrix, precision / recall / F1, the most confused pairs,
the most confidently wrong images, and confusion.png."""

from __future__ import annotations

import pytest

from edgetl.confusion import MAX_MATRIX_CLASSES, confidently_wrong, most_confused, per_class, plot_confusion

LABELS = ["cat", "dog", "fox"]


def test_the_matrix_counts_true_rows_against_predicted_columns():
    # cat: 3 images, 2 right, 1 called dog; dog: 2 images, both right; fox: 1 image, called cat; one unlabelled
    targets = [0, 0, 0, 1, 1, 2, -1]
    predicted = [0, 0, 1, 1, 1, 0, 2]
    figures = per_class(targets, predicted, labels=LABELS)
    assert figures.confusion == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert figures.images == 6 and figures.accuracy == pytest.approx(4 / 6)
    cat, dog, fox = figures.classes
    assert (cat.support, cat.predicted, cat.precision, cat.recall) == (3, 3, pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert dog.precision == pytest.approx(2 / 3) and dog.recall == 1.0 and dog.f1 == pytest.approx(0.8)
    # fox is never predicted: no precision, but recall and F1 are 0 — it has an image and got it wrong
    assert (fox.precision, fox.recall, fox.f1) == (None, 0.0, 0.0)
    assert figures.macro_f1 == pytest.approx((2 / 3 + 0.8 + 0.0) / 3)
    assert [(p.label, p.predicted, p.count) for p in figures.most_confused] == [("cat", "dog", 1), ("fox", "cat", 1)]


def test_a_class_without_images_has_no_recall_and_unlabelled_rows_give_nothing():
    figures = per_class([0, 1], [0, 1], labels=LABELS)
    assert figures.classes[2].recall is None and figures.classes[2].f1 is None and figures.macro_f1 == 1.0
    assert per_class([-1, -1], [0, 1], labels=LABELS) is None


def test_most_confused_pairs_are_sorted_by_count_and_capped():
    matrix = [[5, 1, 3], [4, 5, 0], [0, 2, 5]]
    pairs = most_confused(matrix, LABELS, limit=2)
    assert [(p.label, p.predicted, p.count) for p in pairs] == [("dog", "cat", 4), ("cat", "fox", 3)]


def test_confidently_wrong_lists_the_wrong_images_most_confident_first():
    wrong = confidently_wrong([0, 1, 2, 0, -1], [1, 1, 0, 2, 0], [0.6, 0.99, 0.9, 0.6, 1.0],
                              paths=["a.png", "b.png", "c.png", "d.png", "e.png"], labels=LABELS, limit=2)
    assert [(w.path, w.label, w.predicted, w.confidence) for w in wrong] == [("c.png", "fox", "cat", 0.9),
                                                                             ("a.png", "cat", "dog", 0.6)]


@pytest.mark.parametrize("classes", [3, MAX_MATRIX_CLASSES + 5])  # a matrix; beyond 30 classes, the top pairs
def test_confusion_png_is_written_atomically(tmp_path, classes):
    labels = [f"c{i}" for i in range(classes)]
    figures = per_class(list(range(classes)) * 2, [(i + 1) % classes for i in range(classes)] + list(range(classes)),
                        labels=labels)
    plot_confusion([("val", figures), ("model.onnx", figures)], tmp_path / "confusion.png")
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["confusion.png"]
