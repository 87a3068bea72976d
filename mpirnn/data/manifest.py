"""The manifest: the small JSON file that says what a prepared dataset holds.

Every rank loads it at start-up, so it needs only json (and numpy) and never opens HDF5;
the shards themselves are checked by `mpirnn.data.validate`. The format is a contract,
described field by field in docs/data.md; `python -m mpirnn.data info DIR` prints one.

Version 2 added, all optional when reading: each shard's `bytes` and `fingerprint`,
held-out `splits` (the top-level `length` and `shards` stay the train split, as in
version 1), `val_fraction`, `normalization` and `fill`. Version 3 added labelled rows of
different lengths (docs/tasks.md): the kind `token_sequences`, `task`, `classes`, `targets`,
`target_normalization`, `label_fill`, `alphabet`, `audio` and `val_split`. Prepare writes
version 3 only for such datasets, so every other dataset stays readable by an older mpirnn.
Versions 1 and 2 still load (their task is `next`). Version 2 may hold a series' `time` axis and
`season` (time_axis.py), absent otherwise; an older mpirnn reads the data and ignores them.
"""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass

from mpirnn.data.fill import FillReport, fill_report_from_json
from mpirnn.data.normalization import Normalization, normalization_from_json
from mpirnn.data.tasks import TaskSpec, task_from_json
from mpirnn.data.time_axis import TimeAxis, time_axis_from_json
from mpirnn.errors import DataError

FORMAT = "mpirnn-hdf5"
VERSION = 3            # the newest version this mpirnn reads
UNLABELLED_VERSION = 2  # what prepare still writes for streams and unlabelled rows
MANIFEST_NAME = "manifest.json"
DATASET_NAME = "data"
# Labelled rows add, in every shard: true lengths, labels, each row's position in the input.
LENGTHS, LABELS, INPUT_ROW = "lengths", "labels", "input_row"
KINDS = ("tokens", "series", "sequences", "token_sequences")
STREAM_KINDS = ("tokens", "series")
ROW_KINDS = ("sequences", "token_sequences")
TOKEN_KINDS = ("tokens", "token_sequences")
DTYPES = {"tokens": ("uint8", "int32"), "series": ("float32",), "sequences": ("float32",),
          "token_sequences": ("uint8", "int32")}
REQUIRED_KEYS = ("format", "version", "kind", "dataset", "dtype", "vocab_size", "features",
                 "length", "seq_len", "shards", "source")
PREPARE_HINT = "run python -m mpirnn.data prepare --out DIR ... to create one"
TRAIN = "train"
# Each split's shard files: shard-00000.h5 ... for train (as in version 1), val-00000.h5 ...
SHARD_PREFIX = {TRAIN: "shard", "val": "val"}


def shard_name(i: int, split: str = TRAIN) -> str:
    """The file name of shard `i` of a split, e.g. shard-00003.h5 or val-00000.h5."""
    return f"{SHARD_PREFIX[split]}-{i:05d}.h5"


@dataclass(frozen=True)
class Shard:
    """One shard file and the rows [offset, offset + length) along axis 0 it holds.

    bytes and fingerprint are None in a version-1 manifest (see fingerprint.py).
    """

    file: str
    offset: int
    length: int
    sha256: str
    bytes: int | None = None
    fingerprint: str | None = None

    def to_json(self) -> dict:
        obj = {"file": self.file, "offset": self.offset, "length": self.length,
               "sha256": self.sha256}
        if self.bytes is not None:
            obj["bytes"] = self.bytes
        if self.fingerprint is not None:
            obj["fingerprint"] = self.fingerprint
        return obj


