"""Speech in noise from espeak-ng, one label per frame (silence or speech), as the arrays a
voice-activity-detection user brings: X.npy [N, T, 40] log-mel frames, Y.npy [N, T] frame
labels, L.npy [N] frames per utterance. For the tagging example inputs/speech-activity.sh.

    python inputs/speech_activity_synth.py data/speech-activity-npy [--utterances 800]

Each utterance is 1 to 4 of the spoken-words example's words (inputs/spoken_words_synth.py)
read by one of its 96 voices at a seeded speed, pitch and gap between words (-g 50 to 400 ms),
with 0.1 to 0.8 s of silence before and after. The labels come from the clean signal: speech
where it is loud, joined across pauses shorter than HANGOVER_S (a stop consonant's closure,
a short gap between words), as a VAD annotator marks it. Then noise is added at a seeded
signal-to-noise ratio of 0 to 20 dB (white noise and a low rumble, mixed at random), so a frame's
energy alone does not tell speech from silence. Frames are computed as `prepare --audio`
computes them (mpirnn/data/audio_features.py: 40 mels, 20 ms hop, 40 ms window); a frame is
speech where its window's centre is. Every choice is a function of the seed.
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

from mpirnn.data.audio_features import frame_settings, log_mel, mel_filterbank
from spoken_words_synth import QUIET, WORDS, voices

UTTERANCES = 800
MELS, HOP_MS, WIN_MS = 40, 20.0, 40.0
HOP_S, HANGOVER_S = 0.01, 0.1         # loudness every 10 ms; pauses shorter than 100 ms are speech
CLASSES = ("silence", "speech")


def speech_mask(samples: np.ndarray, rate: int) -> np.ndarray:
    """[samples] bool: inside a run of loud 10 ms hops, runs joined across pauses < HANGOVER_S."""
    hop = round(rate * HOP_S)
    frames = len(samples) // hop
    loud = np.abs(samples[: frames * hop].reshape(frames, hop)).max(axis=1) >= QUIET
    edges = np.flatnonzero(np.diff(np.concatenate([[0], loud.astype(np.int8), [0]])))
    mask = np.zeros(len(samples), dtype=bool)
    runs = list(zip(edges[::2], edges[1::2]))
    for i, (start, stop) in enumerate(runs):
        if i + 1 < len(runs) and (runs[i + 1][0] - stop) * HOP_S < HANGOVER_S:
            stop = runs[i + 1][0]   # the pause before the next run counts as speech
        mask[start * hop: stop * hop] = True
    return mask


def speak(job: tuple, scratch: pathlib.Path) -> tuple[int, np.ndarray]:
    index, voice, words, speed, pitch, gap = job
    wav = scratch / f"{index}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-g", str(gap),
                    "-w", str(wav), " ".join(words)], check=True, capture_output=True, timeout=120)
    with wave.open(str(wav), "rb") as w:
        return w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)


def noisy(clean: np.ndarray, mask: np.ndarray, rng) -> np.ndarray:
    """clean + noise at a random SNR (0-20 dB against the speech's power), scaled into [-1, 1]."""
    white = rng.standard_normal(len(clean))
    rumble = np.convolve(rng.standard_normal(len(clean)), np.ones(64) / 8.0, mode="same")
    noise = rng.uniform(0, 1) * white + rng.uniform(0, 1) * rumble
    speech_power = np.mean(np.square(clean[mask])) if mask.any() else 1.0
    snr_db = rng.uniform(0, 20)
    noise *= np.sqrt(speech_power / 10 ** (snr_db / 10) / max(np.mean(np.square(noise)), 1e-12))
    signal = (clean + noise) / 32768.0
    return signal / max(1.0, np.abs(signal).max())


def synthesize(out: pathlib.Path, seed: int = 0, utterances: int = UTTERANCES) -> dict:
    """X.npy, Y.npy, L.npy under `out` (replaced); what was written."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("speech_activity_synth: espeak-ng is not installed (apt-get install -y espeak-ng)")
    rng = np.random.default_rng(seed)
    names = [f"{accent}+{variant}" for accent, variant in voices()]
    jobs = [(i, names[int(rng.integers(len(names)))],
             [WORDS[int(w)] for w in rng.integers(len(WORDS), size=int(rng.integers(1, 5)))],
             int(rng.integers(120, 201)), int(rng.integers(20, 81)), int(rng.integers(5, 41)))
            for i in range(utterances)]
    with tempfile.TemporaryDirectory() as scratch, ThreadPoolExecutor(4) as pool:
        spoken = list(pool.map(lambda job: speak(job, pathlib.Path(scratch)), jobs))
    rate = spoken[0][0]
    settings = frame_settings(rate, MELS, HOP_MS, WIN_MS)
    bank = mel_filterbank(rate, settings["n_fft"], MELS)
    hop, centre = settings["hop_samples"], settings["n_fft"] // 2
    rows, labels = [], []
    for _, samples in spoken:
        before, after = (int(rate * rng.uniform(0.1, 0.8)) for _ in range(2))
        clean = np.concatenate([np.zeros(before), samples, np.zeros(after)])
        mask = speech_mask(clean, rate)
        frames = log_mel(noisy(clean, mask, rng), settings, bank)
        rows.append(frames)
        labels.append(mask[np.arange(len(frames)) * hop + centre].astype(np.int8))
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    T = int(lengths.max())
    x = np.zeros((len(rows), T, MELS), dtype=np.float32)
    y = np.zeros((len(rows), T), dtype=np.int8)
    for i, (frames, tags) in enumerate(zip(rows, labels)):
        x[i, :len(frames)], y[i, :len(tags)] = frames, tags
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    np.save(out / "X.npy", x)
    np.save(out / "Y.npy", y)
    np.save(out / "L.npy", lengths)
    speech = float(sum(t.sum() for t in labels) / lengths.sum())
    return {"rows": len(rows), "frames": int(lengths.sum()), "max": T, "speech": speech}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--utterances", type=int, default=UTTERANCES)
    args = parser.parse_args(argv)
    done = synthesize(args.out, args.seed, args.utterances)
    print(f"{done['rows']} utterances, {done['frames']} frames (up to {done['max']} per utterance), "
          f"{done['speech']:.1%} of them speech; classes {','.join(CLASSES)}; X.npy, Y.npy, L.npy in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
