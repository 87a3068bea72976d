"""Tables and figures shared by the reports: markdown tables, matplotlib when installed, saved plots.

Used by mpirnn/tools/report.py (runs and studies) and mpirnn/tools/report_bench.py (bench
results), which otherwise import nothing of each other.
"""

from __future__ import annotations

import sys
from pathlib import Path


def markdown(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("mpirnn.report: matplotlib not installed (pip install 'mpirnn[plots]'): no plots", file=sys.stderr)
        return None
    return plt


def save_figure(plt, figure, axes, path: Path) -> Path:
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