@dataclass(frozen=True)
class Manifest:
    """A checked description of one split of a dataset directory (train unless told).

    Construction checks the fields agree with each other (kind vs dtype, shards tiling
    `[0, length)`), so holding a Manifest means those facts are true. Every split has
    its own shards and length; the other fields are the dataset's, shared by all splits
    (normalization holds the train split's statistics, for every split).
    """

    root: pathlib.Path
    kind: str
    dtype: str
    vocab_size: int | None
    features: int | None
    length: int
    seq_len: int | None
    shards: tuple[Shard, ...]
    source: str
    dataset: str = DATASET_NAME
    split: str = TRAIN
    splits: tuple[str, ...] = (TRAIN,)
    val_fraction: float | None = None
    normalization: Normalization | None = None
    fill: FillReport | None = None
    task_spec: TaskSpec = TaskSpec()
    alphabet: str | None = None      # FASTA tokens: the letters, in id order
    audio: dict | None = None        # audio: the log-mel settings (audio_features.py)
    val_split: dict | None = None    # labelled rows: how the val split was chosen (row_splits.py)
    time: TimeAxis | None = None     # series with a time column: start and frequency (time_axis.py)
    season: int | None = None        # the season in steps (prepare --season, or the frequency's)

    def __post_init__(self) -> None:
        _check_fields(self)

    def normalize(self, values):
        """Data units -> what the Reader returns: (x - mean) / std per column, if recorded."""
        return values if self.normalization is None else self.normalization.normalize(values)

    def denormalize(self, values):
        """What the model sees -> data units: x * std + mean per column (last dim), if recorded.

        Works on numpy arrays (float64 out) and torch tensors (dtype and device kept);
        identity for tokens and for datasets prepared without normalization.
        """
        return values if self.normalization is None else self.normalization.denormalize(values)

    @property
    def task(self) -> str:
        """next, tag, classify or regress (docs/tasks.md)."""
        return self.task_spec.task

    @property
    def classes(self) -> tuple[str, ...] | None:
        """The class names in id order (tag, classify), else None."""
        return self.task_spec.classes

    @property
    def is_tokens(self) -> bool:
        """True when the inputs are token ids (a stream or rows)."""
        return self.kind in TOKEN_KINDS

    @property
    def has_lengths(self) -> bool:
        """True for rows stored with their true lengths: every labelled dataset, and token
        rows (FASTA) of any task. Their shards hold `lengths` (and `labels` if labelled)."""
        return self.task_spec.labelled or self.kind == "token_sequences"

    @property
    def is_stream(self) -> bool:
        """True for one long stream (tokens, series) the trainer cuts into windows."""
        return self.kind in STREAM_KINDS

    @property
    def row_shape(self) -> tuple[int, ...]:
        """The shape of one element along axis 0: () tokens, (F,) series, (T, F) sequences."""
        if self.kind == "tokens":
            return ()
        if self.kind == "series":
            return (self.features,)
        if self.kind == "token_sequences":
            return (self.seq_len,)
        return (self.seq_len, self.features)

    def shard_path(self, i: int) -> pathlib.Path:
        """The path of shard `i`."""
        return self.root / self.shards[i].file

    def summary(self) -> str:
        """One line: kind, length, shape details, shard count, dtype."""
        unit = "steps" if self.is_stream else "rows"
        extra = {"tokens": f"vocab_size={self.vocab_size}",
                 "series": f"features={self.features}",
                 "sequences": f"seq_len={self.seq_len} features={self.features}",
                 "token_sequences": f"seq_len={self.seq_len} vocab_size={self.vocab_size}"
                 }[self.kind]
        return (f"{self.kind}: {self.length} {unit}, {extra}, {len(self.shards)} shard(s), "
                f"dtype {self.dtype}")

    def to_json(self, *held_out: Manifest) -> dict:
        """The manifest.json object (the on-disk contract): this split as the train split,
        `held_out` (e.g. the val split) under "splits". Labelled datasets add the version-3
        fields; the others are written exactly as version 2."""
        labelled = self.has_lengths
        obj = {"format": FORMAT, "version": VERSION if labelled else UNLABELLED_VERSION,
               "kind": self.kind,
                "dataset": self.dataset, "dtype": self.dtype, "vocab_size": self.vocab_size,
                "features": self.features, "length": self.length, "seq_len": self.seq_len,
                "shards": [s.to_json() for s in self.shards], "source": self.source,
                "val_fraction": self.val_fraction,
                "normalization": self.normalization and self.normalization.to_json(),
                "fill": self.fill and self.fill.to_json(),
                "splits": {m.split: {"length": m.length, "shards": [s.to_json() for s in m.shards]}
                           for m in held_out}}
        if self.time is not None or self.season is not None:   # absent otherwise: version 2 unchanged
            obj.update(time=self.time and self.time.to_json(), season=self.season)
        if labelled:
            obj.update(self.task_spec.to_json(), alphabet=self.alphabet, audio=self.audio,
                       val_split=self.val_split)
        return obj


