"""WAV folders as log-mel rows: sine tones the tests write with `wave`, spoken words from
espeak-ng when it is installed, the frames checked against numpy, and every bad folder
refused by the real command.

    .venv/bin/python -m pytest -q tests/test_data_labelled_audio.py
"""

import shutil
import subprocess
import wave

import numpy as np
import pytest
from support import assert_refused, run_data_cli

from mpirnn.data.audio_features import LOG_FLOOR, frame_settings, log_mel, mel_filterbank
from mpirnn.data.audio_input import prepare_audio
from mpirnn.data.row_reader import RowReader
from mpirnn.data.row_stats import lengths_and_counts

RATE = 8000


def write_wav(path, seconds: float, hz: float, rate: int = RATE, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.5 * np.sin(2 * np.pi * hz * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(samples, channels).tobytes())


@pytest.fixture
def tones(tmp_path):
    """Two classes of tones, 300 Hz and 2500 Hz, of different durations (a stereo one too)."""
    root = tmp_path / "tones"
    for i, seconds in enumerate((0.3, 0.5, 0.4, 0.6)):
        write_wav(root / "low" / f"{i}.wav", seconds, 300)
        write_wav(root / "high" / f"{i}.wav", seconds + 0.1, 2500, channels=1 + i % 2)
    (root / "low" / ".DS_Store").write_text("skipped: hidden")
    return root


def test_tones_become_rows_of_log_mel_frames(tmp_path, tones):
    m = prepare_audio(tones, tmp_path / "ds", mels=20, val_fraction=0.25)
    assert (m.task, m.classes, m.features) == ("classify", ("high", "low"), 20)   # sorted folders
    assert m.audio["sample_rate"] == RATE and m.audio["n_fft"] == 256
    assert (m.audio["win_samples"], m.audio["hop_samples"], m.audio["mels"]) == (200, 80, 20)
    lengths, counts = lengths_and_counts(m)
    assert counts.tolist() == [3, 3]                       # stratified: one of each class held out
    # frames = 1 + (samples - n_fft) // hop, e.g. 0.3 s: 1 + (2400 - 256) // 80 = 27
    assert sorted(set(lengths.tolist())) <= [27, 37, 47, 57, 67]
    assert m.seq_len == 1 + (int(0.7 * RATE) - 256) // 80
    batch = RowReader(m).read(range(m.length))
    frames = m.denormalize(batch.inputs.double().numpy())
    for row in range(m.length):
        loudest = frames[row, : batch.lengths[row]].mean(axis=0).argmax()
        assert (loudest > 10) == (batch.labels[row].item() == 0)   # high tones in high mels


def test_frames_match_numpy(tmp_path):
    settings = frame_settings(RATE, mels=10, hop_ms=10, win_ms=25)
    bank = mel_filterbank(RATE, settings["n_fft"], 10)
    signal = np.random.default_rng(0).standard_normal(1000) * 0.1
    frames = log_mel(signal, settings, bank)
    assert frames.shape == (1 + (1000 - 256) // 80, 10)
    n = np.arange(200)
    window = np.zeros(256)
    window[28:228] = 0.5 - 0.5 * np.cos(2 * np.pi * n / 200)   # periodic Hann, centred
    power = np.abs(np.fft.rfft(signal[80:336] * window)) ** 2  # frame 1
    expected = np.log(bank.numpy() @ power + LOG_FLOOR)
    assert np.allclose(frames[1], expected, atol=1e-4)


@pytest.mark.skipif(shutil.which("espeak-ng") is None,
                    reason="espeak-ng is not installed (apt-get install -y espeak-ng): spoken "
                           "words skipped; the tone tests above cover the pipeline")
def test_spoken_words_from_espeak(tmp_path):
    root = tmp_path / "words"
    for word in ("yes", "seven"):
        for voice, speed in (("en+m3", 150), ("en+f2", 120), ("en+m1", 180)):
            path = root / word / f"{voice}-{speed}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), word],
                           check=True, capture_output=True, timeout=60)
    result = run_data_cli("prepare", "--out", tmp_path / "ds", "--audio", root,
                          "--val-fraction", "0.34")
    assert result.returncode == 0, result.stderr
    assert "6 WAV files at 22050 Hz" in result.stdout and "classes per sequence (seven, yes)" in result.stdout
    info = run_data_cli("info", tmp_path / "ds")
    assert "audio: 40 log-mel features every 10 ms (25 ms windows, n_fft 1024) at 22050 Hz" in info.stdout
    assert "rows per class: seven 2, yes 2" in info.stdout


def test_bad_folders_are_refused_by_the_command(tmp_path, tones):
    out = tmp_path / "out"

    def refused(folder, *words):
        assert_refused(run_data_cli("prepare", "--out", out, "--audio", folder), out, *words)

    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "holds no class folders")
    (tones / "silence").mkdir()
    refused(tones, "class folder", "silence holds no WAV files")
    (tones / "silence").rmdir()
    (tones / "low" / "notes.txt").write_text("not audio")
    refused(tones, "low/notes.txt is not a WAV file (.wav)")
    (tones / "low" / "notes.txt").unlink()
    write_wav(tones / "high" / "fast.wav", 0.2, 440, rate=16000)
    refused(tones, "high/fast.wav is 16000 Hz but high/0.wav is 8000 Hz: resample")
    (tones / "high" / "fast.wav").unlink()
    write_wav(tones / "stray.wav", 0.2, 440)
    refused(tones, "stray.wav is not in a class folder")
    (tones / "stray.wav").unlink()
    (tones / "low" / "0.wav").write_bytes(b"RIFF....WAVEjunk")
    refused(tones, "low/0.wav is not a PCM WAV file")


