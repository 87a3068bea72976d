"""Typed run configuration: dataclasses with one documented field each, read from TOML.

`load_config(path, overrides)` builds a `Config` from the embedded defaults, an optional
TOML file and `--set section.key=value` overrides, rejecting unknown keys ("did you
mean ...") and wrong types before anything runs. `python -m mpirnn.config` prints every
key with its default and doc.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from mpirnn.errors import ConfigError

CELLS = ("rnn", "lstm", "gru", "mingru", "minlstm")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
DTYPES = ("float32", "float64")
PRECISIONS = ("float32", "bf16", "fp16")  # train.precision (mpirnn/models/precision.py)
WINDOWS = ("auto", "every", "cut")
LOSSES = ("auto", "mse", "quantile")  # train.loss (mpirnn/models/series_head.py)


def doc(default, text: str):
    """A dataclass field with a default and its one-line documentation."""
    return field(default=default, metadata={"doc": text})


@dataclass
class ModelConfig:
    cell: str = doc("lstm", f"recurrent cell: one of {', '.join(CELLS)}")
    hidden: int = doc(256, "hidden units per layer")
    layers: int = doc(2, "stacked recurrent layers")
    embed: int = doc(64, "embedding size (tokens) or input projection size (series)")
    dtype: str = doc("float32", "parameter and activation dtype: float32 or float64")
    dropout: float = doc(0.0, "dropout on the inputs of every layer but the first, in training (as nn.LSTM's "
                              "dropout); its masks are the same on every grid (docs/design.md, \"Dropout\"); 0 = off")
    bidirectional: bool = doc(False, "each layer runs forward and reverse over each row (outputs [forward; reverse], "
                                     "2 x hidden); labelled tasks only, not train.stateful")


@dataclass
class DataConfig:
    path: str = doc("data/stdlib-bytes", "dataset directory made by `python -m mpirnn.data prepare`")
    seq_len: int = doc(128, "time steps per training sequence (the target is the next step)")
    batch_size: int = doc(32, "global batch: sequences per step over all ranks")
    validate: bool = doc(True, "scan every value (NaN, ids past the vocabulary) before training; shard sizes and checksums are checked either way")
    bucket: bool = doc(True, "rows of different lengths (labelled tasks): group rows of similar length into each "
                             "step's global batch, so little padding is computed (still a function of train.seed "
                             "and the step, never of the grid); no effect where rows have one length")
    windows: str = doc("auto", "where a long stream's training windows start: every = at any step (seeded), cut = "
                               "non-overlapping cuts of seq_len; auto = cut, or every for a series too short to "
                               "fill a batch with cuts (evaluation always scores non-overlapping cuts)")
    lags: str | list = doc("auto", "series: extra inputs, the values this many steps before the predicted step "
                                   "(lag 1 is the input itself); auto = the dataset's season (prepare --season, "
                                   "or 52 weekly, 12 monthly, 7 daily, 24 hourly with --time-column); [] = none")
    calendar: bool = doc(True, "series with a time column: add the calendar of the predicted step (sin/cos of "
                               "the phases of its year, week, day, as the frequency has them) to the inputs")
    holdout: int = doc(0, "series: hold the last this many steps of the train split out of the training windows, so "
                          "that `forecast` calibrates its band on steps the model never trained on (out of sample; "
                          "docs/forecasting.md, \"Calibrated bands\"); 0 = train on every step")


@dataclass
class ParallelConfig:
    dp: int = doc(-1, "data-parallel degree (batch rows); -1 = world size / (sp*pp*tp)")
    sp: int = doc(1, "sequence-parallel degree (time segments)")
    pp: int = doc(1, "pipeline-parallel degree (layer stages)")
    tp: int = doc(1, "tensor-parallel degree (hidden units)")
    microbatches: int = doc(0, "microbatches per step (overlap the sp chain and scan-mode stages); "
                               "0 = automatic (2 to 8 with >= 8 rows each where they overlap, else 1)")
    chunks: int = doc(0, "time chunks per segment (overlap pp stages even at batch size 1); "
                         "0 = automatic (about 8 units per extra stage, chunks >= 16 steps; 1 without pp)")
    calibration: str = doc("auto", "where automatic microbatches and chunks come from: auto = the performance "
                                   "model with this CPU's newest calibration of the model's cell and hidden size, "
                                   "the user's own or a shipped one (the fixed rules when there is none, or on a GPU); a calibration file (python -m "
                                   "mpirnn.plan --calibrate); rules = the fixed rules")


@dataclass
class TrainConfig:
    steps: int = doc(300, "optimizer steps in total (a resumed run continues up to this)")
    seed: int = doc(0, "seed for parameters and batch order: same seed, same run on any grid")
    lr: float = doc(3e-3, "peak learning rate (after warm-up; the whole run with schedule = constant)")
    optimizer: str = doc("adam", "adam (weight decay added to the gradient) or adamw (weight decay decoupled)")
    weight_decay: float = doc(0.0, "weight decay of the optimizer; 0 = none")
    schedule: str = doc("constant", "learning-rate schedule after warm-up: constant, or cosine (down to min_lr at the last step)")
    warmup_steps: int = doc(0, "steps of linear warm-up from lr / warmup_steps to lr")
    min_lr: float = doc(0.0, "learning rate at the last step with schedule = cosine")
    grad_clip: float = doc(1.0, "clip the global gradient norm to this; 0 = off")
    stateful: bool = doc(False, "carry each sequence's final state into the next step (truncated BPTT over a stream)")
    device: str = doc("auto", "auto (a GPU per rank when there is one), cpu, or cuda")
    threads: int = doc(0, "torch threads per rank; 0 = the cores available to the rank")
    skip_nonfinite: bool = doc(False, "skip a step whose loss or gradients are not finite (on all ranks) instead of stopping")
    max_skipped: float = doc(0.1, "with skip_nonfinite: stop with status 1 once more than this share of the run's "
                                  "steps were skipped (a run that skips most steps has not trained)")
    comm_timeout_s: float = doc(-1.0, "abort a step stuck this long (a hung peer): -1 = automatic (from the "
                                      "run's own step times, docs/reliability.md), 0 = off, > 0 = seconds")
    bucket_mb: float = doc(4.0, "gradient allreduce bucket size in MiB (overlapped with backward)")
    eval_every: int = doc(0, "every this many steps (and at the last), val_loss over the val split (in the "
                             "loss's unit); 0 = off")
    class_weights: str | list = doc("", "classes (tag, classify): weight each class's loss terms: \"balanced\" "
                                        "(n / (classes x count) on the train split), a list of one weight per "
                                        "class, or \"\" = equal weights")
    eval_batches: int = doc(0, "batches of data.batch_size val sequences per evaluation, in order; 0 = the whole val split")
    loss: str = doc("auto", "series: mse (one value per step) or quantile (one value per train.quantiles, the "
                            "pinball loss); auto = cross-entropy for tokens and classes, mse for values")
    quantiles: list = field(default_factory=lambda: [0.1, 0.5, 0.9], metadata={
        "doc": "with loss = quantile: the quantiles the head predicts, increasing, each between 0 and 1; the "
               "median (or the middle one) is the point forecast"})
    horizon: str | int = doc("auto", "series: at every step the head predicts the next this many steps (a direct "
                                     "multi-step head, scored on the steps inside the window); 1 = the next step "
                                     "only; auto = min(season, data.seq_len / 4) for a series stream with a "
                                     "season (a time column or prepare --season), else 1")
    precision: str = doc("float32", "float32, or bf16 (matmuls under autocast, weights, gradients, optimizer state, "
                                    "states and messages in float32; on a CPU only with native bf16: avx512_bf16 or "
                                    "amx_bf16), or fp16 (the same, loss scaled; CUDA only): docs/precision.md")


def steps_ahead(train: TrainConfig) -> int:
    """train.horizon as a number of steps. The training run resolves "auto" against its dataset's
    season before building anything (mpirnn/training/tasks.py); a model or loader built without a
    dataset (a benchmark, a test) knows no season, so "auto" is the next step only."""
    return 1 if train.horizon == "auto" else train.horizon


@dataclass
class CheckpointConfig:
    dir: str = doc("", "checkpoint directory; empty = no checkpoints")
    every: int = doc(0, "write a checkpoint every this many steps; 0 = only at the end and on signals")
    resume: bool = doc(False, "continue from the newest valid checkpoint in dir")
    keep: int = doc(3, "checkpoints of this run to keep (another run's are never deleted)")
    best_metric: str = doc("val_loss", "which val measure chooses the best checkpoint kept beside the newest: "
                                       "val_loss (lowest), or for tasks with classes val_accuracy or "
                                       "val_macro_f1 (highest)")
    overwrite: bool = doc(False, "start a fresh run in a dir holding another run's checkpoints; "
                                 "they are deleted once this run's first checkpoint is written")


@dataclass
class OutputConfig:
    run_name: str = doc("", "name of this run's folder runs/NAME; empty = the config file's name (or 'default') "
                            "and the start time")
    metrics: str = doc("", "metrics file (JSON Lines, rank 0), the resolved config beside it; "
                           "empty = runs/<run_name>/metrics.jsonl; loss: cross-entropy in nats per token "
                           "(tokens), mean squared error per normalized value (series)")
    log_every: int = doc(1, "write a metrics line every this many steps")
    progress: bool = doc(True, "progress bar on rank 0 (stderr)")
    sample_bytes: int = doc(300, "after training, print a sample of this many generated tokens (token data only)")
    sample_prompt: str = doc("def ", "prompt for the generated sample")
    trace: str = doc("", "a directory: write one Chrome/Perfetto trace JSON per rank (every unit's forward and "
                         "backward, MPI waits, the optimizer); empty = off")
    tensorboard: bool = doc(False, "also write the metrics as TensorBoard event files in runs/<run_name>/tensorboard/ "
                                   "(rank 0; pip install 'mpirnn[tensorboard]')")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self):
        # Not fields (so not in to_dict): which keys the user gave, and where the config came from.
        self.explicit: set[str] = set()
        self.origin = "default"
        self.branched_from: tuple[str, int] | None = None  # (run name, step) when resuming another run's checkpoints

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(where: str, value, kind):
    """Check a TOML value against a field's type; ints are accepted for floats."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and not isinstance(value, bool) or kind is not bool and isinstance(value, bool):
        raise ConfigError(f"{where} must be {kind.__name__}, got {value!r}")
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in typing.get_args(kind)) or kind.__name__
        raise ConfigError(f"{where} must be {names}, got {type(value).__name__} {value!r}")
    return value


