"""What this rank runs: its rows, time segment, microbatches (and, with pp, its layers).

Pure arithmetic, no MPI and no torch, so it is tested with plain integers.
"""

from __future__ import annotations

from mpirnn.errors import ConfigError

MAX_AUTO_MICROBATCHES = 8
# Fused RNN kernels lose efficiency on very thin batches (on this CPU a 4-row LSTM microbatch
# ran 23% slower per row than 8 rows), which costs more than the smaller bubble of more
# microbatches gains: automatic microbatches keep at least this many rows each.
MIN_AUTO_ROWS = 8
# Pipeline tags are 2m and 2m+1 (sequence_pipeline); MPI guarantees tags up to 32767.
MAX_MICROBATCHES = 16_000


def resolve_microbatches(requested: int, rows: int, sp: int) -> int:
    """Microbatches for the sp wavefront; refuse when the batch is too small for them."""
    if sp == 1:
        return 1
    if requested == 0:
        if rows < 2:
            raise ConfigError(
                f"the batch is too small for microbatching: each data-parallel group has {rows} row(s) per step; "
                f"raise data.batch_size, lower parallel.dp, or set parallel.microbatches = 1 to run the "
                f"{sp} segments one after another (exact, but without overlap)")
        return max(2, min(MAX_AUTO_MICROBATCHES, rows // MIN_AUTO_ROWS))
    if requested > MAX_MICROBATCHES:
        raise ConfigError(f"parallel.microbatches = {requested}: at most {MAX_MICROBATCHES} are supported")
    if requested > rows:
        raise ConfigError(
            f"parallel.microbatches = {requested} but each data-parallel group has only {rows} row(s) per step; "
            f"use at most {rows} microbatches or a larger data.batch_size")
    return requested
