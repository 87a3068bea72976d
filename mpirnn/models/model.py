"""The recurrent model: input layer, a stack of recurrent layers, and a head.

Layers are kept as separate single-layer modules so that parallel strategies can run
any layer on any time segment from any incoming state. States of the whole stack travel
as one tensor shaped [layers, parts, batch, hidden] (parts = 2 for LSTM's (h, c), else 1),
so a boundary state is one message.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mpirnn.models.linear_cells import MinGRU, MinLSTM

FUSED = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
LINEAR = {"mingru": MinGRU, "minlstm": MinLSTM}


class RecurrentModel(nn.Module):
    """Tokens (vocab_size) or continuous features (features) in; next-step predictions out."""

    def __init__(self, cell: str, hidden: int, layers: int, embed: int,
                 vocab_size: int | None = None, features: int | None = None):
        super().__init__()
        if (vocab_size is None) == (features is None):
            raise ValueError("give exactly one of vocab_size (tokens) or features (series)")
        self.cell, self.hidden, self.vocab_size, self.features = cell, hidden, vocab_size, features
        self.linear = cell in LINEAR
        self.parts = 2 if cell == "lstm" else 1
        self.input = nn.Embedding(vocab_size, embed) if vocab_size else nn.Linear(features, embed)
        make = LINEAR.get(cell) or (lambda i, h: FUSED[cell](i, h, batch_first=True))
        self.layers = nn.ModuleList(make(embed if i == 0 else hidden, hidden) for i in range(layers))
        self.head = nn.Linear(hidden, vocab_size or features)

    def zero_state(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(self.layers), self.parts, batch, self.hidden,
                           dtype=self.head.weight.dtype, device=like.device)

    def run_layer(self, index: int, x: torch.Tensor, state: torch.Tensor):
        """One layer over x [B, T, D] from state [parts, B, H]; returns (outputs, final state)."""
        layer = self.layers[index]
        if self.linear:
            out, last = layer(x, state[0])
            return out, last.unsqueeze(0)
        if self.cell == "lstm":
            out, (h, c) = layer(x, (state[0:1].contiguous(), state[1:2].contiguous()))
            return out, torch.cat([h, c])
        out, h = layer(x, state.contiguous())
        return out, h

    def run_stack(self, features: torch.Tensor, state: torch.Tensor):
        """All layers; returns (top outputs, final states [layers, parts, B, H])."""
        finals = []
        for index in range(len(self.layers)):
            features, last = self.run_layer(index, features, state[index])
            finals.append(last)
        return features, torch.stack(finals)

    def loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed (not averaged) loss, so segments and rows add up to the serial total."""
        prediction = self.head(outputs)
        if self.vocab_size:
            return F.cross_entropy(prediction.reshape(-1, self.vocab_size), targets.reshape(-1), reduction="sum")
        return F.mse_loss(prediction, targets, reduction="sum")

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, state: torch.Tensor | None = None):
        """Serial reference: (summed loss, final states) of the whole batch and sequence."""
        if state is None:
            state = self.zero_state(inputs.shape[0], inputs)
        outputs, final = self.run_stack(self.input(inputs), state)
        return self.loss_sum(outputs, targets), final

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, steps: int, temperature: float = 0.8,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample `steps` tokens after a 1-D prompt (token models only)."""
        state = self.zero_state(1, prompt)
        outputs, state = self.run_stack(self.input(prompt[None]), state)
        produced = []
        for _ in range(steps):
            probs = torch.softmax(self.head(outputs[:, -1]).double() / temperature, dim=-1)
            token = torch.multinomial(probs.cpu(), 1, generator=generator).to(prompt.device)
            produced.append(token.item())
            outputs, state = self.run_stack(self.input(token), state)
        return torch.tensor(produced, dtype=torch.long)


def build_model(cfg, vocab_size=None, features=None, device="cpu") -> RecurrentModel:
    """The same parameters on every rank for the same seed, whatever the grid."""
    dtype = getattr(torch, cfg.model.dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = RecurrentModel(cfg.model.cell, cfg.model.hidden, cfg.model.layers, cfg.model.embed,
                               vocab_size=vocab_size, features=features)
    return model.to(device=device, dtype=dtype)
