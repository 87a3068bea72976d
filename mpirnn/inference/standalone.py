"""The exported model: mpirnn's serial model rebuilt from plain torch, for use without mpirnn.

Nothing here imports mpirnn, so `torch.jit.script` of `Standalone` gives a file that
`torch.jit.load` opens anywhere torch is installed (mpirnn/inference/export.py writes it, and
the same module traced for ONNX). rnn / lstm / gru run on one multi-layer nn.RNN / nn.LSTM /
nn.GRU, so their parameters carry PyTorch's own names (`rnn.weight_ih_l1`); minGRU / minLSTM
have no PyTorch module and run as `MinStack`, a plain loop over time of the same recurrence
h_t = a_t h_{t-1} + b_t that mpirnn/models/linear_cells.py computes as a log-space scan.

A labelled model (tag, classify, regress; docs/tasks.md) takes each row's length beside the
padded inputs. Bidirectional layers run as `BiLayer`: two one-direction modules, the reverse one
over each row flipped within its own length (a gather, so TorchScript and ONNX run it as they
run the rest), which is PyTorch's packed reverse direction: padding never reaches a valid step.
Everything stays in this one file, so the safetensors export needs only it (docs/export.md).

    python -m pytest -q tests/test_export.py tests/test_export_labelled.py
"""

from typing import Dict, Final, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

