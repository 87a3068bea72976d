"""The exported model: mpirnn's serial model rebuilt from plain torch, for use without mpirnn.

Nothing here imports mpirnn, so `torch.jit.script` of `Standalone` gives a file that
`torch.jit.load` opens anywhere torch is installed (mpirnn/inference/export.py writes it, and
the same module traced for ONNX). rnn / lstm / gru run on one multi-layer nn.RNN / nn.LSTM /
nn.GRU, so their parameters carry PyTorch's own names (`rnn.weight_ih_l1`); minGRU / minLSTM
have no PyTorch module and run as `MinStack`, a plain loop over time of the same recurrence
h_t = a_t h_{t-1} + b_t that mpirnn/models/linear_cells.py computes as a log-space scan.

    python -m pytest -q tests/test_export.py
"""

from typing import Dict, List, Tuple

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
    """Token ids [B, T] (int64) or normalized values [B, T, F] in; the head's output
    [B, T, vocab] logits or [B, T, F] normalized values out; zero initial states."""

    def __init__(self, cell: str, hidden: int, layers: int, embed: int, vocab_size: int | None,
                 features: int | None, mean: List[float] | None = None, std: List[float] | None = None,
                 inputs: int | None = None, outputs: int | None = None):
        super().__init__()
        # `inputs`: the input width where seasonal lags and calendar features widen it (docs/export.md).
        self.input = nn.Embedding(vocab_size, embed) if vocab_size else nn.Linear(inputs or features, embed)
        if cell in FUSED:
            self.rnn = FUSED[cell](embed, hidden, num_layers=layers, batch_first=True)
        else:
            self.rnn = MinStack(cell, embed, hidden, layers)
        # `outputs`: a series head predicting several steps ahead or quantiles ([H, F, Q] flattened).
        self.head = nn.Linear(hidden, outputs or vocab_size or features)
        # Series only: the train split's statistics, so a user can go to and from data units.
        self.register_buffer("mean", torch.tensor(mean or [], dtype=torch.float64))
        self.register_buffer("scale", torch.tensor([s if s > 0 else 1.0 for s in (std or [])], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.input(x))[0])

    @torch.jit.export
    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        """Series in data units -> the normalized inputs `forward` takes."""
        return (values - self.mean.to(values.dtype)) / self.scale.to(values.dtype)

    @torch.jit.export
    def denormalize(self, values: torch.Tensor) -> torch.Tensor:
        """`forward`'s outputs (normalized) -> data units."""
        return values * self.scale.to(values.dtype) + self.mean.to(values.dtype)


def standalone_names(serial: Dict[str, torch.Tensor], cell: str) -> Dict[str, torch.Tensor]:
    """mpirnn's serial parameter names -> Standalone's: `layers.K.weight_ih_l0` -> `rnn.weight_ih_lK`
    (one multi-layer PyTorch module), `layers.K.linear.*` -> `rnn.cells.K.linear.*`."""
    renamed = {}
    for name, tensor in serial.items():
        if name.startswith("layers."):
            _, index, rest = name.split(".", 2)
            name = f"rnn.{rest[:-1]}{index}" if cell in FUSED and rest in SERIAL_FUSED else f"rnn.cells.{index}.{rest}"
        renamed[name] = tensor
    return renamed


def from_serial(serial: Dict[str, torch.Tensor], config: dict, dataset: dict) -> Standalone:
    """Standalone in eval mode from mpirnn's serial parameters (a checkpoint's "model", or a
    safetensors export) and the resolved config and "dataset" record a checkpoint's JSON holds."""
    m, norm = config["model"], dataset.get("normalization") or {}
    plain = Standalone(m["cell"], m["hidden"], m["layers"], m["embed"], dataset.get("vocab_size"),
                       dataset.get("features"), norm.get("mean"), norm.get("std"),
                       (dataset.get("inputs") or {}).get("width"), int(serial["head.weight"].shape[0]))
    for part in (plain.input, plain.rnn, plain.head):  # the statistics stay float64
        part.to(dtype=getattr(torch, m["dtype"]))
    plain.load_state_dict({**standalone_names(serial, m["cell"]), "mean": plain.mean, "scale": plain.scale})
    return plain.eval()
