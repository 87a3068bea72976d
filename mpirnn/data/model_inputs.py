"""What a series model reads at each step: the series' own values, the values at seasonal lags
(mpirnn/data/lags.py) and the calendar of the step it predicts (mpirnn/data/calendar.py).

Only the inputs widen; the targets stay the series' own columns. A `ModelInputs` is resolved from
the dataset and the config at training (`resolve_inputs`), recorded in every checkpoint
(mpirnn/inference/model_info.py) and used as recorded by evaluate, forecast and export, so the
same step gets the same inputs there. `read_inputs` reads a rank's segment of a batch like any
input: each window's own steps plus the steps its lags reach back, nothing of the other ranks'.
    python -m pytest -q tests/test_data_calendar_lags.py
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mpirnn.data.calendar import calendar_features, calendar_width
from mpirnn.data.lags import lagged_values, lags_from_setting, steps_back
from mpirnn.data.time_axis import TimeAxis
from mpirnn.errors import ConfigError, DataError


@dataclass(frozen=True)
class ModelInputs:
    features: int                   # the series' columns (and the targets)
    lags: tuple[int, ...] = ()      # lags > 1, counted from the predicted step
    calendar: str | None = None     # the frequency whose calendar features are added

    @property
    def back(self) -> int:
        """Steps before a window's first input that its lags read."""
        return steps_back(self.lags)

    @property
    def width(self) -> int:
        """Input values per step."""
        return self.features * (1 + len(self.lags)) + calendar_width(self.calendar)

    @property
    def widens(self) -> bool:
        return self.width != self.features

    def describe(self) -> str:
        extra = [f"lags {', '.join(map(str, self.lags))}"] if self.lags else []
        extra += [f"{self.calendar} calendar"] if self.calendar else []
        return f"{self.width} inputs per step ({self.features} value(s){''.join(', ' + e for e in extra)})"

    def check_data(self, manifest) -> None:
        """Refuse data that cannot give these inputs (no time column, another frequency)."""
        if self.calendar and (manifest.time is None or manifest.time.frequency != self.calendar):
            have = f"a {manifest.time.frequency} time column" if manifest.time else "no time column"
            raise DataError(f"the model reads {self.calendar} calendar features and {manifest.root} has {have}: "
                            f"prepare it with --time-column")

    def build(self, values: np.ndarray, first: int, time: TimeAxis | None) -> np.ndarray:
        """Inputs [n, width] of a split's steps [first, first + n), from `values` [back + n, F]
        (normalized, steps [first - back, first + n)); the calendar is that of each step's target."""
        n = len(values) - self.back
        parts = [values[self.back:], lagged_values(values, self.lags)]
        if self.calendar:
            parts.append(calendar_features(time.times(first + 1 + np.arange(n)), self.calendar))
        return np.concatenate(parts, axis=1)

    def to_json(self) -> dict:
        return {"features": self.features, "lags": list(self.lags), "calendar": self.calendar,
                "width": self.width}

    @classmethod
    def from_json(cls, obj: dict) -> "ModelInputs":
        return cls(int(obj["features"]), tuple(int(lag) for lag in obj.get("lags", ())), obj.get("calendar"))


def resolve_inputs(manifest, cfg) -> ModelInputs | None:
    """The inputs a run trains with (None for tokens and rows: they read what they always did)."""
    d = cfg.data
    if manifest.kind != "series":
        if "data.lags" in cfg.explicit and d.lags not in ("auto", []) or \
                "data.calendar" in cfg.explicit and d.calendar:
            raise ConfigError(f"data.lags and data.calendar apply to one long series, and {manifest.root} holds "
                              f"{manifest.kind}: leave them out")
        return None
    lags = lags_from_setting(d.lags, manifest.season)
    if d.calendar and manifest.time is None and "data.calendar" in cfg.explicit:
        raise ConfigError(f"data.calendar = true needs timestamps and {manifest.root} has none: prepare it with "
                          f"--time-column NAME")
    calendar = manifest.time.frequency if d.calendar and manifest.time is not None else None
    return ModelInputs(manifest.features, lags, calendar if calendar_width(calendar) else None)


def read_inputs(reader, windows, seq_len: int, segment: tuple[int, int], inputs: ModelInputs, dtype):
    """Inputs [B, t1 - t0, width] of steps [t0, t1) of the given windows (normalized like the data)."""
    t0, t1 = segment
    rows = []
    for window in windows:
        values = reader.window(int(window), seq_len, t0 - inputs.back, t1 - 1)
        rows.append(inputs.build(values, reader.start(int(window), seq_len) + t0, reader.manifest.time))
    return torch.from_numpy(np.stack(rows)).to(dtype)
