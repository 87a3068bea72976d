"""The metrics file (JSON Lines, rank 0) and the resolved config beside it."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsWriter:
    """One JSON object per logged step, then a summary; only rank 0 writes."""

    def __init__(self, path: str, config: dict, enabled: bool, append: bool = False):
        self.enabled = enabled and bool(path)
        self.handle = None
        if not self.enabled:
            return
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        config_path = self.path.with_name(self.path.stem + ".config.json")
        config_path.write_text(json.dumps(config, indent=1) + "\n")
        self.handle = open(self.path, "a" if append else "w")

    def write(self, record: dict) -> None:
        if self.handle is not None:
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
