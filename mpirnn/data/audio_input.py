"""Prepare a classify dataset from a folder of WAV files, one class per sub-folder.

    DIR/yes/0a7c2a8d.wav, DIR/yes/0b09edd3.wav, DIR/no/..., ...   (speech-commands style)

Each file becomes one row of log-mel frames (audio_features.py); its class is its folder
(classes in sorted folder order unless --classes). Files are read with the standard
library's `wave` (PCM, 8 to 32 bits, channels averaged). Every file must share one sample
rate: mixed rates are refused (resample them first), as are files outside a class folder,
files that are not .wav, and empty class folders; hidden files (.DS_Store) are skipped.
`--val DIR2` gives the val split as a second folder of the same class folders (other
speakers, say), so the test is speaker-independent; without it the val split is a seeded,
stratified draw of the files (row_splits.py).
Try it: python -m mpirnn.data prepare --out /tmp/kws --audio speech_commands/ --mels 40
"""

from __future__ import annotations

import logging
import pathlib
import wave
from collections.abc import Sequence

import numpy as np

from mpirnn.data.audio_features import (DEFAULT_HOP_MS, DEFAULT_MELS, DEFAULT_WIN_MS,
                                         frame_settings, log_mel, mel_filterbank)
from mpirnn.data.labelled_npy import split_labelled
from mpirnn.data.labelled_rows import Rows, pad_rows, write_labelled
from mpirnn.data.manifest import TRAIN, Manifest
from mpirnn.data.row_splits import DEFAULT_SPLIT_SEED, split_record
from mpirnn.data.shard_writer import PathLike
from mpirnn.data.splits import DEFAULT_VAL_FRACTION, VAL, check_val_fraction
from mpirnn.data.tasks import TaskSpec
from mpirnn.errors import DataError

log = logging.getLogger("mpirnn.data")
_SCALE = {1: 128.0, 2: 32768.0, 4: 2147483648.0}


def prepare_audio(folder: PathLike, out: PathLike, *, val: PathLike | None = None,
                  mels: int = DEFAULT_MELS, hop_ms: float = DEFAULT_HOP_MS,
                  win_ms: float = DEFAULT_WIN_MS, classes: Sequence[str] | None = None,
                  val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = DEFAULT_SPLIT_SEED,
                  shard_size: int | None = None, force: bool = False) -> Manifest:
    """WAV files under class folders as rows of log-mel frames, task classify; `val`: a
    second folder of the same class folders, the val split (else a stratified draw)."""
    check_val_fraction(val_fraction)
    folder = pathlib.Path(folder)
    names, files = find_wavs(folder, classes)
    folders = [(folder, files)]
    if val is not None:
        val = pathlib.Path(val)
        folders.append((val, find_wavs(val, names, of=folder)[1]))
    rates = {path: _header(path, root)[0] for root, found in folders for path, _ in found}
    first = files[0][0]
    for root, found in folders:
        for path, _ in found:
            if rates[path] != rates[first]:
                raise DataError(f"{_shown(path, folder)} is {rates[path]} Hz but "
                                f"{_shown(first, folder)} is {rates[first]} Hz: resample the "
                                f"files to one rate first (e.g. sox in.wav -r {rates[first]} "
                                f"out.wav)")
    settings = frame_settings(rates[first], mels, hop_ms, win_ms)
    bank = mel_filterbank(rates[first], settings["n_fft"], mels)
    frames = [[log_mel(read_wav(path, root), settings, bank) for path, _ in found]
              for root, found in folders]
    seq_len = max(len(f) for part in frames for f in part)
    rows = []
    for (root, found), part in zip(folders, frames):
        inputs, lengths = pad_rows(part, seq_len, np.float32)
        rows.append(Rows(root.name, inputs, lengths, np.array([c for _, c in found], np.int64)))
    spec = TaskSpec("classify", names)
    lengths = np.concatenate([r.lengths for r in rows])
    count = sum(len(found) for _, found in folders)
    log.info(f"{' + '.join(root.name for root, _ in folders)}: {count} WAV files at "
             f"{rates[first]} Hz, {spec.describe()}; {mels} log-mel features every "
             f"{hop_ms:g} ms ({win_ms:g} ms windows), {lengths.min()}-{lengths.max()} frames")
    if val is not None:
        parts, record = {TRAIN: rows[0], VAL: rows[1]}, split_record("file", file=val.name)
        fraction = None
    else:
        parts, record = split_labelled(rows[0], spec, val_fraction, seed)
        fraction = float(val_fraction)
    return write_labelled(out, parts, spec, force=force, shard_size=shard_size,
                          columns=[f"mel_{j}" for j in range(mels)], audio=settings,
                          val_fraction=fraction, val_split=record,
                          source=f"audio: {' + '.join(root.name for root, _ in folders)}, "
                                 f"{count} WAV files in {len(names)} class folders")


