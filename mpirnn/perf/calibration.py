"""A calibration file and the compute and link costs read from it.

    python -m mpirnn.plan --calibrate [--out FILE]     # writes one (mpirnn/perf/calibrate.py)

A calibration is a JSON object (format "mpirnn-calibration/1") holding what one rank of a
machine costs: a fused nn.LSTM/GRU/RNN layer's forward+backward per time step and per call,
measured at several row counts and hidden sizes (thin batches cost more per row); the
linear cells' gates and log-space scan per element; the embedding, the head and loss per
token; Adam per parameter; how much slower a rank runs when the node's other ranks are busy;
and the links (α, β, γ) inside a node and between nodes. Costs between the measured points
are interpolated: linearly in rows, log-log in hidden size.

Where files live: shipped ones in calibrations/ beside this file (package data), a user's own
in $MPIRNN_CALIBRATION_DIR or ~/.cache/mpirnn/calibration, searched first (`find_for_host`).
"""

from __future__ import annotations

import bisect
import datetime
import json
import math
import os
import re
from pathlib import Path

from mpirnn.perf.links import NDR_INFINIBAND, Link

FORMAT = "mpirnn-calibration/1"
GATES = {"rnn": 1, "gru": 3, "lstm": 4}               # weight blocks of a fused layer
PROJECTIONS = {"mingru": 2, "minlstm": 3}             # gate projections of a linear cell (mpirnn.models.linear_cells)
STATE_PARTS = {"lstm": 2}                             # (h, c); every other cell carries h only
CALIBRATED_HIDDEN = (64, 128, 256, 512)               # hidden sizes a full calibration measures by default


class CalibrationError(ValueError):
    pass


