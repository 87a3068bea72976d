"""The metrics file (JSON Lines, rank 0) and the resolved config beside it.

A metrics file belongs to one run: only that run, resumed from its own checkpoints, writes to
it again (keeping its lines up to the checkpoint's step). A new run, or a branch resumed from
copied checkpoints, is refused a file that already holds steps (`refuse_another_runs`).
"""

from __future__ import annotations

import json
from pathlib import Path

from mpirnn.errors import ConfigError
from mpirnn.training.tensorboard import open_board


def logged_steps(path: str | Path) -> list[int]:
    """The steps a metrics file holds lines for (none when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if isinstance(record, dict) and not record.get("summary") and isinstance(record.get("step"), int):
            steps.append(record["step"])
    return steps


def refuse_another_runs(path: str, continuing: bool) -> None:
    """ConfigError when a run that is not continuing itself would write over another run's metrics."""
    steps = [] if continuing or not path else logged_steps(path)
    if steps:
        raise ConfigError(f"output.metrics {path} already holds another run's metrics (steps {min(steps)}-"
                          f"{max(steps)}): choose another output.run_name (or output.metrics), resume that run "
                          f"with checkpoint.resume = true, or delete the file to start it again")


class MetricsWriter:
    """One JSON object per logged step, then a summary; only rank 0 writes."""

    def __init__(self, path: str, config: dict, enabled: bool, resumed_at: int = 0):
        """`resumed_at` > 0: a resumed run keeps the earlier lines up to that step and drops
        the ones after it (steps done after the checkpoint, which are now being redone)."""
        self.enabled = enabled and bool(path)
        self.handle = None
        self.board = open_board(config, resumed_at) if enabled else None  # output.tensorboard
        if not self.enabled:
            return
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        config_path = self.path.with_name(self.path.stem + ".config.json")
        config_path.write_text(json.dumps(config, indent=1) + "\n")
        kept = self._lines_up_to(resumed_at) if resumed_at > 0 else []
        self.handle = open(self.path, "w")
        self.handle.writelines(kept)
        self.handle.flush()

    def _lines_up_to(self, step: int) -> list[str]:
        if not self.path.exists():
            return []
        kept = []
        for line in self.path.read_text().splitlines(keepends=True):
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            if not record.get("summary") and record.get("step", step + 1) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        return kept

    def write(self, record: dict) -> None:
        if self.board is not None:
            self.board.write(record)
        if self.handle is not None:
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
            self.board = None
        if self.handle is not None:
            self.handle.close()
            self.handle = None
