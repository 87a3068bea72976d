"""Log-mel frames of a waveform, computed with torch (no torchaudio or librosa needed).

    frames = ln(mel_filterbank @ |STFT(x)|^2 + LOG_FLOOR), one row per hop

The STFT uses a periodic Hann window of `win_ms` at the centre of n_fft samples (the next
power of two >= the window) and a hop of `hop_ms`, without padding the clip's ends: frame i
covers samples [i*hop, i*hop + n_fft). A clip shorter than n_fft is zero-padded to one frame. The filterbank is `mels`
triangles evenly spaced on the HTK mel scale (2595 log10(1 + f/700)) from 0 Hz to the
Nyquist frequency, peak 1. Every setting is recorded in the manifest (`audio`), so the
same frames can be computed again at inference.
Exercised by: python -m pytest -q tests/test_data_labelled_audio.py
"""

from __future__ import annotations

import math

import numpy as np

from mpirnn.errors import DataError

DEFAULT_MELS, DEFAULT_HOP_MS, DEFAULT_WIN_MS = 40, 10.0, 25.0
LOG_FLOOR = 1e-6     # keeps silence finite: ln(1e-6) = -13.8
# torch is imported where frames are computed: the command line reads the defaults above
# without paying for it.


def frame_settings(sample_rate: int, mels: int, hop_ms: float, win_ms: float) -> dict:
    """The settings recorded in the manifest, samples included; refuses unusable ones."""
    for name, value in (("mels", mels), ("hop-ms", hop_ms), ("win-ms", win_ms)):
        if not value > 0:
            raise DataError(f"--{name} must be positive, got {value}")
    win = round(sample_rate * win_ms / 1000)
    hop = round(sample_rate * hop_ms / 1000)
    if win < 2 or hop < 1:
        raise DataError(f"--win-ms {win_ms} / --hop-ms {hop_ms} give {win} / {hop} samples at "
                        f"{sample_rate} Hz: use a longer window and hop")
    n_fft = 1 << math.ceil(math.log2(win))
    return {"sample_rate": sample_rate, "mels": mels, "hop_ms": hop_ms, "win_ms": win_ms,
            "hop_samples": hop, "win_samples": win, "n_fft": n_fft, "window": "hann",
            "mel_scale": "htk", "f_min": 0.0, "f_max": sample_rate / 2, "power": 2,
            "log": f"ln(mel power + {LOG_FLOOR:g})", "channels": "mean of the channels"}


def mel_filterbank(sample_rate: int, n_fft: int, mels: int):
    """[mels, n_fft // 2 + 1] triangular filters on the HTK mel scale, a float64 tensor."""
    import torch

    def to_mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    edges_mel = np.linspace(0.0, to_mel(sample_rate / 2), mels + 2)
    edges = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None, :] - lower) / (centre - lower)
    falling = (upper - freqs[None, :]) / (upper - centre)
    bank = np.maximum(0.0, np.minimum(rising, falling))
    if (bank.max(axis=1) == 0).any():
        raise DataError(f"--mels {mels} is too many for n_fft {n_fft} at {sample_rate} Hz (some "
                        f"filters fall between frequency bins): use fewer mels or a longer "
                        f"--win-ms")
    return torch.from_numpy(bank)


def log_mel(signal: np.ndarray, settings: dict, bank) -> np.ndarray:
    """[frames, mels] float32 log-mel frames of a mono float signal in [-1, 1]."""
    import torch

    win, hop, n_fft = settings["win_samples"], settings["hop_samples"], settings["n_fft"]
    x = torch.from_numpy(np.asarray(signal, np.float64))
    if len(x) < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - len(x)))
    spectrum = torch.stft(x, n_fft, hop_length=hop, win_length=win,
                          window=torch.hann_window(win, dtype=torch.float64), center=False,
                          return_complex=True)
    mel = bank @ spectrum.abs().pow(2)                         # [mels, frames]
    return torch.log(mel + LOG_FLOOR).T.to(torch.float32).numpy()
