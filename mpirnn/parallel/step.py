"""One training step's forward and backward on this rank, for whatever grid the run has."""

from __future__ import annotations

from mpirnn.parallel.gradients import GradientReducer
from mpirnn.parallel.linear_scan import scan_step
from mpirnn.parallel.plan import resolve_microbatches
from mpirnn.parallel.sequence_pipeline import pipeline_step

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