def _check_fields(m: Manifest) -> None:
    """Raise DataError unless the manifest's fields describe a usable dataset."""
    where = f"{m.root / MANIFEST_NAME}"
    fix = "re-run python -m mpirnn.data prepare"
    if m.kind not in KINDS:
        raise DataError(f"{where}: unknown kind {m.kind!r} (expected one of "
                        f"{', '.join(KINDS)}): {fix}")
    if m.dtype not in DTYPES[m.kind]:
        raise DataError(f"{where}: dtype {m.dtype!r} is not allowed for kind {m.kind!r} "
                        f"(expected {' or '.join(DTYPES[m.kind])}): {fix}")
    _check_kind_fields(m, where, fix)
    if m.split not in m.splits or m.splits[0] != TRAIN or len(set(m.splits)) != len(m.splits):
        raise DataError(f"{where}: split {m.split!r} is not among the splits {list(m.splits)}: "
                        f"{fix}")
    if m.task_spec.labelled and m.kind not in ROW_KINDS:
        raise DataError(f"{where}: task {m.task!r} needs rows (kind sequences or "
                        f"token_sequences), not kind {m.kind!r}: {fix}")
    if m.alphabet is not None and (m.kind not in TOKEN_KINDS or len(m.alphabet) != m.vocab_size):
        raise DataError(f"{where}: alphabet {m.alphabet!r} does not match kind {m.kind!r} with "
                        f"vocab_size={m.vocab_size}: {fix}")
    if m.normalization is not None and (m.is_tokens
                                        or len(m.normalization.mean) != m.features):
        raise DataError(f"{where}: normalization does not match kind {m.kind!r} with "
                        f"features={m.features}: {fix}")
    if m.length == 0 or not m.shards:
        raise DataError(f"{where}: empty dataset (length {m.length}, {len(m.shards)} shards): "
                        f"prepare it again from non-empty input")
    expected = 0
    for s in m.shards:
        if s.offset != expected or s.length <= 0:
            raise DataError(f"{where}: shards do not tile [0, {m.length}): {s.file} has "
                            f"offset {s.offset} length {s.length}, expected offset "
                            f"{expected} and length > 0: {fix}")
        if os.path.basename(s.file) != s.file or not s.file:
            raise DataError(f"{where}: shard file {s.file!r} must be a plain file name "
                            f"inside the dataset directory: {fix}")
        expected += s.length
    if expected != m.length:
        raise DataError(f"{where}: shards hold {expected} rows but length is {m.length}: {fix}")


def _check_kind_fields(m: Manifest, where: str, fix: str) -> None:
    """vocab_size / features / seq_len present exactly where the kind needs them."""
    wanted = {"tokens": ("vocab_size",), "series": ("features",),
              "sequences": ("features", "seq_len"),
              "token_sequences": ("vocab_size", "seq_len")}[m.kind]
    for name in ("vocab_size", "features", "seq_len"):
        value = getattr(m, name)
        if name in wanted and (value is None or value <= 0):
            raise DataError(f"{where}: {name} must be a positive integer for kind "
                            f"{m.kind!r}, got {value!r}: {fix}")
        if name not in wanted and value is not None:
            raise DataError(f"{where}: {name} must be null for kind {m.kind!r}, "
                            f"got {value!r}: {fix}")
    if m.dtype == "uint8" and m.vocab_size > 256:
        raise DataError(f"{where}: vocab_size {m.vocab_size} does not fit dtype uint8: {fix}")


def load_manifest(path: str | os.PathLike, split: str = TRAIN) -> Manifest:
    """Read and check DIR/manifest.json (or the manifest file itself); no HDF5 access.

    Returns the train split unless `split` names another one (e.g. "val"); every split
    present is listed in `.splits`.
    """
    path = pathlib.Path(path)
    root = path.parent if path.name == MANIFEST_NAME and path.is_file() else path
    if not root.exists():
        raise DataError(f"dataset directory {root} does not exist: {PREPARE_HINT}")
    if not root.is_dir():
        raise DataError(f"{root} is not a directory: a dataset is a directory with "
                        f"{MANIFEST_NAME} and shard files")
    file = root / MANIFEST_NAME
    if not file.is_file():
        raise DataError(f"{root} has no {MANIFEST_NAME} (not a prepared dataset, or an "
                        f"interrupted prepare): {PREPARE_HINT.replace('DIR', str(root))}")
    try:
        obj = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{file} is not valid JSON ({exc}): re-run prepare") from None
    manifest = _from_json(root, obj, file, split)
    for s in manifest.shards:
        if not (root / s.file).is_file():
            raise DataError(f"{root / s.file} is listed in {MANIFEST_NAME} but missing: "
                            f"restore it or re-run prepare")
    return manifest


def _check_version(obj: dict, file: pathlib.Path) -> None:
    """Older versions are read; a newer one needs a newer mpirnn, not a new prepare."""
    version = obj.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DataError(f"{file}: version {version!r} is not a manifest version (this mpirnn "
                        f"reads 1 to {VERSION}): re-run prepare")
    if version > VERSION:
        raise DataError(f"{file}: version {version} is newer than this mpirnn reads (1 to "
                        f"{VERSION}): upgrade mpirnn to use this dataset (pip install -U "
                        f"mpirnn, or update your checkout)")


