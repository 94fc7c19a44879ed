"""Preference-pair CSVs: reading, path resolution and label mapping, shared by training and evaluation.

Columns: ``path_A, path_B, prompt`` and per-dimension labels (``VQ, MQ, TA`` and,
in VideoGen-RewardBench files, ``Overall``), plus optional ``fps_A, num_frames_A,
fps_B, num_frames_B`` and ``MOS_A_<dim>`` / ``MOS_B_<dim>``. Labels ``A`` / ``B`` /
``same`` map to +1 / −1 / 0; anything else is invalid (NaN), masked and counted.
Paths are relative to a data root; ``videos/x.mp4`` and ``./videos/x.mp4`` are the same file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from model.errors import InvalidInputError

LABEL_VALUES: dict[str, float] = {"a": 1.0, "b": -1.0, "same": 0.0}
REQUIRED_COLUMNS = ("path_A", "path_B", "prompt")


def parse_label(value: object) -> float:
    """'A' → +1, 'B' → −1, 'same' → 0 (case and surrounding space ignored); anything else → NaN."""
    if isinstance(value, str):
        return LABEL_VALUES.get(value.strip().lower(), math.nan)
    return math.nan


def resolve_path(root: Path, value: object) -> Path:
    """A CSV path under ``root``. Relative paths (with or without './') are joined to root."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"empty or non-text video path {value!r}")
    p = Path(value.strip())
    return (p if p.is_absolute() else root / p).resolve()


def _optional_number(value: object) -> float | None:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"expected a number, got {value!r}") from None
    return None if math.isnan(f) else f


@dataclass
class PairTable:
    """A pairs CSV with resolved paths and numeric labels."""

    frame: pd.DataFrame  # the CSV as read (all columns), one row per pair
    path_a: list[Path]
    path_b: list[Path]
    labels: dict[str, np.ndarray]  # dim → (N,) float: +1, −1, 0 or NaN (invalid / missing)
    invalid_labels: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.path_a)

    def sampling(self, row: int, side: str) -> dict[str, float | int | None]:
        """Per-video fps / num_frames from the optional columns (None when absent or blank)."""
        out: dict[str, float | int | None] = {"fps": None, "num_frames": None}
        for key in out:
            col = f"{key}_{side}"
            if col in self.frame.columns:
                v = _optional_number(self.frame.at[row, col])
                out[key] = int(v) if (key == "num_frames" and v is not None) else v
        return out


def read_pairs(
    csv_path: str | Path,
    root: str | Path,
    dims: tuple[str, ...],
    *,
    require_labels: bool = True,
) -> PairTable:
    """Read a pairs CSV. Missing required columns are an error naming them."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InvalidInputError(f"pairs CSV {csv_path} not found")
    frame = pd.read_csv(csv_path, dtype={"path_A": str, "path_B": str, "prompt": str}, keep_default_na=False, na_values=[""])
    needed = list(REQUIRED_COLUMNS) + (list(dims) if require_labels else [])
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise InvalidInputError(f"{csv_path}: missing column(s) {missing}; found {list(frame.columns)}")
    root = Path(root)
    labels: dict[str, np.ndarray] = {}
    invalid: dict[str, int] = {}
    for dim in dims:
        if dim in frame.columns:
            labels[dim] = np.array([parse_label(v) for v in frame[dim]], dtype=np.float64)
            invalid[dim] = int(np.isnan(labels[dim]).sum())
    path_a = [resolve_path(root, v) for v in frame["path_A"]]
    path_b = [resolve_path(root, v) for v in frame["path_B"]]
    return PairTable(frame=frame, path_a=path_a, path_b=path_b, labels=labels, invalid_labels=invalid)
