"""Reduced precision (train.precision = "bf16" | "fp16"): which parts of a step run in it.

Only the matmuls do: the forward of the embedding or input projection, of the linear cells'
gate projections and of the head runs under `torch.autocast`, and every result is cast back to
the master dtype (float32) where it leaves a layer. So parameters, gradients (and their sums
over ranks), optimizer state, the recurrent states, the messages between ranks, the linear
cells' log-space scans and the loss stay float32 (docs/precision.md says why and what was
measured). The fused recurrent layers (nn.RNN/LSTM/GRU and the tensor-parallel recurrence)
run under autocast only where the device runs them natively in reduced precision (CUDA, a
CPU whose oneDNN builds bf16 primitives); elsewhere they run in float32, which is what the
tests use on a CPU without native bf16. No MPI here: the wavefront executor and the serial
reference (`serial_loss`) run the same code, which is what makes the grids comparable.

    python -m pytest -q tests/test_precision.py
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from mpirnn.config import PRECISIONS
from mpirnn.errors import ConfigError
from mpirnn.host import cpu_model, native_bf16

REDUCED = {"bf16": torch.bfloat16, "fp16": torch.float16}
LINEAR_CELLS = ("mingru", "minlstm")
# fp16's gradients underflow without scaling: the loss is multiplied by this before backward and
# the gradients divided by it after their sums (a fixed scale: docs/precision.md).
FP16_LOSS_SCALE = 2.0 ** 10


@dataclass(frozen=True)
class Precision:
    """How one rank runs a step's forward: `name` one of PRECISIONS on `device_type` cpu or cuda."""

    name: str = "float32"
    device_type: str = "cpu"
    fused_reduced: bool = False   # the fused recurrent layers under autocast too (native support)

    @property
    def reduced(self) -> bool:
        return self.name != "float32"

    @property
    def loss_scale(self) -> float:
        return FP16_LOSS_SCALE if self.name == "fp16" else 1.0

    def autocast(self):
        """Around a step's forward (never its backward): matmuls in the reduced dtype."""
        if not self.reduced:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=REDUCED[self.name])

    def recurrence(self, cell: str):
        """Around the recurrent layers: autocast stays on for the linear cells (their gate
        projections) and, where native, for the fused cells; else the fused cells run in float32."""
        if not self.reduced or cell in LINEAR_CELLS or self.fused_reduced:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, enabled=False)

    def run_layers(self, cell: str, run, features: torch.Tensor, start: torch.Tensor):
        """`run(features, start)` -> (outputs, final) under this policy, inputs and results in the
        states' (master) dtype, so that activations and states cross ranks in float32."""
        with self.recurrence(cell):
            outputs, final = run(features.to(start.dtype), start)
        return outputs.to(start.dtype), final.to(start.dtype)


FLOAT32 = Precision()


def fused_bf16_on_cpu() -> bool:
    """Whether this torch's oneDNN builds bf16 primitives (its fused LSTM among them) on this CPU."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check and check())


def refusal(name: str, device: torch.device | str) -> str | None:
    """Why `name` cannot run on `device` (one line), or None: fp16 only on CUDA; bf16 on a CPU only
    with native bf16, because emulated bf16 matmuls were measured 8x slower than float32."""
    kind = torch.device(device).type
    if name == "fp16" and kind != "cuda":
        return ("train.precision = fp16 runs on CUDA only (its loss scaling and kernels are a GPU's); "
                "on a CPU use train.precision = bf16 (with native bf16) or float32")
    if name == "bf16" and kind == "cpu" and not native_bf16():
        return (f"train.precision = bf16: this CPU ({cpu_model()}) has no native bf16 (neither avx512_bf16 nor "
                f"amx_bf16), so every bf16 matmul would be emulated, measured 8-20x slower than float32 "
                f"(docs/precision.md); use train.precision = float32 here")
    return None


def for_device(name: str, device: torch.device | str, emulate: bool = False) -> Precision:
    """The policy for `name` on `device`; a ConfigError (one line) where `refusal` says no, before
    step 1. `emulate` (the tests) runs bf16 on a CPU without native support anyway, its fused
    layers in float32 where oneDNN cannot build them in bf16."""
    kind = torch.device(device).type
    refused = refusal(name, device)
    if refused and not (emulate and name == "bf16"):
        raise ConfigError(refused)
    fused = kind == "cuda" or (name == "bf16" and fused_bf16_on_cpu())
    return Precision(name, kind, fused_reduced=name != "float32" and fused)


def serial_loss(model, inputs, targets, state, precision: Precision = FLOAT32, noise=None):
    """The serial reference under `precision`: (summed loss, final states), the same casts as the
    wavefront executor's units (mpirnn/parallel/wavefront.py), so any grid can be compared with it
    (`noise`: the step's dropout key, mpirnn/models/dropout.py, or None)."""
    with precision.autocast():
        run = lambda x, s: model.run_stack(x, s, noise)  # noqa: E731
        outputs, final = precision.run_layers(model.cell, run, model.embed(inputs), state)
        return model.loss_sum(outputs, targets).to(state.dtype), final
