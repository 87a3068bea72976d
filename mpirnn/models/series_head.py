"""What a series model's head predicts at each step, and its summed loss (docs/forecasting.md).

At every step t the head predicts the next `horizon` steps t + 1 .. t + H of every feature,
and for each either one value (loss "mse") or one value per quantile (loss "quantile", the
pinball loss). Its outputs are laid out [H, F, Q] (step ahead, feature, quantile) and flattened,
so horizon 1 with one value is the plain next-step head of width F.

Targets are [..., F] (horizon 1) or [..., H, F] with NaN where the step lies past the end of
the window (mpirnn/data/horizon.py): those terms are left out. The loss is a sum over the
present targets (and, for quantiles, a mean over the quantiles), divided by the caller by the
global count of present targets, so the units of any grid add up to the serial loss exactly.
Pure; exercised by:
    python -m pytest -q tests/test_series_head.py
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

LOSSES = ("auto", "mse", "quantile")


@dataclass(frozen=True)
class SeriesOutputs:
    features: int
    horizon: int = 1
    quantiles: tuple[float, ...] = ()   # empty: one value per step and feature (mean squared error)

    @property
    def per_value(self) -> int:
        """Outputs per predicted step and feature."""
        return max(1, len(self.quantiles))

    @property
    def width(self) -> int:
        return self.horizon * self.features * self.per_value

    @property
    def point_index(self) -> int:
        """The quantile that serves as the point forecast: the median, else the middle one."""
        if 0.5 in self.quantiles:
            return self.quantiles.index(0.5)
        return len(self.quantiles) // 2

    def shaped(self, prediction: torch.Tensor) -> torch.Tensor:
        """[..., width] -> [..., H, F, Q]."""
        return prediction.reshape(*prediction.shape[:-1], self.horizon, self.features, self.per_value)

    def point(self, prediction: torch.Tensor) -> torch.Tensor:
        """The point forecast of every step ahead [..., H, F]."""
        return self.shaped(prediction)[..., self.point_index]

    def next_step(self, prediction: torch.Tensor) -> torch.Tensor:
        """The point forecast of the next step [..., F] (what evaluation's RMSE scores)."""
        return self.point(prediction)[..., 0, :]

    def loss_sum(self, prediction: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed squared error, or pinball loss averaged over the quantiles, over present targets."""
        if self.horizon == 1 and not self.quantiles:   # the plain next-step head: every target is present
            return F.mse_loss(prediction, targets, reduction="sum")
        if self.horizon == 1 and targets.dim() == prediction.dim():
            targets = targets.unsqueeze(-2)              # [..., F] -> [..., 1, F]
        present = torch.isfinite(targets)
        targets = torch.where(present, targets, torch.zeros((), dtype=targets.dtype, device=targets.device))
        values = self.shaped(prediction).to(targets.dtype)   # no-op unless the head ran in bf16
        # Absent targets contribute 0 and no gradient: their difference is replaced, not scaled.
        diff = torch.where(present.unsqueeze(-1), targets.unsqueeze(-1) - values, torch.zeros_like(values))
        if not self.quantiles:
            return diff.square().sum()
        return pinball(diff, self.quantiles).sum() / len(self.quantiles)


def pinball(diff: torch.Tensor, quantiles) -> torch.Tensor:
    """The pinball (quantile) loss of `diff` = target - prediction [..., Q] at each quantile q:
    q * diff where the target is above, (q - 1) * diff where below. Its gradient with respect to
    the prediction is -q above and 1 - q below (-q at a tie)."""
    q = diff.new_tensor(quantiles)
    return diff * (q - (diff < 0).to(diff.dtype))


def outputs_from_config(train, features: int) -> SeriesOutputs:
    """The head of a next-step series model under train.loss, train.quantiles and train.horizon."""
    quantiles = tuple(float(q) for q in train.quantiles) if train.loss == "quantile" else ()
    return SeriesOutputs(features, train.horizon, quantiles)
