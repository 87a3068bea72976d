"""One training step's forward and backward on this rank, for whatever grid the run has.

The plan (mpirnn/parallel/plan.py) says what this rank owns; the wavefront executor
(mpirnn/parallel/wavefront.py) runs its units; the gradient reducer sums each parameter's
gradient over the ranks that hold the same parameters (dp x sp), overlapped with backward.
A 1-rank run is the same path with one unit and no peers.
"""

from __future__ import annotations

import torch

from mpirnn.models.precision import FLOAT32
from mpirnn.parallel.gradients import GradientReducer
from mpirnn.parallel.wavefront import Wavefront


class StepRunner:
    """Runs forward+backward of the local rows, segment and stage, and sums gradients over replicas."""

    def __init__(self, model, plan, comms, bucket_mb: float, precision=FLOAT32):
        self.model, self.plan, self.comms = model, plan, comms
        self.precision = precision  # train.precision (mpirnn/models/precision.py)
        self.wavefront = Wavefront(model, plan, comms, precision)
        self.units = plan.microbatches * plan.chunks
        self.reducer = GradientReducer(model.parameters(), comms.replicas, bucket_mb, comms.timer)

    def __call__(self, inputs, targets, state, norm: float):
        """(this rank's share of the loss, the final states of its rows at the end of its segment).

        inputs are read on the first stage and targets on the last (None elsewhere); `state`
        holds the initial states of this stage's layers for this rank's rows.
        """
        self.reducer.begin(self.units)
        # fp16: the loss is scaled by dividing its normalizer, and the summed gradients unscaled.
        scale = self.precision.loss_scale
        loss, final = self.wavefront(inputs, targets, state, norm / scale)
        self.reducer.finish()
        if scale != 1.0:
            for param in self.model.parameters():
                if param.grad is not None:
                    param.grad.div_(scale)
            loss = loss / scale
        return self._counted(loss), final

    def evaluate(self, inputs, targets, state, norm: float, observe=None):
        """Forward only, through the same parallel paths: (loss share, final states)."""
        loss, final = self.wavefront.evaluate(inputs, targets, state, norm, observe)
        return self._counted(loss), final

    def _counted(self, loss):
        """The ranks of a tp group all compute the same (replicated) loss: only tp rank 0's counts."""
        return loss if self.plan.coords["tp"] == 0 else torch.zeros_like(loss)
