"""What a series model's head predicts at each step, and its summed loss (docs/forecasting.md).

At every step t the head predicts the next `horizon` steps t + 1 .. t + H of every feature,
and for each either one value (loss "mse") or one value per quantile (loss "quantile", the
pinball loss). Its outputs are laid out [H, F, Q] (step ahead, feature, quantile) and flattened,
so horizon 1 with one value is the plain next-step head of width F.

With H > 1 the targets are a HorizonTargets (mpirnn/data/horizon.py): every step is scored on
its next step, and the forecast origins (every H-th step back from the window's end) also on
their steps 2 .. H ahead. So only the first F x Q rows of the head run at every step, and the
whole head at the origins only. The loss is a sum over the scored terms (for quantiles, a mean
over the quantiles), divided by the caller by the global count of terms, so the units of any
grid add up to the serial loss exactly. Pure; exercised by:
    python -m pytest -q tests/test_series_head.py
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from mpirnn.config import steps_ahead

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

    def shaped(self, prediction: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """[..., steps x F x Q] -> [..., steps, F, Q] (steps: the horizon unless given)."""
        return prediction.reshape(*prediction.shape[:-1], steps or self.horizon, self.features, self.per_value)

    def first_step(self, head, outputs: torch.Tensor) -> torch.Tensor:
        """The head's outputs for the next step only [..., 1, F, Q]: its first F x Q rows."""
        if self.horizon == 1:
            return self.shaped(head(outputs))
        rows = self.features * self.per_value
        return self.shaped(F.linear(outputs, head.weight[:rows], head.bias[:rows]), 1)

    def next_point(self, head, outputs: torch.Tensor) -> torch.Tensor:
        """The point forecast of the next step [..., F] (the median where there are quantiles)."""
        return self.first_step(head, outputs)[..., 0, :, self.point_index]

    def loss_sum(self, head, outputs: torch.Tensor, targets) -> torch.Tensor:
        """Summed squared error, or pinball loss averaged over the quantiles, of a unit's top
        `outputs` [b, n, hidden]: targets [b, n, F] (H = 1) or a HorizonTargets."""
        if isinstance(targets, torch.Tensor):
            if not self.quantiles:       # the plain next-step head
                return F.mse_loss(head(outputs), targets, reduction="sum")
            return self.terms(self.shaped(head(outputs)), targets.unsqueeze(-2))
        total = self.terms(self.first_step(head, outputs), targets.next_values().unsqueeze(-2))
        where, ahead = targets.origins()
        if where.numel():
            total = total + self.terms(self.shaped(head(outputs[:, where]))[..., 1:, :, :], ahead)
        return total

    def terms(self, values: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The summed loss of predictions [..., S, F, Q] against targets [..., S, F]."""
        diff = targets.unsqueeze(-1) - values.to(targets.dtype)   # .to: a no-op unless the head ran in bf16
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
    return SeriesOutputs(features, steps_ahead(train), quantiles)
