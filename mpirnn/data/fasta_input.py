"""Prepare labelled DNA/RNA/protein rows from FASTA: token ids, and labels from a second file.

    --labels labels.csv     `id,label` lines (a header `id,label` is optional): one label
                            per record -> classify (text labels), or regress (numbers that
                            are not all whole; --task regress for any numbers)
    --labels labels.fasta   a FASTA file of label letters, same ids and lengths -> tag
                            (each letter a class: secondary structure H/E/C, exon/intron ...)
    no --labels             task next: the records as token rows with their lengths (a
                            next-letter model; the trainer cannot train it yet)

Every record needs a label and every label a record; either missing is refused by id.
Try it: python -m mpirnn.data prepare --out /tmp/promoters --fasta seqs.fa --labels y.csv
"""

from __future__ import annotations

import csv
import logging
import pathlib
from collections.abc import Sequence

import numpy as np

from mpirnn.data.fasta_format import Record, choose_alphabet, is_fasta, read_fasta, token_ids
from mpirnn.data.labelled_npy import split_labelled
from mpirnn.data.labelled_rows import Rows, pad_rows, write_labelled
from mpirnn.data.labels import class_ids, regression_targets, step_mask
from mpirnn.data.manifest import Manifest
from mpirnn.data.row_splits import DEFAULT_SPLIT_SEED
from mpirnn.data.shard_writer import PathLike
from mpirnn.data.splits import DEFAULT_VAL_FRACTION, check_val_fraction
from mpirnn.data.tasks import LABEL_FILL, TaskSpec
from mpirnn.errors import DataError

log = logging.getLogger("mpirnn.data")


def prepare_fasta(file: PathLike, out: PathLike, *, labels: PathLike | None = None,
                  alphabet: str | None = None, task: str | None = None,
                  classes: Sequence[str] | None = None,
                  val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = DEFAULT_SPLIT_SEED,
                  shard_size: int | None = None, force: bool = False) -> Manifest:
    """FASTA records as token rows with per-record (CSV) or per-letter (FASTA) labels, or
    without labels (task next)."""
    check_val_fraction(val_fraction)
    file = pathlib.Path(file)
    labels = None if labels is None else pathlib.Path(labels)
    if labels is None and (task or classes):
        raise DataError("--task and --classes describe labels: give --labels too")
    records = read_fasta(file)
    letters = choose_alphabet(file.name, records, alphabet)
    inputs, lengths = pad_rows([token_ids(r, letters) for r in records],
                               max(len(r.letters) for r in records), np.int64)
    if labels is None:
        encoded, spec = None, TaskSpec("next")
    elif is_fasta(labels):
        encoded, spec = _step_labels(file.name, records, labels, lengths, classes, task)
    else:
        encoded, spec = _record_labels(file.name, records, labels, classes, task)
    log.info(f"{file.name if labels is None else labels.name}: {spec.describe()}")
    rows = Rows(file.name, inputs, lengths, encoded)
    parts, record = split_labelled(rows, spec, val_fraction, seed)
    return write_labelled(out, parts, spec, force=force, shard_size=shard_size,
                          vocab_size=len(letters), alphabet=letters,
                          val_fraction=float(val_fraction), val_split=record,
                          source=f"fasta: {file.name}, {len(records)} records, lengths "
                                 f"{lengths.min()}-{lengths.max()}, "
                                 f"{'no labels' if labels is None else f'labels {labels.name}'}")


def _record_labels(name: str, records: list[Record], path: pathlib.Path,
                   classes: Sequence[str] | None, task: str | None
                   ) -> tuple[np.ndarray, TaskSpec]:
    """One label per record from an `id,label` CSV."""
    by_id = _read_label_csv(path, {r.id for r in records}, name)
    missing = [r.id for r in records if r.id not in by_id]
    if missing:
        raise DataError(f"record {missing[0]!r} of {name} has no label in {path.name}"
                        f"{f' ({len(missing)} records have none)' if len(missing) > 1 else ''}: "
                        f"give every record a line id,label")
    texts = [by_id[r.id] for r in records]
    if task not in (None, "classify", "regress"):
        raise DataError(f"--task {task}: {path.name} gives one label per record (classify or "
                        f"regress); per-step labels (tag) come as a FASTA file of label letters")
    numbers = _as_numbers(texts)
    if task == "regress" or (task is None and classes is None and numbers is not None
                             and not (numbers == np.round(numbers)).all()):
        if numbers is None:
            raise DataError(f"--task regress: {path.name} holds labels that are not numbers")
        if classes is not None:
            raise DataError("--classes names class labels; regression targets have none: "
                            "drop --classes")
        targets = regression_targets(numbers, path.name)
        return targets, TaskSpec("regress", targets=1)
    ids, names = class_ids(np.array(texts, dtype=str), path.name, classes=classes)
    return ids, TaskSpec("classify", names)


def _step_labels(name: str, records: list[Record], path: pathlib.Path, lengths: np.ndarray,
                 classes: Sequence[str] | None, task: str | None
                 ) -> tuple[np.ndarray, TaskSpec]:
    """One label letter per sequence letter, from a FASTA file with the same ids."""
    if task not in (None, "tag"):
        raise DataError(f"--task {task}: {path.name} is a FASTA file of per-step labels (task "
                        f"tag); give per-record labels as a CSV id,label")
    by_id = {r.id: r for r in read_fasta(path, upper=False)}
    ids = {r.id for r in records}
    for label in by_id.values():
        if label.id not in ids:
            raise DataError(f"{path.name} line {label.line}: id {label.id!r} is not a record of "
                            f"{name}")
    grid = np.full((len(records), lengths.max()), "", dtype="<U1")
    for i, record in enumerate(records):
        label = by_id.get(record.id)
        if label is None:
            raise DataError(f"record {record.id!r} of {name} has no labels in {path.name}: give "
                            f"every record a label record with the same id")
        if len(label.letters) != len(record.letters):
            raise DataError(f"record {record.id!r}: {len(label.letters)} label letters in "
                            f"{path.name} for {len(record.letters)} letters in {name}: one "
                            f"label per letter")
        grid[i, :len(label.letters)] = list(label.letters)
    encoded, names = class_ids(grid, path.name, step_mask(lengths, grid.shape[1]), classes)
    return encoded, TaskSpec("tag", names, label_fill=LABEL_FILL)


def _read_label_csv(path: pathlib.Path, ids: set[str], name: str) -> dict[str, str]:
    """{id: label} from `id,label` lines; ids not in the FASTA and repeats are refused."""
    if not path.is_file():
        raise DataError(f"labels file {path} does not exist: check --labels")
    labels: dict[str, str] = {}
    lines: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                if not row or not "".join(row).strip():
                    continue
                cells = [c.strip() for c in row]
                if reader.line_num == 1 and [c.lower() for c in cells] == ["id", "label"]:
                    continue   # the header
                where = f"{path.name} line {reader.line_num}"
                if len(cells) != 2 or not cells[0] or not cells[1]:
                    raise DataError(f"{where}: expected two fields id,label, got {row!r}")
                ident, label = cells
                if ident not in ids:
                    raise DataError(f"{where}: id {ident!r} is not a record of {name}")
                if ident in labels:
                    raise DataError(f"{where}: id {ident!r} already has a label (line "
                                    f"{lines[ident]}): one label per record")
                labels[ident], lines[ident] = label, reader.line_num
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc}): fix the file") from None
    return labels


def _as_numbers(texts: list[str]) -> np.ndarray | None:
    """The labels as float64 if every one is a number, else None."""
    try:
        return np.array([float(t) for t in texts], np.float64)
    except ValueError:
        return None
