"""Pairwise reward losses, per dimension, masked by label validity.

Rewards come as ``r_a, r_b``: (B, D) for the A and B videos of B pairs over D
dimensions. Labels are +1 (A chosen), −1 (B chosen), 0 (tie) or NaN (invalid or
missing: masked out). With d = r_chosen − r_rejected:

- ``btt`` (Bradley-Terry with ties, Rao-Kupper, k = 5): non-tied −log σ(d − ln k);
  tied −log σ(d − ln k) − log σ(−d − ln k) − ln(k² − 1). The tie term is symmetric
  in d, so for ties it does not matter which side counts as chosen.
- ``bt``: −log σ(d), non-tied pairs only.
- ``margin``: −log σ(d − (mos_chosen − mos_rejected)), non-tied pairs with both MOS.
- ``constant_margin``: −log σ(d − 0.57), non-tied pairs only.
- ``scaled``: −(mos_chosen − mos_rejected) · log σ(d), non-tied pairs with both MOS.
- ``reg``: (r − (MOS − 3))² for every video with a MOS (labels are not needed).

The loss is the mean over the valid (pair or video, dimension) entries, so a batch
with more valid labels weighs more entries, and a dimension missing its label in
one pair does not dilute the others. A batch with no valid entry gives a zero
that still depends on every reward (DDP needs every rank to backpropagate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.errors import InvalidInputError

LOSS_TYPES = ("btt", "bt", "margin", "constant_margin", "scaled", "reg")


@dataclass
class PairLoss:
    loss: torch.Tensor  # () mean over valid entries
    per_entry: torch.Tensor  # (B, D) or (2B, D) for reg; 0 where masked
    valid: torch.Tensor  # bool, same shape as per_entry
    count: int  # number of valid entries


def _check(r_a: torch.Tensor, r_b: torch.Tensor, labels: torch.Tensor) -> None:
    if r_a.shape != r_b.shape or r_a.shape != labels.shape or r_a.dim() != 2:
        raise InvalidInputError(
            f"rewards and labels must all be (B, D); got r_a {tuple(r_a.shape)}, r_b {tuple(r_b.shape)}, "
            f"labels {tuple(labels.shape)}"
        )


def chosen_margin(r_a: torch.Tensor, r_b: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d = r_chosen − r_rejected: r_a − r_b where A is chosen (or tied), r_b − r_a where B is."""
    return torch.where(labels < 0, r_b - r_a, r_a - r_b)


def mos_margin(mos_a: torch.Tensor, mos_b: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mos_chosen − mos_rejected (NaN where a MOS is missing)."""
    return torch.where(labels < 0, mos_b - mos_a, mos_a - mos_b)


def _reduce(per_entry: torch.Tensor, valid: torch.Tensor, anchor: torch.Tensor) -> PairLoss:
    per_entry = torch.where(valid, per_entry, torch.zeros_like(per_entry))
    count = int(valid.sum())
    if count == 0:
        loss = anchor.sum() * 0.0  # keeps the graph (and DDP's reducer) intact
    else:
        loss = per_entry.sum() / count
    return PairLoss(loss=loss, per_entry=per_entry, valid=valid, count=count)


def pair_loss(
    r_a: torch.Tensor,
    r_b: torch.Tensor,
    labels: torch.Tensor,
    *,
    kind: str = "btt",
    btt_k: float = 5.0,
    constant_margin: float = 0.57,
    mos_a: torch.Tensor | None = None,
    mos_b: torch.Tensor | None = None,
    mos_offset: float = 3.0,
) -> PairLoss:
    """The loss ``kind`` for (B, D) rewards; see the module docstring for the formulas."""
    _check(r_a, r_b, labels)
    if kind not in LOSS_TYPES:
        raise InvalidInputError(f"unknown loss {kind!r}; use one of {', '.join(LOSS_TYPES)}")
    # Compute in float32: bf16 log-sigmoids of small margins lose the differences the loss is about.
    r_a, r_b = r_a.float(), r_b.float()
    labels = labels.to(r_a.device, torch.float32)
    known = labels.isfinite() & ((labels == 1) | (labels == -1) | (labels == 0))
    labels = torch.where(known, labels, torch.zeros_like(labels))  # NaN must not leak into where()
    nontied = known & (labels != 0)
    tied = known & (labels == 0)
    anchor = r_a + r_b
    if kind in ("margin", "scaled", "reg"):
        if mos_a is None or mos_b is None:
            raise InvalidInputError(f"loss {kind!r} needs MOS_A_<dim> / MOS_B_<dim> columns in the data")
        mos_a = mos_a.to(r_a.device, torch.float32)
        mos_b = mos_b.to(r_a.device, torch.float32)

    if kind == "reg":
        r = torch.cat([r_a, r_b], dim=0)  # (2B, D)
        target = torch.cat([mos_a, mos_b], dim=0) - mos_offset
        valid = target.isfinite()
        target = torch.where(valid, target, torch.zeros_like(target))
        return _reduce((r - target) ** 2, valid, anchor)

    d = chosen_margin(r_a, r_b, labels)
    if kind == "btt":
        if not btt_k > 1:
            raise InvalidInputError(f"btt_k must be > 1 (ln(k² − 1) must exist), got {btt_k}")
        log_k = math.log(btt_k)
        win = -F.logsigmoid(d - log_k)
        tie = -F.logsigmoid(d - log_k) - F.logsigmoid(-d - log_k) - math.log(btt_k**2 - 1)
        return _reduce(torch.where(tied, tie, win), nontied | tied, anchor)
    if kind == "bt":
        return _reduce(-F.logsigmoid(d), nontied, anchor)
    if kind == "constant_margin":
        return _reduce(-F.logsigmoid(d - constant_margin), nontied, anchor)
    mm = mos_margin(mos_a, mos_b, labels)
    valid = nontied & mm.isfinite()
    mm = torch.where(valid, mm, torch.zeros_like(mm))
    if kind == "margin":
        return _reduce(-F.logsigmoid(d - mm), valid, anchor)
    return _reduce(-mm * F.logsigmoid(d), valid, anchor)  # scaled
