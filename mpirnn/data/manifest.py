"""The manifest: the small JSON file that says what a prepared dataset holds.

Every rank loads it at start-up, so it is pure Python + json and never opens HDF5;
the shards themselves are checked by `mpirnn.data.validate`. The format is a contract
(DESIGN.md section 3); `python -m mpirnn.data info DIR` prints one.
"""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass

from mpirnn.errors import DataError

FORMAT = "mpirnn-hdf5"
VERSION = 1
MANIFEST_NAME = "manifest.json"
DATASET_NAME = "data"
KINDS = ("tokens", "series", "sequences")
STREAM_KINDS = ("tokens", "series")
DTYPES = {"tokens": ("uint8", "int32"), "series": ("float32",), "sequences": ("float32",)}
REQUIRED_KEYS = ("format", "version", "kind", "dataset", "dtype", "vocab_size", "features",
                 "length", "seq_len", "shards", "source")
PREPARE_HINT = "run python -m mpirnn.data prepare --out DIR ... to create one"


def shard_name(i: int) -> str:
    """The file name of shard `i`, e.g. shard-00003.h5."""
    return f"shard-{i:05d}.h5"


@dataclass(frozen=True)
class Shard:
    """One shard file and the rows [offset, offset + length) along axis 0 it holds."""

    file: str
    offset: int
    length: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A checked description of a dataset directory.

    Construction checks the fields agree with each other (kind vs dtype, shards tiling
    `[0, length)`), so holding a Manifest means those facts are true.
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

    def __post_init__(self) -> None:
        _check_fields(self)

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
        return (self.seq_len, self.features)

    def shard_path(self, i: int) -> pathlib.Path:
        """The path of shard `i`."""
        return self.root / self.shards[i].file

    def summary(self) -> str:
        """One line: kind, length, shape details, shard count, dtype."""
        unit = "rows" if self.kind == "sequences" else "steps"
        extra = {"tokens": f"vocab_size={self.vocab_size}",
                 "series": f"features={self.features}",
                 "sequences": f"seq_len={self.seq_len} features={self.features}"}[self.kind]
        return (f"{self.kind}: {self.length} {unit}, {extra}, {len(self.shards)} shard(s), "
                f"dtype {self.dtype}")

    def to_json(self) -> dict:
        """The manifest.json object (the on-disk contract)."""
        return {"format": FORMAT, "version": VERSION, "kind": self.kind,
                "dataset": self.dataset, "dtype": self.dtype, "vocab_size": self.vocab_size,
                "features": self.features, "length": self.length, "seq_len": self.seq_len,
                "shards": [{"file": s.file, "offset": s.offset, "length": s.length,
                            "sha256": s.sha256} for s in self.shards],
                "source": self.source}


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
              "sequences": ("features", "seq_len")}[m.kind]
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


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read and check DIR/manifest.json (or the manifest file itself); no HDF5 access."""
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
    manifest = _from_json(root, obj, file)
    for s in manifest.shards:
        if not (root / s.file).is_file():
            raise DataError(f"{root / s.file} is listed in {MANIFEST_NAME} but missing: "
                            f"restore it or re-run prepare")
    return manifest


def _from_json(root: pathlib.Path, obj: object, file: pathlib.Path) -> Manifest:
    """Build a Manifest from parsed JSON, with a clear error for each malformed field."""
    if not isinstance(obj, dict):
        raise DataError(f"{file}: expected a JSON object: re-run prepare")
    if obj.get("format") != FORMAT:
        raise DataError(f"{file}: format is {obj.get('format')!r}, expected {FORMAT!r}: "
                        f"this is not an mpirnn dataset; re-run prepare")
    if obj.get("version") != VERSION:
        raise DataError(f"{file}: version {obj.get('version')!r} is not supported (this "
                        f"mpirnn reads version {VERSION}): re-run prepare")
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

    def text(name: str, value: object) -> str:
        if not isinstance(value, str):
            raise DataError(f"{file}: {name} must be a string, got {value!r}: re-run prepare")
        return value

    if not isinstance(obj["shards"], list):
        raise DataError(f"{file}: shards must be a list: re-run prepare")
    shards = []
    for j, s in enumerate(obj["shards"]):
        if not isinstance(s, dict) or any(k not in s for k in ("file", "offset", "length",
                                                                "sha256")):
            raise DataError(f"{file}: shards[{j}] must have file, offset, length, sha256: "
                            f"re-run prepare")
        shards.append(Shard(text("file", s["file"]), integer("offset", s["offset"]),
                            integer("length", s["length"]), text("sha256", s["sha256"])))
    return Manifest(root=root, kind=text("kind", obj["kind"]), dtype=text("dtype", obj["dtype"]),
                    vocab_size=integer("vocab_size", obj["vocab_size"], optional=True),
                    features=integer("features", obj["features"], optional=True),
                    length=integer("length", obj["length"]),
                    seq_len=integer("seq_len", obj["seq_len"], optional=True),
                    shards=tuple(shards), source=text("source", obj["source"]),
                    dataset=text("dataset", obj["dataset"]))


def write_manifest(manifest: Manifest) -> pathlib.Path:
    """Write manifest.json into manifest.root atomically (temp file, then os.replace).

    prepare calls this last, so a dataset directory only ever holds a complete manifest
    describing shards that were fully written and validated.
    """
    target = manifest.root / MANIFEST_NAME
    tmp = manifest.root / f".{MANIFEST_NAME}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest.to_json(), f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    return target