def _apply(cfg: Config, table: dict, origin: str) -> None:
    sections = {f.name: f for f in dataclasses.fields(cfg)}
    for section, values in table.items():
        if section not in sections:
            raise ConfigError(f"{origin}: unknown section [{section}]{_suggest(section, sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table of keys")
        target = getattr(cfg, section)
        hints = typing.get_type_hints(type(target))
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(f"{origin}: unknown key {section}.{key}{_suggest(key, hints)}")
            setattr(target, key, _coerce(f"{origin}: {section}.{key}", value, hints[key]))
            cfg.explicit.add(f"{section}.{key}")


def config_from_dict(table: dict, origin: str = "checkpoint") -> Config:
    """A Config from a resolved config (the dict `to_dict` wrote, e.g. into a checkpoint's JSON).

    Keys this version does not know are refused (ConfigError); keys missing (an older
    checkpoint) keep their defaults. None of them counts as given by the user.
    """
    cfg = Config()
    _apply(cfg, {section: values for section, values in table.items()}, origin)
    if cfg.train.horizon == "auto":  # a run records the number it resolved; older runs had only next-step heads
        cfg.train.horizon = 1
    cfg.explicit.clear()
    check(cfg)
    return cfg


def apply_overrides(cfg: Config, overrides: typing.Sequence[str]) -> Config:
    """`--set section.key=value` overrides on an existing config (e.g. one read from a checkpoint)."""
    for text in overrides:
        _apply(cfg, parse_override(text), "--set")
    check(cfg)
    return cfg


