"""Accuracy with and without ties, against the benchmark's worked examples and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import pair_accuracy
from training.pairs import parse_label, read_pairs


def test_worked_example_1():
    h = [1, -1, 0, 1, -1, 0, 1, -1, 0]
    a = np.array([0.9, -0.7, 0.1, 0.8, -0.6, 0.2, 0.7, -0.5, 0.3])
    b = np.array([0.1, -0.8, 0.5, 0.5, -0.3, 0.3, 0.4, -0.4, 0.4])
    acc = pair_accuracy(h, a - b)
    assert acc.with_ties == pytest.approx(0.6667, abs=1e-4)
    assert acc.without_ties == pytest.approx(0.8333, abs=1e-4)
    assert (acc.pairs, acc.ties, acc.invalid) == (9, 3, 0)


def test_worked_example_2():
    h = [1, 1, -1, 0, 0, 1, -1, -1, 0, 1]
    m = [0.5, 0.0, -0.2, 0.05, -0.01, 2.0, 0.3, -1.0, 0.0, 0.02]
    acc = pair_accuracy(h, m)
    assert acc.with_ties == pytest.approx(0.7)
    assert acc.without_ties == pytest.approx(5 / 7)
    assert acc.tie_threshold == pytest.approx(0.01)  # the smallest ε reaching the maximum


def _brute_force_with_ties(h, m):
    best = 0.0
    for eps in set(np.abs(m)):
        tie = np.abs(m) <= eps
        correct = ((h == 0) & tie) | ((h != 0) & ~tie & (h * m > 0))
        best = max(best, correct.mean())
    return best


def test_matches_brute_force_on_random_data():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 60))
        h = rng.choice([1.0, -1.0, 0.0], size=n)
        m = np.round(rng.normal(size=n), 1)  # rounding creates repeated |m| values
        assert pair_accuracy(h, m).with_ties == pytest.approx(_brute_force_with_ties(h, m))


def test_ties_only_and_no_ties():
    ties = pair_accuracy([0, 0, 0], [0.1, -0.2, 0.0])
    assert ties.with_ties == 1.0  # ε = 0.2 ties everything
    assert math.isnan(ties.without_ties)
    no_ties = pair_accuracy([1, -1, 1, -1], [0.3, -0.1, -0.2, 0.4])
    assert no_ties.without_ties == 0.5
    # ε comes from the distinct |m| only, so at least the smallest-|m| pair is predicted a tie:
    # ε = 0.1 ties away the correct pair i1 → 1/4, and larger ε do no better
    assert no_ties.with_ties == 0.25 and no_ties.tie_threshold == pytest.approx(0.1)
    empty = pair_accuracy([], [])
    assert math.isnan(empty.with_ties) and empty.pairs == 0


def test_invalid_labels_are_dropped_and_counted():
    acc = pair_accuracy([1, float("nan"), -1, 2], [0.5, 0.5, -0.5, 0.5])
    assert (acc.pairs, acc.invalid) == (2, 2)
    assert acc.without_ties == 1.0


def test_zero_margin_is_discordant():
    assert pair_accuracy([1, -1], [0.0, 0.0]).without_ties == 0.0


def test_labels():
    assert [parse_label(x) for x in ["A", "b", " same ", "SAME"]] == [1, -1, 0, 0]
    assert all(math.isnan(parse_label(x)) for x in ["tie", "", None, 1, "AB"])


def test_fixture_csv_reads_with_both_path_forms(fixtures_dir):
    table = read_pairs(fixtures_dir / "example.csv", fixtures_dir, ("VQ", "MQ", "TA"))
    assert len(table) == 2
    assert all(p.is_file() for p in table.path_a + table.path_b)
    assert table.path_b[0] == (fixtures_dir / "videos/example_1_B.mp4").resolve()  # './videos/...'
    assert table.labels["VQ"].tolist() == [-1, 0] and table.labels["TA"].tolist() == [1, 1]
    assert table.sampling(0, "B") == {"fps": 30.0, "num_frames": 152}
