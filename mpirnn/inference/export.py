"""A checkpoint's whole model written for use without mpirnn: TorchScript, ONNX or safetensors.

Checkpoints hold the serial model's parameters whatever grid wrote them (docs/checkpoints.md),
so an export depends only on the checkpoint. `torch` and `onnx` write the plain-torch model of
mpirnn/inference/standalone.py (PyTorch's own names for rnn / lstm / gru); `safetensors` writes
the serial parameters under mpirnn's names. Every file records what it takes and returns, the
config and, for series, the normalization (JSON strings: `metadata(...)`); docs/export.md.
A labelled model (tag, classify, regress) takes each row's length as a second input
(`lengths`), and its file records the class names or the targets' normalization.

    python -m pytest -q tests/test_export.py tests/test_export_labelled.py
"""

from __future__ import annotations

import io
import json
import warnings

import torch

from mpirnn.errors import ConfigError
from mpirnn.inference.standalone import BiStack, MinStack, Standalone, from_serial

FORMATS = ("torch", "onnx", "safetensors")
EXTRAS = {"onnx": ("onnx", "onnxruntime"), "safetensors": ("safetensors",)}
METADATA_FILE = "mpirnn.json"  # the TorchScript file's extra file holding `metadata(...)`


def check_format(fmt: str) -> None:
    """Refuse a format whose packages are missing, with the install command."""
    import importlib.util

    missing = [name for name in EXTRAS.get(fmt, ()) if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"--format {fmt} needs {' and '.join(missing)}: pip install 'mpirnn[export]'")


def standalone_model(model, cfg, info) -> Standalone:
    """The plain-torch copy of mpirnn's serial `model` (inference/load.py's `build`), in eval mode."""
    return from_serial(model.state_dict(), cfg.to_dict(), info.to_json())


def labelled_io(info, dtype: str) -> tuple[str, str]:
    """(takes, returns) of a labelled model (docs/export.md, "Labelled models")."""
    spec = info.task_spec
    if info.tokens:
        x = "token ids [batch, time], int64 (any valid id at padded steps, e.g. 0)"
    else:
        x = (f"values [batch, time, {info.features}], {dtype}, normalized: (x - mean) / std per feature (std 0 "
             f"taken as 1), as the dataset's manifest records (anything finite at padded steps)")
    takes = f"x: {x}; lengths: [batch] int64, each row's valid steps (1 to time)"
    if spec.task == "tag":
        returns = (f"logits [batch, time, {spec.n_classes}], {dtype}, one class per step (classes), 0 at steps at "
                   f"and after a row's length (no prediction there); softmax gives predict's probabilities")
    elif spec.task == "classify":
        returns = (f"logits [batch, {spec.n_classes}], {dtype}, one class per row (classes); softmax gives "
                   f"predict's probabilities")
    else:
        returns = (f"normalized targets [batch, {spec.targets}], {dtype}: y * std + mean with the "
                   f"target_normalization (denormalize)")
    return takes, returns


def metadata(located, cfg, info) -> dict[str, str]:
    """What the file takes and returns, and where it came from: string values (JSON inside)."""
    dtype = cfg.model.dtype
    spec = info.task_spec
    if spec.labelled:
        takes, returns = labelled_io(info, dtype)
    elif info.tokens:
        takes = "token ids [batch, time], int64"
        returns = f"logits [batch, time, {info.vocab_size}], {dtype}"
    else:
        takes = (f"values [batch, time, {info.features}], {dtype}, normalized: (x - mean) / std per feature "
                 f"(std 0 taken as 1), as the dataset's manifest records")
        if info.input_width:
            takes = (f"inputs [batch, time, {info.input_width}], {dtype}: per step its {info.features} normalized "
                     f"value(s), then the normalized values at lags {list(info.inputs.lags)} before the predicted "
                     f"step, then the {info.inputs.calendar} calendar (sin, cos) of the predicted step, as "
                     f"mpirnn.data.model_inputs.ModelInputs.build makes them (dataset.inputs)")
        returns = f"the next step's normalized values [batch, time, {info.features}], {dtype}: y * std + mean"
        t = cfg.train
        quantiles = list(t.quantiles) if t.loss == "quantile" else []
        if t.horizon > 1 or quantiles:   # a wider series head (mpirnn/models/series_head.py)
            returns = (f"normalized values [batch, time, {t.horizon} x {info.features} x {max(1, len(quantiles))}], "
                       f"{dtype}, laid out [steps ahead 1..{t.horizon}, feature, "
                       f"{'quantile ' + str(quantiles) if quantiles else 'value'}]: y * std + mean")
    return {"format": "mpirnn export 1", "takes": takes, "returns": returns,
            "initial_state": "zeros (every sequence starts from a zero state)",
            "checkpoint": str(located.path), "step": str(located.step),
            "config": json.dumps(cfg.to_dict()), "dataset": json.dumps(info.to_json()),
            "normalization": json.dumps(info.normalization.to_json() if info.normalization else None),
            "task": spec.task, "inputs": json.dumps(["x", "lengths"] if spec.labelled else ["x"]),
            "classes": json.dumps(list(spec.classes) if spec.classes else None),
            "target_normalization": json.dumps(spec.target_normalization.to_json()
                                               if spec.target_normalization else None)}


