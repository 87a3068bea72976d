"""FASTA records and their alphabet: DNA, RNA or protein letters as token ids.

A record is a `>id description` line and the sequence lines after it (joined, whitespace
dropped, letters upper-cased: lower case marks soft-masked regions, not other letters).
The alphabet is inferred (the smallest of dna, rna, protein holding every letter) or given
(`--alphabet dna|rna|protein|LETTERS`); the token id of a letter is its place in the
alphabet. A letter outside it is refused with the record and the position (from 1, as
biologists count). Per-step labels come as a second FASTA file of label letters, one
record per sequence with the same id and length.
Exercised by: python -m pytest -q tests/test_data_labelled_fasta.py
"""

from __future__ import annotations

import logging
import pathlib
from dataclasses import dataclass

import numpy as np

from mpirnn.data.text_lines import read_lines
from mpirnn.errors import DataError

ALPHABETS = {"dna": "ACGTN", "rna": "ACGUN", "protein": "ACDEFGHIKLMNPQRSTVWYX"}
FASTA_SUFFIXES = (".fasta", ".fa", ".fna", ".ffn", ".faa", ".frn", ".fas")
log = logging.getLogger("mpirnn.data")


@dataclass(frozen=True)
class Record:
    id: str
    letters: str
    line: int          # of the `>` header, for messages


def read_fasta(path: str | pathlib.Path, upper: bool = True) -> list[Record]:
    """The records of a FASTA file, in order; ids must be unique and sequences non-empty."""
    path = pathlib.Path(path)
    lines = read_lines(path, "FASTA")
    records, current, seen = [], None, {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith(";"):
            continue
        if text.startswith(">"):
            ident = text[1:].split(maxsplit=1)[0] if text[1:].strip() else ""
            if not ident:
                raise DataError(f"{path.name} line {number}: a '>' header without an id")
            if ident in seen:
                raise DataError(f"{path.name} line {number}: record id {ident!r} already used on "
                                f"line {seen[ident]}: ids must be unique")
            seen[ident] = number
            current = [ident, [], number]
            records.append(current)
        elif current is None:
            raise DataError(f"{path.name} line {number}: sequence letters before the first "
                            f"'>' header: is it a FASTA file?")
        else:
            current[1].append("".join(text.split()))
    if not records:
        raise DataError(f"{path.name} holds no FASTA records ('>id' lines): nothing to prepare")
    out = []
    for ident, parts, number in records:
        letters = "".join(parts)
        if not letters:
            raise DataError(f"{path.name}: record {ident!r} (line {number}) has no letters")
        out.append(Record(ident, letters.upper() if upper else letters, number))
    return out


def choose_alphabet(name: str, records: list[Record], given: str | None) -> str:
    """The alphabet's letters, in id order: `given` (a name or the letters), else inferred.

    Refuses the first letter outside it, naming the record and the position.
    """
    if given is not None:
        letters = ALPHABETS.get(given.lower(), given.upper())
        if not letters.isascii() or len(set(letters)) != len(letters):
            raise DataError(f"--alphabet {given!r} must be ASCII letters, each given once")
        how = f"--alphabet {given}"
    else:
        used = set().union(*map(set, (r.letters for r in records)))
        kind = min(ALPHABETS, key=lambda k: (len(used - set(ALPHABETS[k])), len(ALPHABETS[k])))
        letters, how = ALPHABETS[kind], f"{kind}, inferred"
    allowed = set(letters)
    for number, record in enumerate(records, 1):
        for position, letter in enumerate(record.letters, 1):
            if letter not in allowed:
                raise DataError(f"{name}: record {record.id!r} (record {number}, line "
                                f"{record.line}) position {position}: letter {letter!r} is not "
                                f"in the alphabet {letters} ({how}): fix the record or pass "
                                f"--alphabet with every letter used")
    log.info(f"{name}: {len(records)} records, alphabet {letters} ({how}; token id = place "
             f"in the alphabet)")
    return letters


def token_ids(record: Record, alphabet: str) -> np.ndarray:
    """A record's letters as ids (their places in `alphabet`)."""
    lookup = np.full(256, -1, np.int64)
    lookup[np.frombuffer(alphabet.encode("ascii"), np.uint8)] = np.arange(len(alphabet))
    return lookup[np.frombuffer(record.letters.encode("ascii"), np.uint8)]


def is_fasta(path: str | pathlib.Path) -> bool:
    """A labels file is read as FASTA (per-step labels) by its suffix or a leading '>'."""
    path = pathlib.Path(path)
    if path.suffix.lower() in FASTA_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(1) == b">"
    except OSError:
        return False
