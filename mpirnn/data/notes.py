"""One-line notes about how a run uses its dataset, printed once (rank 0) before training.

Not errors: the run is valid, but a user may not expect it.
"""

from __future__ import annotations

from mpirnn.config import steps_ahead
from mpirnn.data.manifest import Manifest
from mpirnn.data.model_inputs import resolve_inputs


def usage_notes(manifest: Manifest, cfg) -> list[str]:
    notes = []
    d = cfg.data
    if manifest.kind == "sequences" and d.seq_len + 1 < manifest.seq_len:
        used = d.seq_len + 1
        notes.append(f"mpirnn: note: data.seq_len = {d.seq_len} uses the first {used} of the {manifest.seq_len} steps "
                     f"of each row ({100 * used / manifest.seq_len:.0f}%); set data.seq_len = {manifest.seq_len - 1} "
                     f"to use whole rows")
    if cfg.train.stateful and manifest.kind == "sequences":
        notes.append("mpirnn: warning: train.stateful = true carries each row's final state into the next step, but "
                     f"{manifest.root} holds independent rows (not one long stream): the carried states join "
                     "unrelated sequences; leave train.stateful off for row datasets")
    if steps_ahead(cfg.train) > 1 and "train.horizon" not in cfg.explicit:   # chosen by train.horizon = "auto"
        windows = ", on windows starting at every step" if d.windows == "auto" else ""
        notes.append(f"mpirnn: note: train.horizon = {cfg.train.horizon}: at every step the head predicts the next "
                     f"{cfg.train.horizon} steps (auto: the season of {manifest.season} steps, at most data.seq_len / 4)"
                     f"{windows}; train.horizon = 1 trains a next-step model (docs/forecasting.md)")
    inputs = resolve_inputs(manifest, cfg)
    if inputs is not None and inputs.widens:   # say it: the model reads more than the stored columns
        notes.append(f"mpirnn: note: the model reads {inputs.describe()} (data.lags, data.calendar; docs/data.md)")
    return notes
