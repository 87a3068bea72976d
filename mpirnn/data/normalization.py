"""Per-column normalization of series: the train split's mean and standard deviation.

`prepare` accumulates the moments of the train split while writing it (RunningMoments)
and records them in manifest.json; the Reader then hands the trainer (x - mean) / std,
and `Manifest.denormalize` turns model outputs back into data units. The rule for a
constant column (std 0) is "divide by 1": the column is centred, never turned into NaN.
Exercised by: python -m pytest -q tests/test_data_normalization.py
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("mpirnn.data")


@dataclass(frozen=True)
class Normalization:
    """mean[j] and std[j] of column j (feature j) over every train step, population std."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def scale(self) -> tuple[float, ...]:
        """The divisor actually used: std, or 1.0 for a constant column (std 0)."""
        return tuple(s if s > 0 else 1.0 for s in self.std)

    @property
    def constant_columns(self) -> tuple[int, ...]:
        """Indices of the columns whose std is 0 (only centred)."""
        return tuple(j for j, s in enumerate(self.std) if s == 0)

    def normalize(self, values):
        """(values - mean) / scale along the last dim, in float64 (numpy) or values' dtype (torch)."""
        mean, scale = self._like(values)
        return (values - mean) / scale

    def denormalize(self, values):
        """values * scale + mean: model outputs (normalized) back in data units."""
        mean, scale = self._like(values)
        return values * scale + mean

    def _like(self, values):
        # A torch tensor keeps its dtype and device; anything else becomes float64 numpy,
        # so this module never imports torch (the manifest is loaded before it is needed).
        if hasattr(values, "new_tensor"):
            return values.new_tensor(self.mean), values.new_tensor(self.scale)
        return np.asarray(self.mean, np.float64), np.asarray(self.scale, np.float64)

    def to_json(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}


class RunningMoments:
    """Mean and variance per column over blocks, merged exactly (Chan et al.), in float64."""

    def __init__(self, features: int):
        self.count = 0
        self.mean = np.zeros(features, np.float64)
        self.m2 = np.zeros(features, np.float64)

    def add(self, block: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add every row of `block` ([k, F] or [k, T, F]: all axes but the last are steps),
        or with `valid` ([k, T] booleans) only the valid steps: padding is not data."""
        x = np.asarray(block, np.float64)
        x = (x if valid is None else x[valid]).reshape(-1, self.mean.size)
        n = len(x)
        if n == 0:
            return
        mean = x.mean(axis=0)
        m2 = ((x - mean) ** 2).sum(axis=0)
        delta = mean - self.mean
        total = self.count + n
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.count * n / total)
        self.count = total

    def result(self, columns: Sequence[str]) -> Normalization:
        """The statistics, warning (by name) about each constant column."""
        std = np.sqrt(self.m2 / self.count)
        stats = Normalization(tuple(map(float, self.mean)), tuple(map(float, std)))
        for j in stats.constant_columns:
            log.warning(f"column {columns[j]!r} is constant in the train split (std 0): it is centred "
                        f"but not scaled (std taken as 1)")
        return stats


def normalization_from_json(value: object, features: int, where: str) -> Normalization | None:
    """Parse the manifest's "normalization" object; None when absent (older manifests)."""
    from mpirnn.errors import DataError

    if value is None:
        return None
    fix = "re-run python -m mpirnn.data prepare"
    if not isinstance(value, dict) or set(value) != {"mean", "std"}:
        raise DataError(f"{where}: normalization must be an object with mean and std: {fix}")
    parsed = []
    for name in ("mean", "std"):
        column = value[name]
        if (not isinstance(column, list) or len(column) != features
                or not all(_finite_number(v) for v in column)):
            raise DataError(f"{where}: normalization.{name} must be {features} finite "
                            f"number(s), got {column!r}: {fix}")
        parsed.append(tuple(float(v) for v in column))
    if any(s < 0 for s in parsed[1]):
        raise DataError(f"{where}: normalization.std holds a negative value: {fix}")
    return Normalization(*parsed)


def _finite_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