def test_a_val_folder_is_the_val_split(tmp_path, tones):
    """--val DIR2: the val rows are DIR2's files (held-out speakers), padded to the longest
    row of both folders; its class folders must be the train folder's."""
    val = tmp_path / "val"
    write_wav(val / "low" / "a.wav", 0.9, 300)                 # longer than any train file
    write_wav(val / "high" / "a.wav", 0.2, 2500)
    result = run_data_cli("prepare", "--out", tmp_path / "ds", "--audio", tones, "--val", val,
                          "--mels", "20")
    assert result.returncode == 0, result.stderr
    assert "tones + val: 10 WAV files at 8000 Hz" in result.stdout
    from mpirnn.data.manifest import load_manifest
    train, held_out = load_manifest(tmp_path / "ds"), load_manifest(tmp_path / "ds", split="val")
    assert (train.length, held_out.length) == (8, 2)
    assert train.val_split == {"method": "file", "file": "val"}
    assert train.seq_len == held_out.seq_len == 1 + (int(0.9 * RATE) - 256) // 80
    batch = RowReader(held_out).read(range(2))
    assert batch.labels.tolist() == [0, 1]                     # high, low: sorted folders
    assert batch.lengths.tolist() == [1 + (int(0.2 * RATE) - 256) // 80, train.seq_len]
    info = run_data_cli("info", tmp_path / "ds")
    assert "the rows of val" in info.stdout


def test_a_val_folder_must_match_the_classes(tmp_path, tones):
    out, val = tmp_path / "out", tmp_path / "val"
    write_wav(val / "low" / "a.wav", 0.3, 300)
    assert_refused(run_data_cli("prepare", "--out", out, "--audio", tones, "--val", val), out,
                   "lacks class folder 'high'", "same class folders")
    write_wav(val / "high" / "a.wav", 0.3, 2500)
    write_wav(val / "mid" / "a.wav", 0.3, 1000)
    assert_refused(run_data_cli("prepare", "--out", out, "--audio", tones, "--val", val), out,
                   "has class folder 'mid'")
    (val / "mid" / "a.wav").unlink()
    (val / "mid").rmdir()
    write_wav(val / "high" / "b.wav", 0.3, 2500, rate=16000)
    assert_refused(run_data_cli("prepare", "--out", out, "--audio", tones, "--val", val), out,
                   "is 16000 Hz but high/0.wav is 8000 Hz")
    (val / "high" / "b.wav").unlink()
    assert_refused(run_data_cli("prepare", "--out", out, "--audio", tones, "--val", val,
                                "--val-fraction", "0.2"), out, "--val and --val-fraction")
