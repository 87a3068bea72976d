"""Text from a token model: the prompt as token ids (checked against the vocabulary), sampling,
and ids back to text. Used by `python -m mpirnn.generate` and by the sample printed after
training (output.sample_prompt), which is checked here before training starts.

A prompt is UTF-8 text and each of its bytes is one token id, as in a byte-level dataset
(prepare --text), so every byte must be below the model's vocabulary size.

    python -m pytest -q tests/test_inference_generation.py
"""

from __future__ import annotations

import torch

from mpirnn.errors import ConfigError

BYTE_VOCAB = 256


def prompt_ids(text: str, vocab_size: int, setting: str) -> list[int]:
    """The prompt's token ids; ConfigError naming the first byte past the vocabulary."""
    ids = list(text.encode("utf-8"))
    if not ids:
        raise ConfigError(f"{setting} is empty: the model needs at least one token to start from")
    for position, value in enumerate(ids):
        if value >= vocab_size:
            shown = repr(chr(value)) if value < 128 else f"a byte of {text.encode()[position:position + 4]!r}"
            raise ConfigError(f"{setting} {text!r} has byte {value} ({shown}) at position {position}, past the "
                              f"model's vocabulary (vocab_size={vocab_size}, ids 0-{vocab_size - 1}): use a prompt "
                              f"made of bytes below {vocab_size}")
    return ids


def decode(ids: list[int], vocab_size: int) -> str:
    """Token ids as text: bytes decoded as UTF-8 (invalid sequences replaced) for a byte-sized
    vocabulary, else the ids themselves, space-separated (they are not bytes)."""
    if vocab_size <= BYTE_VOCAB:
        return bytes(ids).decode("utf-8", "replace")
    return " ".join(map(str, ids))


def generate(model, ids: list[int], count: int, temperature: float = 0.8, seed: int = 0) -> list[int]:
    """`count` token ids sampled after the prompt `ids` by the whole model; the same for the same seed."""
    prompt = torch.tensor(ids, dtype=torch.long, device=model.device)
    generator = torch.Generator().manual_seed(seed)
    return model.generate(prompt, count, temperature=temperature, generator=generator).tolist()
