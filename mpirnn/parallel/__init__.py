"""Turning a model and a grid into a training step.

Order of application: the batch is split over dp (rows) and sp (time segments) by the
data loader; the step function runs the rank's rows over its segment — serially when
sp = 1, as a boundary-state wavefront for nonlinear cells or a cross-rank scan for
linear cells when sp > 1 — and the GradientReducer sums parameter gradients over all
ranks that hold the same parameters (dp × sp), overlapped with backward.
"""
