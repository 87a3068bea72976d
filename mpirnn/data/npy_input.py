"""Prepare a dataset from a .npy array: tokens, a series, or [N, T, F] sequences.

The array is read through a memory map, block by block. Whether it is token ids or
numbers is the user's to say (--kind); left out, it is inferred as before (a 1-D integer
array is tokens, anything else numbers) and the choice is reported in one line.
Try it: python -m mpirnn.data prepare --out /tmp/ds --npy x.npy --kind series
"""

from __future__ import annotations

import logging
import pathlib

import numpy as np

from mpirnn.data.fill import FILL_HINT, GapFiller, check_fill
from mpirnn.data.manifest import Manifest
from mpirnn.data.shard_writer import PathLike, check_positive, claim_output
from mpirnn.data.splits import DEFAULT_VAL_FRACTION, SplitWriter, check_val_fraction, finish
from mpirnn.data.validate import first_outside, row_blocks
from mpirnn.errors import DataError

NPY_KINDS = ("tokens", "series")
log = logging.getLogger("mpirnn.data")


def prepare_npy(file: PathLike, out: PathLike, *, vocab_size: int | None = None,
                shard_size: int | None = None, force: bool = False,
                val_fraction: float = DEFAULT_VAL_FRACTION, fill: str | None = None,
                kind: str | None = None) -> Manifest:
    """A .npy array as tokens (1-D integer ids) or numbers: [n] or [n, F] -> series,
    [n, T, F] -> sequences. `kind` is "tokens", "series" (numbers) or None (infer).

    The last `val_fraction` of the steps (of the rows, for [n, T, F]) is the val split;
    `fill` (interpolate, ffill, drop) handles NaN in a series.
    """
    check_positive(shard_size=shard_size, vocab_size=vocab_size)
    check_val_fraction(val_fraction)
    check_fill(fill)
    file = pathlib.Path(file)
    array = load_npy(file)
    kind = choose_kind(file.name, array, kind)
    if vocab_size is not None and kind != "tokens":
        raise DataError(f"--vocab-size applies to tokens; {file.name} is prepared as numbers "
                        f"({array.ndim}-D {array.dtype}): drop --vocab-size")
    if fill is not None and (kind != "series" or array.ndim == 3):
        what = "token ids" if kind == "tokens" else "[N, T, F] rows"
        raise DataError(f"--fill applies to a series (a 1-D or 2-D array of numbers), not to "
                        f"{what}: fill the array before preparing, or drop --fill")
    if kind == "tokens":
        vocab_size = _token_vocab(file, array, vocab_size)
        dtype, row_shape, fields = ("uint8" if vocab_size <= 256 else "int32"), (), {
            "vocab_size": vocab_size}
        total = len(array)
    else:
        dtype = "float32"
        shape = array.shape if array.ndim > 1 else (array.shape[0], 1)
        kind = "sequences" if len(shape) == 3 else "series"
        row_shape = tuple(shape[1:])
        fields = {"features": shape[-1], "seq_len": shape[1] if kind == "sequences" else None}
        if 0 in row_shape:
            raise DataError(f"{file.name} has shape {list(array.shape)}: a row is empty")
        total = len(array) - (_rows_with_nan(array) if fill == "drop" else 0)
    writer = SplitWriter(pathlib.Path(out), kind, dtype, row_shape, total=total,
                         val_fraction=val_fraction, empty=f"{file.name} is empty: nothing "
                         f"to prepare", shard_size=shard_size,
                         attrs={"vocab_size": vocab_size} if kind == "tokens" else {})
    root = claim_output(out, force)   # after every refusal: an old dataset stays intact
    columns = [str(j) for j in range(row_shape[-1])] if row_shape else None
    filler = GapFiller(fill, columns) if fill else None
    with writer:
        for start, block in row_blocks(array):
            block = block.reshape(len(block), *row_shape)
            if dtype == "float32":
                with np.errstate(over="ignore"):   # overflow to Inf is reported just below
                    block = block.astype(np.float32)
                _check_finite(file, block, start, missing_ok=filler is not None)
            writer.write(block if filler is None else filler.feed(block))
        if filler is not None:
            writer.write(filler.finish())
    report = filler.report() if filler else None
    if report:
        log.info(f"{file.name}: {report.describe()}")
    return finish(root, writer, kind=kind, dtype=dtype, **fields, fill=report, columns=columns,
                  val_fraction=val_fraction,
                  source=f"npy: {file.name} shape {list(array.shape)} dtype {array.dtype}")


