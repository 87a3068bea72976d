"""The recurrent model: input layer, a stack of recurrent layers, and a head.

Layers are kept as separate single-layer modules so that parallel strategies can run
any layer on any time segment from any incoming state. States of the whole stack travel
as one tensor shaped [layers, parts, batch, hidden] (parts = 2 for LSTM's (h, c), else 1),
so a boundary state is one message. Bidirectional layers (mpirnn/models/bidirectional.py) hold
both directions' states, part-major ([parts x 2, B, H]), and output [forward; reverse].
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mpirnn.models.bidirectional import DIRECTIONS, BidirectionalLinearCell, run_direction, run_fused
from mpirnn.models.dropout import DropoutKey
from mpirnn.models.linear_cells import MinGRU, MinLSTM, log_state
from mpirnn.models.objectives import labelled_loss_sum
from mpirnn.models.series_head import SeriesOutputs, outputs_from_config

FUSED = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
LINEAR = {"mingru": MinGRU, "minlstm": MinLSTM}


class Absent(nn.Module):
    """Where a pipeline stage holds no part of the model: no parameters, and an error if used."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"{self.what} is held by another pipeline stage")


class RecurrentModel(nn.Module):
    """Tokens (vocab_size) or continuous features (features) in; next-step predictions out, or
    with `outputs` the predictions of a labelled task: classes per step or per sequence, or
    regression values (mpirnn/models/objectives.py)."""

    def __init__(self, cell: str, hidden: int, layers: int, embed: int,
                 vocab_size: int | None = None, features: int | None = None, outputs: int | None = None,
                 inputs: int | None = None, bidirectional: bool = False, predicts: SeriesOutputs | None = None):
        super().__init__()
        if (vocab_size is None) == (features is None):
            raise ValueError("give exactly one of vocab_size (tokens) or features (series)")
        self.cell, self.hidden, self.vocab_size, self.features = cell, hidden, vocab_size, features
        self.outputs = outputs  # a labelled task's head width (classes or targets); None: next step
        # A next-step series model's head: steps ahead and quantiles (mpirnn/models/series_head.py).
        self.predicts = predicts if predicts is not None else (
            SeriesOutputs(features) if features and outputs is None else None)
        self.linear = cell in LINEAR
        self.parts = 2 if cell == "lstm" else 1
        self.bidirectional = bidirectional
        self.directions = DIRECTIONS if bidirectional else 1
        self.output_width = hidden * self.directions  # a layer's outputs: [forward; reverse]
        # `inputs`: a series' input width when lags or calendar features widen it past `features`.
        self.input = nn.Embedding(vocab_size, embed) if vocab_size else nn.Linear(inputs or features, embed)
        self.layers = nn.ModuleList(self._make_layer(embed if i == 0 else self.output_width)
                                    for i in range(layers))
        self.head = nn.Linear(self.output_width, outputs or vocab_size or self.predicts.width)
        self._owned = (0, layers)
        self.state_width = hidden  # hidden units per layer this copy holds (H/K under tensor parallelism)

    def _make_layer(self, inputs: int) -> nn.Module:
        if self.linear and self.bidirectional:
            return BidirectionalLinearCell(LINEAR[self.cell], inputs, self.hidden)
        if self.linear:
            return LINEAR[self.cell](inputs, self.hidden)
        return FUSED[self.cell](inputs, self.hidden, batch_first=True, bidirectional=self.bidirectional)

    # -- the protocol every parallel strategy runs the model through ----------------------

    @property
    def depth(self) -> int:
        """Layers of the whole stack (also on a pipeline stage that holds only some of them)."""
        return len(self.layers)

    @property
    def owned_layers(self) -> range:
        """Indices of the layers this copy holds (all of them unless `keep_only` was called)."""
        return range(*self._owned)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def zero_state(self, batch: int, like: torch.Tensor, layers: range | None = None) -> torch.Tensor:
        """Zero states [layers, parts (x 2 where bidirectional), batch, hidden] for `layers` (default: every layer)."""
        count = self.depth if layers is None else len(layers)
        return torch.zeros(count, self.parts * self.directions, batch, self.state_width, dtype=self.dtype, device=like.device)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] or features [B, T, F] -> layer-0 inputs [B, T, embed]."""
        return self.input(inputs)

    def run_layer(self, index: int, x: torch.Tensor, state: torch.Tensor, lengths: torch.Tensor | None = None):
        """One layer over x [B, T, D] from state [parts, B, H]; returns (outputs, final state).

        `lengths` (bidirectional layers only: each row's valid steps in x, None for all) is where
        each row's reverse direction starts; a one-direction layer never needs them."""
        layer = self.layers[index]
        if self.bidirectional and hasattr(layer, "run"):  # linear cells, or a tensor-parallel slice
            return layer.run(x, state, lengths)
        if self.bidirectional:
            return run_fused(layer, self.cell, x, state, lengths)
        if hasattr(layer, "run"):  # a layer that runs itself (a tensor-parallel slice)
            return layer.run(x, state)
        if self.linear:
            out, last = layer(x, state[0])
            return out, last.unsqueeze(0)
        if self.cell == "lstm":
            out, (h, c) = layer(x, (state[0:1].contiguous(), state[1:2].contiguous()))
            return out, torch.cat([h, c])
        out, h = layer(x, state.contiguous())
        return out, h

    def run_direction(self, index: int, x: torch.Tensor, state: torch.Tensor, reverse: bool,
                      lengths: torch.Tensor | None = None):
        """One direction of bidirectional rnn / lstm / gru layer `index` over x from that direction's
        state [parts, B, H] (mpirnn/models/bidirectional.py `run_direction`; a tensor-parallel slice
        runs its own); returns (that direction's outputs [B, T, H], its final state)."""
        layer = self.layers[index]
        if hasattr(layer, "run_direction"):
            return layer.run_direction(x, state, reverse, lengths)
        return run_direction(layer, self.cell, x, state, reverse, lengths)

    def layer_input(self, index: int, x: torch.Tensor, noise: DropoutKey | None) -> torch.Tensor:
        """What layer `index` reads: `x`, with dropout in training above the first layer
        (`noise` places x in the step: mpirnn/models/dropout.py; None: no dropout)."""
        return x if noise is None or index == 0 else noise.apply(index, x)

    def run_layers(self, features: torch.Tensor, state: torch.Tensor, layers: range | None = None,
                   noise: DropoutKey | None = None, lengths: torch.Tensor | None = None):
        """Consecutive `layers` (default: all) from states [len(layers), parts, B, H];
        returns (top outputs, final states of the same shape). `lengths`: see run_layer."""
        layers = range(self.depth) if layers is None else layers
        finals = []
        for offset, index in enumerate(layers):
            features, last = self.run_layer(index, self.layer_input(index, features, noise), state[offset], lengths)
            finals.append(last)
        return features, torch.stack(finals)

    def run_stack(self, features: torch.Tensor, state: torch.Tensor, noise: DropoutKey | None = None,
                  lengths: torch.Tensor | None = None):
        """All layers; returns (top outputs, final states [layers, parts, B, H])."""
        return self.run_layers(features, state, noise=noise, lengths=lengths)

    def log_gates(self, index: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear cells: layer `index`'s recurrence h_t = a_t h_{t-1} + b_t as (log a, log b) [B, T, H]."""
        return self.layers[index].gates(x)

    def join_hidden(self, index: int, h: torch.Tensor) -> torch.Tensor:
        """Linear cells: the layer's outputs from the hidden units this copy computed (all of
        them, or under tensor parallelism the slices of every rank, gathered)."""
        join = getattr(self.layers[index], "join", None)
        return h if join is None else join(h)

    @staticmethod
    def log_state(h: torch.Tensor) -> torch.Tensor:
        """Linear cells: a state in linear space (>= 0) as logs (0 -> -inf)."""
        return log_state(h)

    def keep_only(self, layers: range, embedding: bool, head: bool) -> "RecurrentModel":
        """Drop every part this pipeline stage does not own, keeping the serial parameter names.

        Dropped layers become `Absent` placeholders (no parameters, an error if run), so
        `layers.3.weight_ih_l0` keeps its name on the stage that owns layer 3 and checkpoints
        written on any grid use the serial model's names.
        """
        for index in range(self.depth):
            if index not in layers:
                self.layers[index] = Absent(f"layer {index}")
        if not embedding:
            self.input = Absent("the input embedding/projection")
        if not head:
            self.head = Absent("the head")
        self._owned = (layers.start, layers.stop)
        return self

    def loss_sum(self, outputs: torch.Tensor, targets) -> torch.Tensor:
        """Summed (not averaged) loss, so segments and rows add up to the serial total.

        `targets`: the next steps (a tensor; a HorizonTargets with train.horizon > 1), or a
        labelled task's LabelledTargets."""
        if self.predicts is not None:   # a next-step series head: one step or more, values or quantiles
            return self.predicts.loss_sum(self.head, outputs, targets)
        if not isinstance(targets, torch.Tensor):
            return labelled_loss_sum(self.head, outputs, targets, self.hidden if self.bidirectional else None)
        prediction = self.head(outputs)
        return F.cross_entropy(prediction.reshape(-1, self.vocab_size), targets.reshape(-1), reduction="sum")

    def forward(self, inputs: torch.Tensor, targets, state: torch.Tensor | None = None,
                noise: DropoutKey | None = None, lengths=None):
        """Serial reference: (summed loss, final states) of the whole batch and sequence."""
        if state is None:
            state = self.zero_state(inputs.shape[0], inputs)
        outputs, final = self.run_stack(self.input(inputs), state, noise, lengths)
        return self.loss_sum(outputs, targets), final

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, steps: int, temperature: float = 0.8,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample `steps` tokens after a 1-D prompt (token models only)."""
        refuse_bidirectional(self, "generate")
        state = self.zero_state(1, prompt)
        outputs, state = self.run_stack(self.input(prompt[None]), state)
        produced = []
        for _ in range(steps):
            probs = torch.softmax(self.head(outputs[:, -1]).double() / temperature, dim=-1)
            token = torch.multinomial(probs.cpu(), 1, generator=generator).to(prompt.device)
            produced.append(token.item())
            outputs, state = self.run_stack(self.input(token), state)
        return torch.tensor(produced, dtype=torch.long)


def refuse_bidirectional(model, what: str) -> None:
    """Generation and forecasting roll a model forward one step at a time: a reverse direction
    would need steps not yet produced."""
    if getattr(model, "bidirectional", False):
        raise ValueError(f"{what} needs a one-direction model: this one has bidirectional layers, whose reverse "
                         f"direction reads steps not yet produced (model.bidirectional = true)")


def build_model(cfg, vocab_size=None, features=None, device="cpu", outputs=None, inputs=None) -> RecurrentModel:
    """The same parameters on every rank for the same seed, whatever the grid."""
    dtype = getattr(torch, cfg.model.dtype)
    predicts = outputs_from_config(cfg.train, features) if features and outputs is None else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = RecurrentModel(cfg.model.cell, cfg.model.hidden, cfg.model.layers, cfg.model.embed,
                               vocab_size=vocab_size, features=features, outputs=outputs, inputs=inputs,
                               bidirectional=getattr(cfg.model, "bidirectional", False), predicts=predicts)
    return model.to(device=device, dtype=dtype)