def _shown(path: pathlib.Path, folder: pathlib.Path) -> pathlib.Path:
    """A file as named in messages: relative to the train folder when inside it."""
    return path.relative_to(folder) if path.is_relative_to(folder) else path


def find_wavs(folder: pathlib.Path, classes: Sequence[str] | None,
              of: pathlib.Path | None = None
              ) -> tuple[tuple[str, ...], list[tuple[pathlib.Path, int]]]:
    """(class names, [(file, class id)]) of a folder of class folders, sorted; `of`: the
    train folder whose classes (`classes`) a --val folder must have, no more, no fewer."""
    flag = "--audio" if of is None else "--val"
    if not folder.is_dir():
        raise DataError(f"{flag} {folder} is not a folder: give a folder of class folders "
                        f"(DIR/yes/*.wav, DIR/no/*.wav)")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    stray = [p for p in entries if not p.is_dir()]
    if stray:
        raise DataError(f"{stray[0]} is not in a class folder: put each WAV file in a "
                        f"sub-folder named after its class")
    found = {p.name: p for p in entries}
    if not found:
        raise DataError(f"{folder} holds no class folders: expected DIR/<class>/*.wav "
                        f"(speech-commands style)")
    names = tuple(classes) if classes is not None else tuple(found)
    if of is not None and set(found) != set(names):
        extra = sorted(set(found) - set(names))
        missing = sorted(set(names) - set(found))
        said = (f"has class folder {extra[0]!r}, which {of} lacks" if extra else
                f"lacks class folder {missing[0]!r} of {of}")
        raise DataError(f"--val {folder} {said}: the val folder must hold the same class "
                        f"folders as the train folder")
    unknown = sorted(set(found) - set(names)) or sorted(set(names) - set(found))
    if unknown:
        side = "is not named in --classes" if unknown[0] in found else "has no folder"
        raise DataError(f"class folder {unknown[0]!r} {side}: --classes must name every class "
                        f"folder of {folder}, each once")
    files = []
    for class_id, name in enumerate(names):
        inside = sorted(p for p in found[name].iterdir() if not p.name.startswith("."))
        for path in inside:
            if not path.is_file() or path.suffix.lower() != ".wav":
                raise DataError(f"{path} is not a WAV file (.wav): remove it; class folders "
                                f"hold WAV files only")
        if not inside:
            raise DataError(f"class folder {found[name]} holds no WAV files: add its recordings "
                            f"or remove the folder")
        files += [(path, class_id) for path in inside]
    return names, files


def _header(path: pathlib.Path, folder: pathlib.Path) -> tuple[int, int, int]:
    """(sample rate, channels, bytes per sample), or a DataError naming the file."""
    try:
        with wave.open(str(path), "rb") as w:
            return w.getframerate(), w.getnchannels(), w.getsampwidth()
    except (wave.Error, EOFError) as exc:
        raise DataError(f"{path.relative_to(folder)} is not a PCM WAV file ({exc}): convert it "
                        f"to 16-bit PCM (e.g. sox in.wav -b 16 -e signed out.wav)") from None


def read_wav(path: pathlib.Path, folder: pathlib.Path) -> np.ndarray:
    """The samples as float64 in [-1, 1], channels averaged."""
    _, channels, width = _header(path, folder)
    with wave.open(str(path), "rb") as w:
        raw = w.readframes(w.getnframes())
    if width == 3:   # 24-bit: widen each little-endian sample to 4 bytes
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        raw = np.concatenate([np.zeros((len(b), 1), np.uint8), b], axis=1).tobytes()
        width = 4
    dtype = {1: np.uint8, 2: "<i2", 4: "<i4"}[width]
    samples = np.frombuffer(raw, dtype).astype(np.float64)
    if width == 1:
        samples -= 128.0   # 8-bit WAV is unsigned
    samples = samples / _SCALE[width]
    return samples.reshape(-1, channels).mean(axis=1)
