"""Text corpora: files and directories as a byte-level token stream (vocab 256).

Also the demo corpus, the Python standard library's own source, so `make demo` needs no
download; the same Python install always gives the same bytes (files sorted by path).
Try it: python -m mpirnn.data prepare --stdlib --out data/stdlib
"""

from __future__ import annotations

import os
import pathlib
import sys
import sysconfig
from collections.abc import Iterator, Sequence

import numpy as np

from mpirnn.data.manifest import Manifest
from mpirnn.data.shard_writer import PathLike, check_positive, claim_output
from mpirnn.data.splits import DEFAULT_VAL_FRACTION, SplitWriter, check_val_fraction, finish
from mpirnn.errors import DataError

READ_BYTES = 1 << 20
# Tests are skipped (huge, repetitive, and some files are deliberately malformed);
# installed packages are not the standard library; idlelib is GUI code, kept out for balance.
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib",
                       "__pycache__"})


def text_files(paths: Sequence[PathLike], suffixes: Sequence[str] | None = None
               ) -> list[pathlib.Path]:
    """Files named directly, plus files under named directories (recursive, sorted).

    `suffixes` filters files found in directories; hidden files and directories
    (.git and the like) are skipped there. Files named directly are always taken.
    """
    found: list[pathlib.Path] = []
    for p in map(pathlib.Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found.extend(_walk(p, suffixes))
        else:
            raise DataError(f"text input {p} does not exist: check the path")
    if not found:
        wanted = f" with suffix {', '.join(suffixes)}" if suffixes else ""
        raise DataError(f"no files{wanted} found under {', '.join(map(str, paths))}: "
                        f"check the paths and --suffix")
    return found


def _walk(top: pathlib.Path, suffixes: Sequence[str] | None,
          skip_dirs: frozenset[str] = frozenset()) -> list[pathlib.Path]:
    """Non-hidden files under `top`, sorted by relative path so the order is reproducible."""
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in skip_dirs]
        found.extend(pathlib.Path(dirpath) / name for name in filenames
                     if not name.startswith(".")
                     and (not suffixes or name.endswith(tuple(suffixes))))
    return sorted(found, key=lambda f: f.relative_to(top).as_posix())


def prepare_text(paths: Sequence[PathLike], out: PathLike, *, shard_size: int | None = None,
                 max_bytes: int | None = None, suffixes: Sequence[str] | None = None,
                 force: bool = False, source: str | None = None,
                 val_fraction: float = DEFAULT_VAL_FRACTION) -> Manifest:
    """Concatenate the bytes of text files into a uint8 token stream (vocab 256); its
    last `val_fraction` of bytes is the val split."""
    check_positive(shard_size=shard_size, max_bytes=max_bytes)
    check_val_fraction(val_fraction)
    paths = list(paths)
    files = text_files(paths, suffixes)
    names = ", ".join(map(str, paths[:3])) + (f" and {len(paths) - 3} more" if len(paths) > 3
                                              else "")
    # The sizes fix the val split's start before any byte is written.
    planned = sum(_size(path) for path in files)
    planned = planned if max_bytes is None else min(planned, max_bytes)
    writer = SplitWriter(pathlib.Path(out), "tokens", "uint8", (), total=planned,
                         val_fraction=val_fraction, shard_size=shard_size,
                         attrs={"vocab_size": 256},
                         empty=f"the text input ({names}) is empty: nothing to prepare")
    root = claim_output(out, force)
    used = total = 0
    with writer:
        for path in files:
            if max_bytes is not None and total >= max_bytes:
                break
            used += 1
            for piece in _pieces(path, None if max_bytes is None else max_bytes - total):
                writer.write(np.frombuffer(piece, dtype=np.uint8))
                total += len(piece)
    return finish(root, writer, kind="tokens", dtype="uint8", vocab_size=256,
                  val_fraction=val_fraction,
                  source=source or f"text: {total} bytes of {used} file(s) from {names}")


def _size(path: pathlib.Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror}): fix its permissions or "
                        f"leave it out") from None


def _pieces(path: pathlib.Path, limit: int | None) -> Iterator[bytes]:
    """The file's bytes (at most `limit`) in pieces of READ_BYTES."""
    try:
        with open(path, "rb") as f:
            while piece := f.read(READ_BYTES if limit is None else min(READ_BYTES, limit)):
                yield piece
                if limit is not None:
                    limit -= len(piece)
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror}): fix its permissions or "
                        f"leave it out") from None


def stdlib_files() -> list[pathlib.Path]:
    """The standard library's .py files, sorted by their path relative to the stdlib."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise DataError(f"the Python standard library source is not at {root} (a stripped "
                        f"install?): prepare another corpus with --text PATH")
    found = _walk(root, [".py"], SKIP_DIRS)
    if not found:
        raise DataError(f"no .py files under {root} (a stripped install?): prepare another "
                        f"corpus with --text PATH")
    return found


def prepare_stdlib_corpus(out: PathLike, max_bytes: int = 8_000_000, *,
                          shard_size: int | None = None, force: bool = False,
                          val_fraction: float = DEFAULT_VAL_FRACTION) -> Manifest:
    """Prepare up to `max_bytes` of standard-library source as a byte-level token stream."""
    files = stdlib_files()
    version = ".".join(map(str, sys.version_info[:3]))
    return prepare_text(files, out, shard_size=shard_size, max_bytes=max_bytes, force=force,
                        val_fraction=val_fraction,
                        source=f"stdlib: .py files of the Python {version} standard library "
                               f"at {sysconfig.get_paths()['stdlib']}, sorted, at most "
                               f"{max_bytes} bytes")
