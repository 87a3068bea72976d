"""What a checkpoint's model reads and predicts, recorded beside it so it can be used alone.

A model is rebuilt from its config (cell, sizes, dtype) plus what the data decided: the
vocabulary size (tokens) or the feature count (series), and, for series, the train split's
normalization that turns its outputs back into data units. The trainer writes this as
`"dataset"` into every checkpoint's JSON (docs/checkpoints.md); checkpoints written before
that are read by looking at the parameter shapes and the dataset the config names.

    python -m pytest -q tests/test_inference_load.py
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mpirnn.data.model_inputs import ModelInputs
from mpirnn.data.normalization import Normalization, normalization_from_json
from mpirnn.data.tasks import TaskSpec, task_from_json

BYTE_VOCAB = 256
LN2 = math.log(2.0)


@dataclass(frozen=True)
class ModelInfo:
    kind: str                          # tokens, series, sequences or token_sequences (the dataset's kind)
    vocab_size: int | None             # tokens
    features: int | None               # series and sequences
    normalization: Normalization | None
    task_spec: TaskSpec = TaskSpec()   # what the head predicts: the next step, or a labelled task's
    inputs: ModelInputs | None = None  # series: lags and calendar the model reads (None: its values)

    @property
    def input_width(self) -> int | None:
        """A series model's input values per step where lags or calendar widen them (else None)."""
        return self.inputs.width if self.inputs is not None and self.inputs.widens else None

    @property
    def tokens(self) -> bool:
        """The model reads token ids (text, or labelled token rows such as DNA)."""
        return self.kind in ("tokens", "token_sequences")

    @property
    def task(self) -> str:
        return self.task_spec.task

    @property
    def loss_name(self) -> str:
        if self.task == "regress":
            return "mean squared error"
        return "cross-entropy" if self.tokens or self.task_spec.classes else "mean squared error"

    @property
    def loss_unit(self) -> str:
        """What one unit of `loss` is: the trainer's loss is a mean over every predicted value."""
        if self.task == "tag":
            return "nats per valid step"
        if self.task == "classify":
            return "nats per sequence"
        if self.task == "regress":
            return "per normalized target value (train split mean 0, std 1 per target)"
        if self.tokens:
            return "nats per token"
        return "per value of the normalized next step (train split mean 0, std 1 per feature)"

    @property
    def byte_tokens(self) -> bool:
        """Bits per byte apply: one token is one byte."""
        return self.tokens and self.vocab_size == BYTE_VOCAB

    def bits_per_byte(self, loss: float | None) -> float | None:
        return loss / LN2 if self.byte_tokens and loss is not None else None

    def describe(self) -> str:
        if self.task_spec.labelled:
            reads = f"tokens (vocab_size={self.vocab_size})" if self.tokens else f"{self.features} feature(s)"
            return f"a {self.task} model reading {reads}; {self.task_spec.describe()}"
        if self.tokens:
            return f"a token model (vocab_size={self.vocab_size})"
        extra = f", {self.inputs.describe()}" if self.input_width else ""
        return f"a {self.kind} model ({self.features} feature(s){extra})"

    def to_json(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "features": self.features,
                "normalization": self.normalization and self.normalization.to_json(),
                "loss": self.loss_name, "loss_unit": self.loss_unit, **self.task_spec.to_json(),
                "inputs": self.inputs and self.inputs.to_json()}

    @classmethod
    def from_json(cls, obj: dict, where: str) -> "ModelInfo":
        features = obj.get("features")
        inputs = obj.get("inputs")   # absent before lags and calendar: the model reads its values
        return cls(obj["kind"], obj.get("vocab_size"), features,
                   normalization_from_json(obj.get("normalization"), features or 0, where),
                   task_from_json(obj, where), ModelInputs.from_json(inputs) if inputs else None)

    @classmethod
    def from_manifest(cls, manifest, inputs: ModelInputs | None = None) -> "ModelInfo":
        tokens = manifest.is_tokens
        return cls(manifest.kind, manifest.vocab_size if tokens else None,
                   None if tokens else manifest.features, manifest.normalization, manifest.task_spec, inputs)


def info_from_parameters(model_state: dict) -> tuple[int | None, int | None]:
    """(vocab_size, features) read off the saved parameters, for checkpoints that predate "dataset".

    The input of a token model is an Embedding (weight [vocab, embed], no bias); of a series
    model a Linear (weight [embed, features] and a bias). The head predicts vocab or features.
    """
    out = int(model_state["head.weight"].shape[0])
    if "input.bias" in model_state:
        return None, out
    return out, None