def example_input(info, dtype: torch.dtype) -> tuple:
    """What the ONNX exporter runs the model on: x, and for a labelled model rows' lengths."""
    if info.tokens:
        x = torch.zeros(2, 3, dtype=torch.long)
    else:
        x = torch.zeros(2, 3, info.input_width or info.features, dtype=dtype)
    # Different lengths, so the trace keeps the per-row reverse and readout, not one length.
    return (x, torch.tensor([3, 2])) if info.task_spec.labelled else (x,)


def script(plain: Standalone):
    """torch.jit.script, quietly: torch 2.13 deprecates it for torch.export, yet its files are the
    ones that load with nothing but torch (and the linear cells' loop needs it for ONNX)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(plain)


def torch_bytes(plain: Standalone, meta: dict) -> bytes:
    """TorchScript: `torch.jit.load(FILE)`; `metadata` as the extra file mpirnn.json."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # as in `script`
        torch.jit.save(script(plain), buffer, _extra_files={METADATA_FILE: json.dumps(meta, indent=1)})
    return buffer.getvalue()


class WithLengths(torch.nn.Module):
    """A labelled model for ONNX: both inputs required (an optional one becomes an If node that
    onnxruntime runs only for the length it was exported with)."""

    def __init__(self, plain: Standalone):
        super().__init__()
        self.model = plain

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.model.predict(x, lengths)


class WholeRows(torch.nn.Module):
    """A next-step model for ONNX: x alone, every row whole (a scripted module may not be
    exported with an argument left None)."""

    def __init__(self, plain: Standalone):
        super().__init__()
        self.model = plain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
        return self.model.predict(x, lengths)


def has_linear_cells(plain: Standalone) -> bool:
    """minGRU / minLSTM layers, one-direction or bidirectional: their loop over time."""
    if isinstance(plain.rnn, MinStack):
        return True
    return isinstance(plain.rnn, BiStack) and not plain.rnn.layers[0].fused


def onnx_bytes(plain: Standalone, meta: dict, info) -> bytes:
    """ONNX (the TorchScript exporter, which needs nothing but the onnx package): input "x" (and
    "lengths" for a labelled model), output "y", batch and time dynamic; `metadata` as the
    model's metadata_props."""
    import onnx

    buffer = io.BytesIO()
    dims = {0: "batch", 1: "time"}
    example = example_input(info, plain.head.weight.dtype)
    names = ["x", "lengths"][:len(example)]
    axes = {"x": dims, "y": {0: "batch"} if plain.per_sequence else dims}
    if len(example) > 1:
        axes["lengths"] = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on batch_first RNNs and scripted loops
        # The linear cells' loop over time must stay a loop (ONNX Loop), not be traced flat: scripted.
        module = WithLengths(plain) if len(example) > 1 else WholeRows(plain)
        module = script(module) if has_linear_cells(plain) else module
        torch.onnx.export(module, example, buffer, dynamo=False,
                          input_names=names, output_names=["y"], dynamic_axes=axes)
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(proto, meta)
    return proto.SerializeToString()


def safetensors_bytes(model, meta: dict) -> bytes:
    """The serial parameters under mpirnn's names (docs/checkpoints.md), `metadata` as the header's."""
    from safetensors.torch import save

    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    return save(state, metadata=meta)


def export_bytes(fmt: str, model, cfg, info, located) -> bytes:
    """The file `--format fmt` writes for the serial `model` built from `located`."""
    meta = metadata(located, cfg, info)
    if fmt == "safetensors":
        return safetensors_bytes(model, meta)
    plain = standalone_model(model, cfg, info)
    return torch_bytes(plain, meta) if fmt == "torch" else onnx_bytes(plain, meta, info)
