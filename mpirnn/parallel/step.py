"""One training step's forward and backward on this rank, for whatever grid the run has."""

from __future__ import annotations

from mpirnn.errors import ConfigError
from mpirnn.parallel.gradients import GradientReducer
from mpirnn.parallel.linear_scan import scan_step
from mpirnn.parallel.sequence_pipeline import pipeline_step

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


class StepRunner:
    """Runs forward+backward of the local rows over the local segment and sums gradients over replicas."""

    def __init__(self, model, comms, rows: int, microbatches: int, bucket_mb: float):
        self.model, self.comms = model, comms
        self.sp = comms.axis["sp"]
        self.mode = "serial" if self.sp.size == 1 else ("scan" if model.linear else "pipeline")
        self.microbatches = resolve_microbatches(microbatches, rows, self.sp.size) if self.mode == "pipeline" else 1
        self.reducer = GradientReducer(model.parameters(), comms.replicas, bucket_mb, comms.timer)

    def __call__(self, inputs, targets, state, norm: float):
        """Returns (this rank's share of the loss, the final states of its rows; valid on the last segment)."""
        self.reducer.begin(self.microbatches)
        if self.mode == "pipeline":
            loss, final = pipeline_step(self.model, self.sp, inputs, targets, state, norm,
                                        self.microbatches, self.comms.timer)
        elif self.mode == "scan":
            loss, final = scan_step(self.model, self.sp, inputs, targets, state, norm, self.comms.timer)
        else:
            loss, final = self.model(inputs, targets, state)
            loss = loss / norm
            loss.backward()
            loss, final = loss.detach().double().cpu(), final.detach()
        self.reducer.finish()
        return loss, final