def choose_kind(name: str, array: np.ndarray, kind: str | None) -> str:
    """"tokens" or "series" (numbers: series or sequences by shape); refuses contradictions."""
    is_int = array.dtype.kind in "iu"
    described = f"{name} is a {array.ndim}-D {array.dtype} array"
    if kind is None:
        if is_int and array.ndim == 1:
            log.info(f"{described}: prepared as tokens (1-D integers are read as ids; pass "
                     f"--kind series to read them as numbers)")
            return "tokens"
        shape = "sequences [N, T, F]" if array.ndim == 3 else "a series"
        why = ("more than 1-D, so numbers, not ids" if is_int else
               "floats are numbers; token ids would be integers")
        log.info(f"{described}: prepared as {shape} ({why}; --kind series says so)")
        return "series"
    if kind not in NPY_KINDS:
        raise DataError(f"--kind {kind!r} is not one of {', '.join(NPY_KINDS)}")
    if kind == "tokens" and not is_int:
        raise DataError(f"--kind tokens: {described}, but token ids must be integers: use "
                        f"--kind series for numbers, or save the ids as integers "
                        f"(array.astype(np.int64))")
    if kind == "tokens" and array.ndim != 1:
        raise DataError(f"--kind tokens: {described}, but tokens are one 1-D stream of ids: "
                        f"flatten it (array.ravel()) or use --kind series")
    return kind


def _check_finite(file: pathlib.Path, block: np.ndarray, start: int, missing_ok: bool) -> None:
    """NaN is a missing value (allowed with --fill); Inf, or overflow to float32, never."""
    bad = ~np.isfinite(block)
    if missing_ok:
        bad &= ~np.isnan(block)
    if not bad.any():
        return
    index = tuple(map(int, np.unravel_index(int(np.flatnonzero(bad)[0]), block.shape)))
    where = ", ".join(map(str, (start + index[0], *index[1:])))
    if np.isnan(block[index]):
        hint = FILL_HINT if block.ndim == 2 else "fill or drop it before preparing"
        raise DataError(f"{file.name}: missing value (NaN) at index [{where}]: {hint}")
    raise DataError(f"{file.name}: non-finite value {block[index]} at index [{where}] (after "
                    f"conversion to float32): fix it")


def _rows_with_nan(array: np.ndarray) -> int:
    """Time steps that --fill drop removes (a NaN in any column)."""
    return sum(int(np.isnan(block.reshape(len(block), -1)).any(axis=1).sum())
               for _, block in row_blocks(array))


def load_npy(file: pathlib.Path) -> np.ndarray:
    if not file.is_file():
        raise DataError(f".npy file {file} does not exist: check --npy")
    with open(file, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        kind = "an .npz archive" if magic.startswith(b"PK") else "not a .npy file"
        raise DataError(f"{file} is {kind}: save one array with numpy.save(path, array)")
    try:
        array = np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{file} is not a plain numeric .npy array ({exc}): save one "
                        f"with numpy.save") from None
    if array.dtype.kind not in "iuf" or not 1 <= array.ndim <= 3:
        raise DataError(f"{file.name} is a {array.ndim}-D {array.dtype} array: expected "
                        f"1-D int tokens, or 1-D/2-D/3-D numbers ([n], [n, F], [n, T, F])")
    return array


def _token_vocab(file: pathlib.Path, array: np.ndarray, vocab_size: int | None) -> int:
    """The vocabulary size (max + 1 unless given), after checking every id fits it."""
    if vocab_size is not None and vocab_size > 2**31:
        raise DataError(f"--vocab-size {vocab_size} does not fit int32 token ids (max 2**31)")
    limit = vocab_size if vocab_size is not None else 2**31   # int32 on disk
    high = -1
    for start, block in row_blocks(array):
        if (i := first_outside(block, limit)) is not None:
            raise DataError(f"{file.name}: token id {int(block[i])} at index {start + i} is "
                            f"outside [0, {limit}): fix the ids or pass a larger --vocab-size")
        high = max(high, int(block.max()))
    return vocab_size if vocab_size is not None else high + 1
