"""What one rank reads of every batch: its rows of the global batch, its time steps, and which fields.

The loaders (mpirnn/data/loader.py) take this and nothing of the parallel plan: how rows and
steps are shared out, and which pipeline stage reads inputs or targets, is decided above them
(mpirnn/parallel/plan.py `Plan.reads`). Pure; the serial case is the default.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reads:
    rows: tuple[int, int]              # global-batch rows [start, stop)
    segment: tuple[int, int]           # time steps [start, stop) of every sequence
    inputs: bool = True                # reads the inputs (the first pipeline stage)
    targets: bool = True               # reads the targets (the last pipeline stage)

    @property
    def local_rows(self) -> int:
        return self.rows[1] - self.rows[0]
