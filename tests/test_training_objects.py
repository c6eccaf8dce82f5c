"""The paper's separation weights against hand-computed values, and the boundary class."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.training.objects import boundary_classes, cutoff, separation_weights


def test_separation_weights_by_hand() -> None:
    instances = np.zeros((11, 11), np.int32)
    instances[5, 2], instances[5, 8] = 1, 2  # two one-pixel objects 6 px apart
    w = separation_weights(instances, w0=10.0, sigma=5.0)
    # Midway: d1 = d2 = 3.
    assert w[5, 5] == pytest.approx(10 * math.exp(-(6**2) / 50), rel=1e-5)
    # (0, 0): d1 = √(5² + 2²), d2 = √(5² + 8²).
    d1, d2 = math.hypot(5, 2), math.hypot(5, 8)
    assert w[0, 0] == pytest.approx(10 * math.exp(-((d1 + d2) ** 2) / 50), rel=1e-5)
    assert w[5, 2] == w[5, 8] == 0  # object pixels get no separation weight
    # Symmetric about the midline, largest between the objects.
    np.testing.assert_allclose(w, w[:, ::-1], rtol=1e-6)
    assert w.max() == w[5, 5] or w.max() == pytest.approx(w[5, 4])


def test_one_object_alone_has_no_separation_weight() -> None:
    instances = np.zeros((20, 20), np.int32)
    instances[5:9, 5:9] = 7
    assert not separation_weights(instances, 10.0, 5.0).any()


def test_far_objects_add_nothing_and_the_cutoff_is_safe() -> None:
    instances = np.zeros((10, 200), np.int32)
    instances[5, 0], instances[5, 199] = 1, 2
    assert separation_weights(instances, 10.0, 5.0).max() < 1e-3 * 10
    assert 10 * math.exp(-(cutoff(5.0) ** 2) / 50) <= 1e-3 * 10


def test_boundary_class_separates_touching_objects() -> None:
    instances = np.zeros((6, 10), np.int32)
    instances[1:5, 1:5], instances[1:5, 5:9] = 1, 2  # touching along a column
    classes = boundary_classes(instances, np.array([0, 1, 1]), boundary=2, width=1)
    expected = np.zeros((6, 10), np.int64)
    expected[1:5, 1:9] = 2
    expected[2:4, 2:4] = expected[2:4, 6:8] = 1  # interiors: more than one step from anything else
    np.testing.assert_array_equal(classes, expected)
    # The map's edge is not a boundary (a tile cut through an object is read with a margin instead).
    edge = boundary_classes(np.ones((4, 4), np.int32), np.array([0, 3]), boundary=2, width=1)
    assert (edge == 3).all()


def test_object_scores_by_hand() -> None:
    from pipeline.training.instance_metrics import score_objects

    true = np.zeros((4, 8), np.int32)
    true[:, 0:2], true[:, 2:4], true[:, 6:8] = 1, 2, 3  # three objects, 8 px each
    predicted = np.zeros((4, 8), np.int32)
    predicted[:, 0:4] = 5  # objects 1 and 2 merged
    predicted[0, 7] = 9  # a sliver of object 3
    scores = score_objects(true, predicted)
    # AJI: true 1 and 2 both pair with 5 (IoU 0.5 each): ∩ 8 + 8; ∪ 16 + 16; true 3 pairs with 9: ∩ 1, ∪ 8.
    assert scores.aji == pytest.approx((8 + 8 + 1) / (16 + 16 + 8))
    assert (scores.true_count, scores.predicted_count) == (3, 2)
    assert scores.f1 == 0.0  # no IoU above 0.5
    assert scores.dice == pytest.approx(2 * 17 / (24 + 17))
    assert scores.count_error == pytest.approx(1 / 3)
    perfect = score_objects(true, true * 7)
    assert (perfect.aji, perfect.f1, perfect.dice) == (1.0, 1.0, 1.0)
