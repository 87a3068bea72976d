"""One-line notes about how a run uses its dataset, printed once (rank 0) before training.

Not errors: the run is valid, but a user may not expect it.
"""

from __future__ import annotations

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
    inputs = resolve_inputs(manifest, cfg)
    if inputs is not None and inputs.widens:   # say it: the model reads more than the stored columns
        notes.append(f"mpirnn: note: the model reads {inputs.describe()} (data.lags, data.calendar; docs/data.md)")
    return notes