def _interp(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise linear in x; past the last point, the last piece's slope (never below the last value)."""
    if len(xs) == 1:
        return ys[0] * x / xs[0]
    if x <= xs[0]:
        return ys[0]
    i = min(bisect.bisect_left(xs, x), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    value = y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return max(value, ys[-1]) if x > xs[-1] else value


def _log_interp(xs: list[float], ys: list[float], x: float, lowest: float = 1.0, highest: float = 2.0) -> float:
    """Log-log interpolation in x; outside the points, the nearest piece's exponent, kept in [lowest, highest]."""
    ys = [max(y, 1e-12) for y in ys]
    if len(xs) == 1:
        return ys[0] * (x / xs[0]) ** lowest
    i = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    exponent = math.log(y1 / y0) / math.log(x1 / x0)
    if not xs[0] <= x <= xs[-1]:
        exponent = min(max(exponent, lowest), highest)
        x0, y0 = (x1, y1) if x > xs[-1] else (x0, y0)
    return y0 * (x / x0) ** exponent


def _extra_per_unit(points: list[list[float]], elements: float) -> float:
    """The long-sequence probe's extra cost per row-step and hidden unit at `elements`: piecewise
    linear in log(elements) between its points, the first one's below, the last one's beyond."""
    if elements <= points[0][0]:
        return points[0][1]
    for (e0, x0), (e1, x1) in zip(points, points[1:]):
        if elements <= e1:
            return x0 + (x1 - x0) * math.log(elements / e0) / math.log(e1 / e0)
    return points[-1][1]


def _table(table: dict, key: str, rows: float, hidden: float) -> float:
    """A [hidden][rows] table read at (rows, hidden)."""
    per_hidden = [_interp(table["rows"], line, rows) for line in table[key]]
    return _log_interp(table["hidden"], per_hidden, hidden, lowest=0.0)


class Calibration:
    """Costs of one rank of one machine, in seconds, read from a calibration dict."""

    def __init__(self, data: dict, path: str | None = None):
        if data.get("format") != FORMAT:
            raise CalibrationError(f"{path or 'calibration'}: format is {data.get('format')!r}, expected {FORMAT!r}")
        self.data, self.path = data, path
        self.compute = data["compute"]
        self.links = {name: Link.from_dict(d) for name, d in data["links"].items() if d}
        self.async_progress = float(data.get("async_progress", 0.0))
        # What a collective every time step costs beyond its α–β time: waiting for the slower rank.
        self.lockstep_sync_s = float(data.get("lockstep_sync_s", 0.0))
        self.cores = int(data.get("host", {}).get("cores") or 1)
        self.gpu = data.get("host", {}).get("device", "cpu") != "cpu"
        # The precision its compute was measured in (files before issue 22: float32), and whether
        # the CPU has native bf16 (None: not recorded).
        self.precision = data.get("host", {}).get("precision", "float32")
        self.native_bf16 = data.get("host", {}).get("native_bf16")

    # -------------------------------------------------------------- compute

    def _fused(self, cell: str) -> dict:
        table = self.compute["fused"].get(cell)
        if table is None:
            raise CalibrationError(f"the calibration has no fused '{cell}' measurements; rerun --calibrate")
        return table

    def fused_step_s(self, cell: str, rows: int, d_in: int, hidden: int) -> float:
        """One time step of a fused layer (nn.LSTM/GRU/RNN), forward+backward."""
        table = self._fused(cell)
        step = _table(table, "step_s", rows, hidden)
        # The table is measured with d_in = hidden; the input projection's share scales with d_in.
        adjusted = step + self.compute["input_mac_s"] * rows * GATES[cell] * hidden * (d_in - hidden)
        return max(adjusted, 0.3 * step)

    def long_sequence_s(self, rows: int, steps: int, hidden: int) -> float:
        """What one time step of a fused call over `steps` steps costs beyond the table's figure when
        the process runs with glibc's default allocator (a layout with malloc "default"; training,
        the calibration and the bench keep freed memory: mpirnn/distributed/device.py
        `keep_freed_memory`, mpirnn/perf/processes.py): the call's large activations go over
        glibc's mmap threshold and are faulted in again on every call. Measured (`long_sequence`
        in the file) per row-step and hidden unit as a function of the call's elements
        rows × steps × hidden, read log-linearly between its points, flat beyond; 0 for files
        without the measurement."""
        probe = self.compute.get("long_sequence")
        if not probe:
            return 0.0
        return _extra_per_unit(probe["points"], rows * steps * hidden) * rows * hidden

    def bidirectional_factor(self, cell: str) -> float:
        """A bidirectional fused layer's cost over one direction's (measured; files without it: 2)."""
        return float(self.compute.get("bidirectional_factor", {}).get(cell, 2.0))

    def fused_call_s(self, cell: str, rows: int, hidden: int) -> float:
        """What one call of a fused layer costs besides its time steps (weight reorders, workspace)."""
        return _table(self._fused(cell), "call_s", rows, hidden)

    def fused_floor_s(self, cell: str) -> float:
        """The least one time step costs: one row at the smallest hidden size measured (latency-bound devices)."""
        table = self._fused(cell)
        return table["step_s"][0][0]

    def fused_layer_s(self, cell: str, rows: int, steps: int, d_in: int, hidden: int,
                      bidirectional: bool = False, faults: bool = False) -> float:
        """Forward+backward of one fused layer over `steps` time steps, one call (both directions
        of a bidirectional layer: the measured factor times one direction's). faults: the process
        runs with glibc's default allocator (`long_sequence_s`)."""
        step = self.fused_step_s(cell, rows, d_in, hidden) + (self.long_sequence_s(rows, steps, hidden) if faults else 0.0)
        one = self.fused_call_s(cell, rows, hidden) + steps * step
        return one * (self.bidirectional_factor(cell) if bidirectional else 1.0)

    def linear_layer_s(self, cell: str, rows: int, steps: int, d_in: int, hidden: int, segment: bool = False) -> float:
        """Forward+backward of one minGRU/minLSTM layer: gate projections, log-space scan, exp.

        segment: as one segment of the cross-rank scan (the prefix correction costs a little more).
        """
        costs = self.compute["linear"].get(cell)
        if costs is None:
            raise CalibrationError(f"the calibration has no '{cell}' measurements; rerun --calibrate")
        element = costs.get("segment_element_s", costs["element_s"]) if segment else costs["element_s"]
        elements = rows * steps * hidden
        return costs.get("call_s", 0.0) + elements * (element + costs["mac_s"] * PROJECTIONS[cell] * d_in)

    def layer_s(self, cell: str, rows: int, steps: int, d_in: int, hidden: int, segment: bool = False,
                directions: int = 1, faults: bool = False) -> float:
        """One layer's forward+backward; `directions` = 2: both directions of a bidirectional layer
        (a linear cell's two scans cost twice one); faults: under glibc's default allocator."""
        if cell in PROJECTIONS:
            return directions * self.linear_layer_s(cell, rows, steps, d_in, hidden, segment)
        return self.fused_layer_s(cell, rows, steps, d_in, hidden, bidirectional=directions == 2, faults=faults)

    def tp_step_s(self, cell: str, rows: int, d_in: int, hidden: int, k: int) -> float:
        """One time step of a layer split over k tp ranks, forward+backward, on one rank (no waiting).

        Measured on mpirnn's sharded LSTM with a stand-in communicator: a fixed cost per step
        (a dozen small ops and host copies) plus a factor times the fused step's share
        (thin per-step products run less efficiently than the fused kernel's), on a GPU never
        below the latency of one fused step (on a CPU a step's cost falls with its work: the
        table's smallest entry is no floor, and with one hidden size measured it is a wide one).
        Without that measurement: the cost of a Python loop over a cell, plus the fused share.
        """
        fit = self.compute.get("tp_step", {"overhead_s": self.compute.get("cell_loop_step_s", 0.0),
                                           "matmul_factor": 1.0})
        floor = self.fused_floor_s(cell) if self.gpu else 0.0
        share = max(floor, self.fused_step_s(cell, rows, d_in, hidden) / k)
        return fit["overhead_s"] + fit["matmul_factor"] * share

    def input_s(self, tokens: int, embed: int, vocab: int | None) -> float:
        key = "tokens_element_s" if vocab else "series_element_s"
        return tokens * embed * self.compute["input"][key]

    def head_s(self, tokens: int, hidden: int, vocab: int | None) -> float:
        """Head and loss, forward+backward, over `tokens` positions."""
        head = self.compute["head"]
        if vocab:
            per_token = _log_interp(head["tokens"]["hidden"], head["tokens"]["token_s"], hidden, lowest=0.5)
            per_token *= vocab / head["tokens"]["vocab"]  # the projection dominates: its cost scales with the vocabulary
        else:
            per_token = _log_interp(head["series"]["hidden"], head["series"]["token_s"], hidden, lowest=0.0,
                                    highest=1.0)
        return head.get("call_s", 0.0) + tokens * per_token

    def optimizer_s(self, params: int, tensors: int) -> float:
        return params * self.compute["adam_param_s"] + tensors * self.compute["adam_tensor_s"]

    def accumulate_s(self, params: int, passes: int) -> float:
        """Backward passes after the first add into .grad (one per extra microbatch or chunk)."""
        return max(0, passes - 1) * params * self.compute["accumulate_element_s"]

    @property
    def unit_overhead_s(self) -> float:
        """Framework overhead of one unit (slicing, autograd graph, sends and receives posted from Python)."""
        return self.compute["unit_overhead_s"]

    def slowdown(self, busy: int) -> float:
        """Compute time factor when `busy` ranks (one thread each) share a node of `cores` cores.

        Measured at `busy_measured` ranks; linear in between, and beyond the cores the
        ranks also take turns (oversubscription).
        """
        if self.gpu or busy <= 1:
            return 1.0
        measured = self.compute.get("slowdown", {"busy": 2, "factor": 1.0})
        extra = (measured["factor"] - 1.0) * (min(busy, self.cores) - 1) / max(1, measured["busy"] - 1)
        return (1.0 + max(0.0, extra)) * max(1.0, busy / self.cores)

    # -------------------------------------------------------------- links

    def link(self, inter_node: bool) -> Link:
        """The link a message crosses: staged through the host first when the calibration says so."""
        wire = self.links.get("inter", NDR_INFINIBAND) if inter_node else self.links["intra"]
        return wire.plus(self.links.get("staging"))


# ------------------------------------------------------------------ files


def load(path: str | Path) -> Calibration:
    path = Path(path)
    try:
        return Calibration(json.loads(path.read_text()), str(path))
    except FileNotFoundError:
        raise CalibrationError(f"calibration file {path} not found; make one with python -m mpirnn.plan --calibrate")\
            from None
    except (json.JSONDecodeError, KeyError) as exc:
        raise CalibrationError(f"calibration file {path} is not a valid calibration: {exc}") from None


def save(data: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


# ------------------------------------------------------------------ where calibrations live

SHIPPED_DIR = Path(__file__).resolve().parent / "calibrations"   # package data: measured by the project
USER_DIR_VARIABLE = "MPIRNN_CALIBRATION_DIR"
# "0" hides the shipped calibrations: for a cluster whose CPU has the same model name as the
# project's machine but not its speed, and for tests of an uncalibrated CPU.
SHIPPED_VARIABLE = "MPIRNN_SHIPPED_CALIBRATIONS"


def user_dir() -> Path:
    """Where a user's own calibrations go: $MPIRNN_CALIBRATION_DIR, else ~/.cache/mpirnn/calibration.

    Never the package directory, which is read-only in a site-packages install."""
    chosen = os.environ.get(USER_DIR_VARIABLE)
    return Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "mpirnn" / "calibration"


def search_dirs() -> list[Path]:
    """The folders searched for a calibration, in order: the user's, then the shipped ones."""
    shipped = [] if os.environ.get(SHIPPED_VARIABLE, "1") == "0" else [SHIPPED_DIR]
    return [user_dir(), *shipped]


def default_path(cpu: str, device: str = "cpu", when: datetime.datetime | None = None,
                 precision: str = "float32") -> Path:
    """<user dir>/<device or cpu model>[-bf16]-<date>-<time>.json (a new name for every calibration)."""
    when = when or datetime.datetime.now()
    tag = "" if precision == "float32" else f"-{precision}"
    return user_dir() / f"{slug(device if device != 'cpu' else cpu)}{tag}-{when:%Y-%m-%d-%H%M%S}.json"


def covers(data: dict, cell: str | None, hidden: int | None) -> bool:
    """Whether a calibration measured what a model of this cell and hidden size needs.

    A full calibration measures every cell at several hidden sizes and is read between and
    beyond them; one restricted to a config's sizes (its "scope") only at those sizes."""
    compute = data.get("compute", {})
    if cell is not None and cell not in compute.get("fused", {}) and cell not in compute.get("linear", {}):
        return False
    scope = data.get("scope")
    if not scope or hidden is None:
        return True
    return min(scope["hidden"]) <= hidden <= max(scope["hidden"])


def calibrations_for_host(cpu: str, folder: Path, cell: str | None = None, hidden: int | None = None,
                          precision: str = "float32") -> list[Path]:
    """Calibrations in `folder` measured on this CPU model (CPU calibrations only) in `precision`,
    covering the cell and hidden size when given, newest first."""
    found = []
    for path in folder.glob("*.json") if folder.is_dir() else ():
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        host = data.get("host", {})
        if host.get("cpu") == cpu and host.get("device", "cpu") == "cpu" and covers(data, cell, hidden) \
                and host.get("precision", "float32") == precision:
            found.append((host.get("date", ""), path))
    return [path for _, path in sorted(found, reverse=True)]


def find_for_host(cpu: str, cell: str | None = None, hidden: int | None = None,
                  precision: str = "float32") -> Path | None:
    """The calibration to plan with on this CPU model in `precision`: the newest of the user's own that
    covers the cell and hidden size, else the newest shipped one (docs/performance.md, "Calibrations")."""
    for folder in search_dirs():
        found = calibrations_for_host(cpu, folder, cell, hidden, precision)
        if found:
            return found[0]
    return None


def searched() -> str:
    """The searched folders, as a message names them."""
    return " and ".join(shown_path(folder) for folder in search_dirs())


def shown_path(path) -> str:
    """A path as a message shows it: relative to the working directory when it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
