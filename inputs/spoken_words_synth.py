"""Spoken words from espeak-ng: one WAV per word and rendition, one folder per word, with
whole voices held out, for the speaker-independent example inputs/spoken-words.sh.

    python inputs/spoken_words_synth.py data/spoken-words-wav     # writes train/ and val/

A voice is an English accent with a voice variant (`espeak-ng -v en-gb-scotland+f3`): 8
accents x 12 variants (m1-m7, f1-f5). Every accent spoken by variants m7 and f5 goes to
val/, so the val speakers' voices are never heard in training. Each voice reads the word
list RENDITIONS times, each time in a seeded random order (no word is always last, where
the intonation falls) at its own speed (-s 120-200 words a minute) and pitch (-p 20-80).
One espeak-ng call reads a whole list with a long gap between words (-g), and the words are
cut at the silences, checked to be exactly as many as the list: one call per list, not per
word, as a call costs about 0.1 s. Every choice is a function of the seed, and espeak-ng
gives the same samples for the same call, so the folders are the same on every run.
Exercised by: python -m pytest -q tests/test_examples.py
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile
import wave
from concurrent.futures import ThreadPoolExecutor

import numpy as np

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
         "yes", "no", "up", "down", "left", "right", "stop", "go")
ACCENTS = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp",
           "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
HELD_OUT = ("m7", "f5")          # every accent in these variants is a val voice
RENDITIONS = 3
GAP = 50                         # espeak-ng -g: 500 ms between words
HOP_S, QUIET, JOIN_S, MARGIN_S = 0.01, 50, 0.2, 0.05   # silence: |sample| < 50 of 32767


def voices() -> list[tuple[str, str]]:
    return [(accent, variant) for accent in ACCENTS for variant in VARIANTS]


def cut_words(samples: np.ndarray, rate: int) -> list[np.ndarray]:
    """The words of a list read with long gaps: runs of sound, joined across pauses shorter
    than JOIN_S (a stop consonant's closure), with MARGIN_S of silence each side."""
    hop = round(rate * HOP_S)
    frames = len(samples) // hop
    loud = np.abs(samples[: frames * hop].reshape(frames, hop)).max(axis=1) >= QUIET
    edges = np.flatnonzero(np.diff(np.concatenate([[0], loud.astype(np.int8), [0]])))
    runs = list(zip(edges[::2], edges[1::2]))
    joined: list[list[int]] = []
    for start, stop in runs:
        if joined and (start - joined[-1][1]) * HOP_S < JOIN_S:
            joined[-1][1] = stop
        else:
            joined.append([start, stop])
    margin = round(rate * MARGIN_S)
    return [samples[max(0, a * hop - margin): min(len(samples), b * hop + margin)]
            for a, b in joined]


def read_list(accent: str, variant: str, order: list[str], speed: int, pitch: int,
              scratch: pathlib.Path) -> tuple[int, list[np.ndarray]]:
    wav = scratch / f"{accent}+{variant}-{speed}-{pitch}.wav"
    subprocess.run(["espeak-ng", "-v", f"{accent}+{variant}", "-s", str(speed), "-p",
                    str(pitch), "-g", str(GAP), "-w", str(wav), ", ".join(order)],
                   check=True, capture_output=True, timeout=120)
    with wave.open(str(wav), "rb") as w:
        rate = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    words = cut_words(samples, rate)
    if len(words) != len(order):
        raise SystemExit(f"spoken_words_synth: {accent}+{variant} -s {speed} -p {pitch} gave "
                         f"{len(words)} words for a list of {len(order)}: the cut at silences "
                         f"failed (change GAP or JOIN_S)")
    return rate, words


def write_wav(path: pathlib.Path, samples: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())


def synthesize(out: pathlib.Path, seed: int = 0, renditions: int = RENDITIONS) -> dict:
    """train/<word>/*.wav and val/<word>/*.wav under `out` (replaced); the file counts."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("spoken_words_synth: espeak-ng is not installed "
                         "(apt-get install -y espeak-ng)")
    rng = np.random.default_rng(seed)
    jobs = []
    for accent, variant in voices():
        for take in range(renditions):
            order = [WORDS[i] for i in rng.permutation(len(WORDS))]
            jobs.append((accent, variant, take, order, int(rng.integers(120, 201)),
                         int(rng.integers(20, 81))))
    if out.exists():
        shutil.rmtree(out)
    counts = {"train": 0, "val": 0}
    with tempfile.TemporaryDirectory() as scratch, ThreadPoolExecutor(4) as pool:
        lists = pool.map(lambda job: read_list(*job[:2], *job[3:], pathlib.Path(scratch)), jobs)
        for (accent, variant, take, order, speed, pitch), (rate, words) in zip(jobs, lists):
            split = "val" if variant in HELD_OUT else "train"
            for word, samples in zip(order, words):
                folder = out / split / word
                folder.mkdir(parents=True, exist_ok=True)
                write_wav(folder / f"{accent}+{variant}-{take}-s{speed}-p{pitch}.wav",
                          samples, rate)
                counts[split] += 1
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--renditions", type=int, default=RENDITIONS,
                        help=f"readings of the list per voice (default {RENDITIONS})")
    args = parser.parse_args(argv)
    counts = synthesize(args.out, args.seed, args.renditions)
    n_val = len(ACCENTS) * len(HELD_OUT)
    print(f"{counts['train']} train WAVs ({len(voices()) - n_val} voices) and {counts['val']} "
          f"val WAVs ({n_val} held-out voices: variants {', '.join(HELD_OUT)} in "
          f"{len(ACCENTS)} accents), {len(WORDS)} words, in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
