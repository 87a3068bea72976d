"""One training step's forward and backward on this rank, for whatever grid the run has.

The plan (mpirnn/parallel/plan.py) says what this rank owns; the wavefront executor
(mpirnn/parallel/wavefront.py) runs its units; the gradient reducer sums each parameter's
gradient over the ranks that hold the same parameters (dp x sp), overlapped with backward.
A 1-rank run is the same path with one unit and no peers.
"""

from __future__ import annotations

import torch

from mpirnn.models.precision import FLOAT32
from mpirnn.parallel.bidirectional_wavefront import BidirectionalWavefront
from mpirnn.parallel.gradients import GradientReducer
from mpirnn.parallel.wavefront import Wavefront


def executor(model, plan, comms, precision=FLOAT32):
    """The executor of a plan: bidirectional layers under sequence parallelism run two opposite
    wavefronts (mpirnn/parallel/bidirectional_wavefront.py), as do bidirectional pipelines whose
    plan offloads reverse directions to the stage below; everything else the one wavefront."""
    if model.bidirectional and (plan.grid.sp > 1 or plan.offloaded):
        return BidirectionalWavefront(model, plan, comms, precision)
    return Wavefront(model, plan, comms, precision)


class StepRunner:
    """Runs forward+backward of the local rows, segment and stage, and sums gradients over replicas."""

    def __init__(self, model, plan, comms, bucket_mb: float, precision=FLOAT32):
        self.model, self.plan, self.comms = model, plan, comms
        self.precision = precision  # train.precision (mpirnn/models/precision.py)
        self.wavefront = executor(model, plan, comms, precision)
        self._by_length: dict[tuple, Wavefront] = {}   # wavefronts of shorter steps (Plan.for_length)
        self.reducer = GradientReducer(model.parameters(), comms.replicas, bucket_mb, comms.timer)

    def __call__(self, inputs, targets, state, norm: float, lengths=None, noise=None, plan=None):
        """(this rank's share of the loss, the final states of its rows at the end of its segment).

        inputs are read on the first stage and targets on the last (None elsewhere); `state`
        holds the initial states of this stage's layers for this rank's rows; `lengths` each
        row's length where rows differ (labelled tasks), else None; `noise` the step's dropout
        key (mpirnn/models/dropout.py), or None; `plan` this step's plan where it differs from
        the run's (rows that all end early: Plan.for_length).
        """
        wavefront = self._wavefront(plan)
        self.reducer.begin(wavefront.plan.microbatches * wavefront.plan.chunks)
        # fp16: the loss is scaled by dividing its normalizer, and the summed gradients unscaled.
        scale = self.precision.loss_scale
        loss, final = wavefront(inputs, targets, state, norm / scale, lengths, noise)
        self.reducer.finish()
        if scale != 1.0:
            for param in self.model.parameters():
                if param.grad is not None:
                    param.grad.div_(scale)
            loss = loss / scale
        return self._counted(loss), final

    def evaluate(self, inputs, targets, state, norm: float, observe=None, lengths=None):
        """Forward only, through the same parallel paths: (loss share, final states)."""
        loss, final = self.wavefront.evaluate(inputs, targets, state, norm, observe, lengths)
        return self._counted(loss), final

    def _wavefront(self, plan):
        if plan is None or (plan.segment, plan.chunks) == (self.plan.segment, self.plan.chunks):
            return self.wavefront
        key = (plan.segment, plan.chunks)
        if key not in self._by_length:
            if len(self._by_length) > 256:   # one per distinct step length; cheap to rebuild
                self._by_length.clear()
            self._by_length[key] = executor(self.model, plan, self.comms, self.precision)
        return self._by_length[key]

    def _counted(self, loss):
        """The ranks of a tp group all compute the same (replicated) loss: only tp rank 0's counts."""
        return loss if self.plan.coords["tp"] == 0 else torch.zeros_like(loss)