def _from_json(root: pathlib.Path, obj: object, file: pathlib.Path, split: str) -> Manifest:
    """Build a Manifest from parsed JSON, with a clear error for each malformed field."""
    if not isinstance(obj, dict):
        raise DataError(f"{file}: expected a JSON object: re-run prepare")
    if obj.get("format") != FORMAT:
        raise DataError(f"{file}: format is {obj.get('format')!r}, expected {FORMAT!r}: "
                        f"this is not an mpirnn dataset; re-run prepare")
    _check_version(obj, file)
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise DataError(f"{file}: missing key(s) {', '.join(missing)}: re-run prepare")

    def integer(name: str, value: object, optional: bool = False) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DataError(f"{file}: {name} must be a non-negative integer"
                            f"{' or null' if optional else ''}, got {value!r}: re-run prepare")
        return value

    def text(name: str, value: object, optional: bool = False) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise DataError(f"{file}: {name} must be a string, got {value!r}: re-run prepare")
        return value

    def shards_of(where: str, value: object) -> tuple[Shard, ...]:
        if not isinstance(value, list):
            raise DataError(f"{file}: {where} must be a list: re-run prepare")
        shards = []
        for j, s in enumerate(value):
            if not isinstance(s, dict) or any(k not in s for k in ("file", "offset", "length",
                                                                    "sha256")):
                raise DataError(f"{file}: {where}[{j}] must have file, offset, length, sha256: "
                                f"re-run prepare")
            shards.append(Shard(text("file", s["file"]), integer("offset", s["offset"]),
                                integer("length", s["length"]), text("sha256", s["sha256"]),
                                integer("bytes", s.get("bytes"), optional=True),
                                text("fingerprint", s.get("fingerprint"), optional=True)))
        return tuple(shards)

    held_out = obj.get("splits") or {}
    if not isinstance(held_out, dict) or TRAIN in held_out or not all(
            isinstance(v, dict) and {"length", "shards"} <= set(v) for v in held_out.values()):
        raise DataError(f"{file}: splits must map split names other than {TRAIN!r} to "
                        f"{{length, shards}}: re-run prepare")
    names = (TRAIN, *held_out)
    if split not in names:
        raise DataError(f"{root} has no {split!r} split (it holds: {', '.join(names)}): "
                        f"prepare it with --val-fraction F (e.g. 0.1) to hold out a val split")
    part = obj if split == TRAIN else held_out[split]
    time = time_axis_from_json(obj.get("time"), str(file))
    if time is not None and split != TRAIN:   # a held-out split follows the train split in time
        time = time.shifted(obj["length"])
    features = integer("features", obj["features"], optional=True)
    extras = {}
    for name, kind in (("alphabet", str), ("audio", dict), ("val_split", dict)):
        value = obj.get(name)
        if value is not None and not isinstance(value, kind):
            raise DataError(f"{file}: {name} must be a {'string' if kind is str else 'JSON object'}"
                            f" or null, got {value!r}: re-run prepare")
        extras[name] = value
    val_fraction = obj.get("val_fraction")
    if val_fraction is not None and (isinstance(val_fraction, bool) or not isinstance(
            val_fraction, (int, float)) or not 0 <= val_fraction < 1):
        raise DataError(f"{file}: val_fraction must be a number in [0, 1) or null, got "
                        f"{val_fraction!r}: re-run prepare")
    return Manifest(root=root, kind=text("kind", obj["kind"]), dtype=text("dtype", obj["dtype"]),
                    vocab_size=integer("vocab_size", obj["vocab_size"], optional=True),
                    features=features, length=integer("length", part["length"]),
                    seq_len=integer("seq_len", obj["seq_len"], optional=True),
                    shards=shards_of(f"{'' if split == TRAIN else f'splits.{split}.'}shards",
                                     part["shards"]),
                    source=text("source", obj["source"]), dataset=text("dataset", obj["dataset"]),
                    split=split, splits=names,
                    val_fraction=None if val_fraction is None else float(val_fraction),
                    normalization=normalization_from_json(obj.get("normalization"),
                                                          features or 0, str(file)),
                    fill=fill_report_from_json(obj.get("fill"), str(file)),
                    task_spec=task_from_json(obj, str(file)), time=time,
                    season=integer("season", obj.get("season"), optional=True), **extras)


def write_manifest(train: Manifest, *held_out: Manifest) -> pathlib.Path:
    """Write manifest.json into train.root atomically (temp file, then os.replace).

    `held_out` are the other splits (e.g. val), written under "splits". prepare calls
    this last, so a dataset directory only ever holds a complete manifest describing
    shards that were fully written and validated.
    """
    if train.split != TRAIN or tuple(m.split for m in (train, *held_out)) != train.splits:
        raise ValueError(f"write_manifest needs the splits {train.splits} in order, train first")
    target = train.root / MANIFEST_NAME
    tmp = train.root / f".{MANIFEST_NAME}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(train.to_json(*held_out), f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    return target
