"""Pairwise accuracy as VideoGen-RewardBench defines it, with and without ties.

Human labels h are +1 (A preferred), −1 (B preferred) and 0 (tie); the model
margin is m = score_A − score_B.

- Without ties: over pairs with h ≠ 0, C / (C + D) where C counts h·m > 0
  (a margin of exactly 0 is discordant).
- With ties (tie calibration, Deutsch et al. 2023, "Ties Matter"): for a
  threshold ε the model predicts a tie when |m| ≤ ε; a pair is correct when
  both are ties or the signs agree. Accuracy is the maximum over ε in the
  distinct values of |m| of (concordant untied + both-tied) / N. O(N log N).

Training's periodic evaluation and ``training.evaluate`` both use this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PairAccuracy:
    with_ties: float  # NaN when there are no valid pairs
    without_ties: float  # NaN when there are no non-tied pairs
    tie_threshold: float  # the ε that maximised with_ties (NaN when undefined)
    pairs: int  # valid pairs used
    ties: int  # of which labelled ties
    invalid: int  # pairs dropped for an invalid label or a non-finite margin

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _as_array(x: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def accuracy_without_ties(labels: np.ndarray, margins: np.ndarray) -> float:
    nontied = labels != 0
    if not nontied.any():
        return float("nan")
    return float(np.mean(labels[nontied] * margins[nontied] > 0))


def accuracy_with_ties(labels: np.ndarray, margins: np.ndarray) -> tuple[float, float]:
    """(best accuracy, its ε). Sort by |m| once; sweep ε over the distinct |m| with prefix sums."""
    n = labels.shape[0]
    if n == 0:
        return float("nan"), float("nan")
    absm = np.abs(margins)
    order = np.argsort(absm, kind="stable")
    a = absm[order]
    h = labels[order]
    m = margins[order]
    tie_label = (h == 0).astype(np.int64)
    concordant = ((h != 0) & (h * m > 0)).astype(np.int64)
    tie_prefix = np.cumsum(tie_label)  # labelled ties among the k+1 smallest |m|
    conc_prefix = np.cumsum(concordant)
    conc_total = int(conc_prefix[-1])
    # ε = a[k] predicts ties for every pair with |m| ≤ a[k]: the last index of each distinct value
    last_of_value = np.flatnonzero(np.r_[a[1:] != a[:-1], True])
    correct = tie_prefix[last_of_value] + (conc_total - conc_prefix[last_of_value])
    best = int(np.argmax(correct))  # first maximum: the smallest ε
    return float(correct[best] / n), float(a[last_of_value[best]])


def pair_accuracy(labels: Sequence[float] | np.ndarray, margins: Sequence[float] | np.ndarray) -> PairAccuracy:
    """Accuracy for one dimension. Labels outside {1, −1, 0} (e.g. NaN for invalid) are dropped and counted."""
    h = _as_array(labels)
    m = _as_array(margins)
    if h.shape != m.shape:
        raise ValueError(f"labels ({h.shape[0]}) and margins ({m.shape[0]}) differ in length")
    valid = np.isin(h, (1.0, -1.0, 0.0)) & np.isfinite(m)
    h, m = h[valid], m[valid]
    with_ties, eps = accuracy_with_ties(h, m)
    return PairAccuracy(
        with_ties=with_ties,
        without_ties=accuracy_without_ties(h, m),
        tie_threshold=eps,
        pairs=int(h.shape[0]),
        ties=int((h == 0).sum()),
        invalid=int((~valid).sum()),
    )
