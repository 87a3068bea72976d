"""One training run: session set-up, the loop, checkpoints, metrics and the fault-injection hooks
the reliability tests use."""
