"""Prompts against the vocabulary, decoding, and seeded sampling (mpirnn/inference/generation.py).

Plain pytest, no MPI: cd /work/main && .venv/bin/python -m pytest -q tests/test_inference_generation.py
"""

import pytest
import torch

from mpirnn.errors import ConfigError
from mpirnn.inference.generation import decode, generate, prompt_ids
from mpirnn.models.model import RecurrentModel


def test_prompt_bytes_are_the_token_ids():
    assert prompt_ids("def ", 256, "--prompt") == [100, 101, 102, 32]
    assert prompt_ids("é", 256, "--prompt") == [0xC3, 0xA9]


def test_a_byte_past_the_vocabulary_is_named():
    with pytest.raises(ConfigError) as caught:
        prompt_ids("ab{", 100, "--prompt")
    text = str(caught.value)
    assert "--prompt 'ab{' has byte 123 ('{') at position 2" in text and "vocab_size=100" in text
    with pytest.raises(ConfigError, match="is empty"):
        prompt_ids("", 256, "output.sample_prompt")


def test_decode_bytes_and_large_vocabularies():
    assert decode([104, 105, 0xFF], 256) == "hi\ufffd"
    assert decode([104, 105], 50) == "hi"
    assert decode([300, 7], 1000) == "300 7"   # ids past a byte are not bytes


def test_same_seed_same_text():
    torch.manual_seed(0)
    model = RecurrentModel("gru", 8, 1, 4, vocab_size=128)
    ids = prompt_ids("ab", 128, "--prompt")
    first = generate(model, ids, 20, temperature=1.0, seed=3)
    assert first == generate(model, ids, 20, temperature=1.0, seed=3)
    assert len(first) == 20 and all(0 <= t < 128 for t in first)
    assert first != generate(model, ids, 20, temperature=1.0, seed=4)
