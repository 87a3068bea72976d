"""One-line notes about how a run uses its dataset, printed once (rank 0) before training.

Not errors: the run is valid, but a user may not expect it.
"""

from __future__ import annotations

from mpirnn.data.manifest import Manifest


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
    return notes