FUSED = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
PROJECTIONS = {"mingru": 2, "minlstm": 3}
SERIAL_FUSED = {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"}  # each mpirnn layer is one nn.LSTM layer


def log_g(p: torch.Tensor) -> torch.Tensor:
    """log of the cells' positive activation g(p) = p + 0.5 (p >= 0) or sigmoid(p), as mpirnn computes it."""
    return torch.where(p >= 0, torch.log(F.relu(p) + 0.5), -F.softplus(-p))


class MinCell(nn.Module):
    """One minGRU (2 projections) or minLSTM (3) layer: gates from x_t alone, then the recurrence."""

    def __init__(self, input_size: int, hidden_size: int, projections: int):
        super().__init__()
        self.lstm = projections == 3
        self.linear = nn.Linear(input_size, projections * hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lstm:
            f, i, p = self.linear(x).chunk(3, dim=-1)
            diff = F.softplus(-f) - F.softplus(-i)  # log i - log f
            log_a, log_b = -F.softplus(diff), -F.softplus(-diff) + log_g(p)
        else:
            k, p = self.linear(x).chunk(2, dim=-1)
            log_a, log_b = -F.softplus(k), -F.softplus(-k) + log_g(p)
        a, b = torch.exp(log_a), torch.exp(log_b)
        # a in (0, 1) and b > 0: the linear-space loop stays as exact as the log-space scan.
        h = torch.zeros_like(b[:, 0])
        outputs: List[torch.Tensor] = []
        for t in range(x.shape[1]):
            h = a[:, t] * h + b[:, t]
            outputs.append(h)
        return torch.stack(outputs, dim=1)


def reverse_index(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """[B, T] time index reversing each row within its length; steps past it stay in place."""
    t = torch.arange(steps, device=lengths.device).unsqueeze(0)
    length = lengths.to(torch.long).unsqueeze(1)
    return torch.where(t < length, length - 1 - t, t)


def flip_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, T, D] with each row's valid steps reversed (`index` from reverse_index)."""
    return x.gather(1, index.unsqueeze(-1).expand(x.shape[0], x.shape[1], x.shape[2]))


def at_step(x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """x [B, T, D] at step `steps[b]` of each row b: [B, D]."""
    index = steps.to(torch.long).view(-1, 1, 1).expand(x.shape[0], 1, x.shape[2])
    return x.gather(1, index).squeeze(1)


class BiLayer(nn.Module):
    """One bidirectional layer: `forward_direction` over the rows as given, `reverse_direction`
    over each row reversed within its length; outputs [forward; reverse] in time order."""

    fused: Final[bool]

    def __init__(self, cell: str, input_size: int, hidden_size: int):
        super().__init__()
        self.fused = cell in FUSED
        if self.fused:
            self.forward_direction = FUSED[cell](input_size, hidden_size, batch_first=True)
            self.reverse_direction = FUSED[cell](input_size, hidden_size, batch_first=True)
        else:
            self.forward_direction = MinCell(input_size, hidden_size, PROJECTIONS[cell])
            self.reverse_direction = MinCell(input_size, hidden_size, PROJECTIONS[cell])

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        flipped = flip_rows(x, index)
        if self.fused:
            ahead, back = self.forward_direction(x)[0], self.reverse_direction(flipped)[0]
        else:
            ahead, back = self.forward_direction(x), self.reverse_direction(flipped)
        return torch.cat([ahead, flip_rows(back, index)], dim=-1)


class BiStack(nn.Module):
    """Stacked bidirectional layers; each reads the one below's [forward; reverse] outputs."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(BiLayer(cell, input_size if i == 0 else 2 * hidden_size, hidden_size)
                                    for i in range(layers))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        index = reverse_index(lengths, x.shape[1])
        for layer in self.layers:
            x = layer(x, index)
        return x


class MinStack(nn.Module):
    """Stacked linear cells, returning (top outputs, last top state) like nn.GRU's first output."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, layers: int):
        super().__init__()
        self.cells = nn.ModuleList(MinCell(input_size if i == 0 else hidden_size, hidden_size, PROJECTIONS[cell])
                                   for i in range(layers))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        for cell in self.cells:
            x = cell(x)
        return x, x[:, -1]


class Standalone(nn.Module):
    """Token ids [B, T] (int64) or normalized values [B, T, F] in, zero initial states; out:
    next-step models: the head at every step, [B, T, vocab] logits or [B, T, F] normalized values;
    labelled models, given each row's length ([B] int64, every row T long when left out):
    tag [B, T, classes] logits (0 at steps at and after a row's length: no prediction there),
    classify [B, classes] logits, regress [B, K] normalized targets (docs/export.md)."""

    bidirectional: Final[bool]
    per_sequence: Final[bool]
    labelled: Final[bool]

    def __init__(self, cell: str, hidden: int, layers: int, embed: int, vocab_size: int | None,
                 features: int | None, mean: List[float] | None = None, std: List[float] | None = None,
                 inputs: int | None = None, outputs: int | None = None, task: str = "next",
                 bidirectional: bool = False, out_mean: List[float] | None = None,
                 out_std: List[float] | None = None):
        super().__init__()
        # `inputs`: the input width where seasonal lags and calendar features widen it (docs/export.md).
        self.input = nn.Embedding(vocab_size, embed) if vocab_size else nn.Linear(inputs or features, embed)
        self.bidirectional, self.per_sequence = bidirectional, task in ("classify", "regress")
        self.labelled = task != "next"
        self.hidden = hidden
        if bidirectional:
            self.rnn = BiStack(cell, embed, hidden, layers)
        elif cell in FUSED:
            self.rnn = FUSED[cell](embed, hidden, num_layers=layers, batch_first=True)
        else:
            self.rnn = MinStack(cell, embed, hidden, layers)
        # `outputs`: a series head predicting several steps ahead or quantiles ([H, F, Q] flattened),
        # or a labelled task's classes or targets.
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), outputs or vocab_size or features)
        # Numbers in: the train split's statistics, so a user can go to and from data units.
        # Outputs: the same for series, the targets' own for regress (none for classes).
        if task == "next":
            out_mean, out_std = mean, std
        self.register_buffer("mean", torch.tensor(mean or [], dtype=torch.float64))
        self.register_buffer("scale", torch.tensor([s if s > 0 else 1.0 for s in (std or [])], dtype=torch.float64))
        self.register_buffer("out_mean", torch.tensor(out_mean or [], dtype=torch.float64))
        self.register_buffer("out_scale", torch.tensor([s if s > 0 else 1.0 for s in (out_std or [])],
                                                       dtype=torch.float64))

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
        return self.predict(x, lengths)

    @torch.jit.export
    def predict(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """`forward` with every row's length given (what the ONNX graph runs: no optional input)."""
        h = self.input(x)
        if self.bidirectional:
            out = self.rnn(h, lengths)
        else:
            out = self.rnn(h)[0]
        if not self.per_sequence:
            if self.labelled:   # tag: logits 0 at steps past a row's length (they predict nothing)
                valid = torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
                return self.head(out) * valid.unsqueeze(-1).to(out.dtype)
            return self.head(out)
        last = at_step(out, lengths - 1)
        if self.bidirectional:
            # Both directions' ends, as PyTorch's h_n: forward at the last valid step, reverse at step 0.
            last = torch.cat([last[:, :self.hidden], out[:, 0, self.hidden:]], dim=1)
        return self.head(last)

    @torch.jit.export
    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        """Input values in data units -> the normalized inputs `forward` takes."""
        return (values - self.mean.to(values.dtype)) / self.scale.to(values.dtype)

    @torch.jit.export
    def denormalize(self, values: torch.Tensor) -> torch.Tensor:
        """`forward`'s outputs (normalized series values, or regress targets) -> data units."""
        return values * self.out_scale.to(values.dtype) + self.out_mean.to(values.dtype)


def standalone_names(serial: Dict[str, torch.Tensor], cell: str, bidirectional: bool = False) -> Dict[str, torch.Tensor]:
    """mpirnn's serial parameter names -> Standalone's: `layers.K.weight_ih_l0` -> `rnn.weight_ih_lK`
    (one multi-layer PyTorch module), `layers.K.linear.*` -> `rnn.cells.K.linear.*`; bidirectional:
    `layers.K.weight_ih_l0[_reverse]` -> `rnn.layers.K.{forward,reverse}_direction.weight_ih_l0`,
    `layers.K.linear[_reverse].*` -> `rnn.layers.K.{forward,reverse}_direction.linear.*`."""
    renamed = {}
    for name, tensor in serial.items():
        if name.startswith("layers."):
            _, index, rest = name.split(".", 2)
            if bidirectional:
                part, _, tail = rest.partition(".")
                direction = "reverse" if part.endswith("_reverse") else "forward"
                part = part[:-len("_reverse")] if direction == "reverse" else part
                name = f"rnn.layers.{index}.{direction}_direction.{part}" + (f".{tail}" if tail else "")
            elif cell in FUSED and rest in SERIAL_FUSED:
                name = f"rnn.{rest[:-1]}{index}"
            else:
                name = f"rnn.cells.{index}.{rest}"
        renamed[name] = tensor
    return renamed


def from_serial(serial: Dict[str, torch.Tensor], config: dict, dataset: dict) -> Standalone:
    """Standalone in eval mode from mpirnn's serial parameters (a checkpoint's "model", or a
    safetensors export) and the resolved config and "dataset" record a checkpoint's JSON holds."""
    m, norm = config["model"], dataset.get("normalization") or {}
    bidirectional = bool(m.get("bidirectional", False))
    targets = dataset.get("target_normalization")   # regress: the outputs' own statistics
    plain = Standalone(m["cell"], m["hidden"], m["layers"], m["embed"], dataset.get("vocab_size"),
                       dataset.get("features"), norm.get("mean"), norm.get("std"),
                       (dataset.get("inputs") or {}).get("width"), int(serial["head.weight"].shape[0]),
                       dataset.get("task") or "next", bidirectional,
                       targets["mean"] if targets else None, targets["std"] if targets else None)
    for part in (plain.input, plain.rnn, plain.head):  # the statistics stay float64
        part.to(dtype=getattr(torch, m["dtype"]))
    buffers = {name: getattr(plain, name) for name in ("mean", "scale", "out_mean", "out_scale")}
    plain.load_state_dict({**standalone_names(serial, m["cell"], bidirectional), **buffers})
    return plain.eval()
