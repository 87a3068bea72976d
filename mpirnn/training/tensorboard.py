"""TensorBoard event files beside the metrics (output.tensorboard = true), written by rank 0.

Every record the metrics file gets (mpirnn/training/metrics.py) also becomes scalars at its
step in runs/<run_name>/tensorboard/: each number under its metrics name (loss, val_loss, lr,
tokens_per_s, grad_norm, step_time_s, comm_time_s, comm_wait_s, comm_collective_s), and each
communication time as a share of the step (comm_time_share = comm_time_s / step_time_s, ...).
The summary line is not a step and is left out. A resumed run purges the steps after its
checkpoint, as the metrics file drops its lines.

    tensorboard --logdir runs            # every run side by side
    python -m pytest -q tests/test_tensorboard.py
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mpirnn.errors import ConfigError

SHARES = ("comm_time_s", "comm_wait_s", "comm_collective_s")  # as shares of step_time_s


def check_installed(cfg) -> None:
    """Refuse output.tensorboard = true before training when the package is missing."""
    if cfg.output.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("output.tensorboard = true needs the tensorboard package: pip install "
                          "'mpirnn[tensorboard]', or set output.tensorboard = false")


def folder(run_name: str) -> Path:
    return Path("runs") / run_name / "tensorboard"


def scalars(record: dict) -> dict[str, float]:
    """The tags and values one metrics record becomes (none for the summary)."""
    if record.get("summary"):
        return {}
    values = {key: float(value) for key, value in record.items()
              if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}
    step_time = values.get("step_time_s")
    if step_time:
        values.update({f"{key[:-2]}_share": values[key] / step_time for key in SHARES if key in values})
    return values


class Board:
    """A SummaryWriter fed with metrics records."""

    def __init__(self, run_name: str, resumed_at: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides the steps after the checkpoint that an earlier attempt logged.
        self.writer = SummaryWriter(str(folder(run_name)), purge_step=resumed_at + 1 if resumed_at else None)

    def write(self, record: dict) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_board(config: dict, resumed_at: int = 0) -> Board | None:
    """The Board of a resolved config (as MetricsWriter gets it), or None when it is off."""
    output = config["output"]
    return Board(output["run_name"], resumed_at) if output.get("tensorboard") else None
