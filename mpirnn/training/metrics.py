"""The metrics file (JSON Lines, rank 0) and the resolved config beside it."""

from __future__ import annotations

import json
from pathlib import Path

from mpirnn.training.tensorboard import open_board


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