def parse_override(text: str) -> dict:
    """`section.key=value` → {section: {key: value}}; value read as TOML, else a plain string."""
    name, sep, raw = text.partition("=")
    if not sep or name.count(".") != 1:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. train.steps=100")
    section, key = name.strip().split(".")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return {section: {key: value}}


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    cfg = Config()
    if path is not None:
        path = Path(path)
        try:
            table = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        _apply(cfg, table, str(path))
        cfg.origin = path.stem
    for text in overrides:
        _apply(cfg, parse_override(text), "--set")
    check(cfg)
    return cfg


def check(cfg: Config) -> None:
    """Value checks that need no MPI and no data (the grid is checked against the world later)."""
    m, d, p, t, c, o = cfg.model, cfg.data, cfg.parallel, cfg.train, cfg.checkpoint, cfg.output
    if m.cell not in CELLS:
        raise ConfigError(f"model.cell = {m.cell!r} is not a known cell{_suggest(m.cell, CELLS)}; choose one of {', '.join(CELLS)}")
    if m.dtype not in DTYPES:
        raise ConfigError(f"model.dtype = {m.dtype!r}: choose float32 or float64")
    if t.precision not in PRECISIONS:
        raise ConfigError(f"train.precision = {t.precision!r}: choose one of {', '.join(PRECISIONS)}"
                          f"{_suggest(t.precision, PRECISIONS)}")
    if t.precision != "float32" and m.dtype != "float32":
        raise ConfigError(f"train.precision = {t.precision} keeps float32 master weights: set model.dtype = float32")
    if t.precision == "fp16" and t.device == "cpu":
        raise ConfigError("train.precision = fp16 runs on CUDA only; on a CPU use bf16 (with native bf16) or float32")
    positive = {"model.hidden": m.hidden, "model.layers": m.layers, "model.embed": m.embed,
                "data.seq_len": d.seq_len, "data.batch_size": d.batch_size,
                "output.log_every": o.log_every, "checkpoint.keep": c.keep}
    non_negative = {"train.steps": t.steps, "parallel.microbatches": p.microbatches,
                    "checkpoint.every": c.every, "train.threads": t.threads,
                    "train.grad_clip": t.grad_clip, "parallel.chunks": p.chunks,
                    "output.sample_bytes": o.sample_bytes, "train.weight_decay": t.weight_decay,
                    "train.warmup_steps": t.warmup_steps, "train.min_lr": t.min_lr,
                    "train.eval_every": t.eval_every, "train.eval_batches": t.eval_batches}
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{name} = {value} must be positive")
    for name, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{name} = {value} must not be negative")
    if not t.lr > 0:
        raise ConfigError(f"train.lr = {t.lr} must be positive")
    if t.optimizer not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer = {t.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    if t.schedule not in SCHEDULES:
        raise ConfigError(f"train.schedule = {t.schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if t.min_lr > t.lr:
        raise ConfigError(f"train.min_lr = {t.min_lr} is above train.lr = {t.lr}: the cosine schedule decays "
                          f"from lr down to min_lr")
    if t.comm_timeout_s < 0 and t.comm_timeout_s != -1:
        raise ConfigError(f"train.comm_timeout_s = {t.comm_timeout_s}: use -1 (automatic), 0 (off) or seconds")
    if t.bucket_mb <= 0:
        raise ConfigError(f"train.bucket_mb = {t.bucket_mb} must be positive")
    for axis in ("dp", "sp", "pp", "tp"):
        value = getattr(p, axis)
        if value == 0 or value < -1:
            raise ConfigError(f"parallel.{axis} = {value}: use a positive degree, or -1 to infer it")
    if t.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device = {t.device!r}: choose auto, cpu or cuda")
    if isinstance(d.holdout, bool) or not isinstance(d.holdout, int) or d.holdout < 0:
        raise ConfigError(f"data.holdout = {d.holdout!r}: give a number of steps, 0 (train on every step) or more")
    if d.windows not in WINDOWS:
        raise ConfigError(f"data.windows = {d.windows!r}: choose one of {', '.join(WINDOWS)}")
    if d.windows == "every" and t.stateful:
        raise ConfigError("data.windows = every with train.stateful = true: a carried state needs each row to "
                          "continue where it stopped; use data.windows = cut (or auto)")
    if t.loss not in LOSSES:
        raise ConfigError(f"train.loss = {t.loss!r}: choose one of {', '.join(LOSSES)}{_suggest(t.loss, LOSSES)}")
    if not (t.quantiles and all(isinstance(q, float) and 0 < q < 1 for q in t.quantiles)
            and all(a < b for a, b in zip(t.quantiles, t.quantiles[1:]))):
        raise ConfigError(f"train.quantiles = {t.quantiles!r}: give increasing numbers between 0 and 1 (not "
                          f"included), e.g. [0.1, 0.5, 0.9]")
    if t.horizon != "auto" and not (isinstance(t.horizon, int) and 1 <= t.horizon <= d.seq_len):
        raise ConfigError(f"train.horizon = {t.horizon!r}: give \"auto\" or 1 to data.seq_len = {d.seq_len} "
                          f"steps ahead")
    if not 0 <= m.dropout < 1:
        raise ConfigError(f"model.dropout = {m.dropout}: give a probability from 0 up to (not including) 1")
    if d.lags != "auto" and not (isinstance(d.lags, list) and all(
            isinstance(lag, int) and not isinstance(lag, bool) and lag >= 1 for lag in d.lags)):
        raise ConfigError(f"data.lags = {d.lags!r}: give \"auto\" or a list of steps of 1 or more, e.g. [52]")
    if m.bidirectional and t.stateful:
        raise ConfigError("model.bidirectional = true with train.stateful = true: a reverse direction starts at each "
                          "row's end, so no state can carry into the next window; set one of them off")
    if not 0 <= t.max_skipped <= 1:
        raise ConfigError(f"train.max_skipped = {t.max_skipped}: give a share of the run's steps, from 0 to 1")
    if isinstance(t.class_weights, str) and t.class_weights not in ("", "balanced"):
        raise ConfigError(f"train.class_weights = {t.class_weights!r}: use \"balanced\", a list of one weight "
                          f"per class, or \"\" (equal weights)")
    if isinstance(t.class_weights, list) and not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in t.class_weights):
        raise ConfigError(f"train.class_weights = {t.class_weights!r}: the weights must be numbers >= 0")
    if d.bucket and t.stateful and "data.bucket" in cfg.explicit:
        raise ConfigError("data.bucket = true with train.stateful = true: bucketing regroups rows at every step, "
                          "while a carried state needs each row to continue where it stopped; set one of them off")
    if c.resume and not c.dir:
        raise ConfigError("checkpoint.resume = true needs checkpoint.dir")


def describe() -> str:
    """Every key with its default and doc, as TOML comments (python -m mpirnn.config)."""
    lines = []
    for section in dataclasses.fields(Config):
        lines.append(f"[{section.name}]")
        for f in dataclasses.fields(section.default_factory()):
            default = getattr(section.default_factory(), f.name)
            lines.append(f"{f.name} = {_toml(default):<22} # {f.metadata['doc']}")
        lines.append("")
    return "\n".join(lines)


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def cli() -> None:
    """`python -m mpirnn.config`, the console script `mpirnn-config`: every key, its default and its doc."""
    print(describe())


if __name__ == "__main__":
    cli()
