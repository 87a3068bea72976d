"""Text from a token model: the prompt as token ids (checked against the vocabulary), sampling,
and ids back to text. Used by `python -m mpirnn.generate` and by the sample printed after
training (output.sample_prompt), which is checked here before training starts.

A prompt is bytes, and each byte is one token id, as in a byte-level dataset (prepare --text),
so every byte must be below the model's vocabulary size. Text is taken as the bytes it was given
in: UTF-8 text as UTF-8, and a command-line argument that is not valid UTF-8 (a Latin-1 terminal's
`caf\xe9`) as its raw bytes, which Python keeps as surrogate escapes. Prompts for small
vocabularies (DNA's 4 letters as ids 0-3, say) are given as bytes: `generate --prompt-bytes 00010203`.

    python -m pytest -q tests/test_inference_generation.py
"""

from __future__ import annotations

import torch

from mpirnn.errors import ConfigError

BYTE_VOCAB = 256


def prompt_bytes(text: str) -> bytes:
    """Text as the bytes it came in (surrogate escapes, from undecodable argv bytes, back to bytes)."""
    return text.encode("utf-8", "surrogateescape")


def prompt_ids(prompt: str | bytes, vocab_size: int, setting: str) -> list[int]:
    """The prompt's token ids; ConfigError naming the first byte past the vocabulary."""
    raw = prompt if isinstance(prompt, bytes) else prompt_bytes(prompt)
    ids = list(raw)
    if not ids:
        raise ConfigError(f"{setting} is empty: the model needs at least one token to start from")
    for position, value in enumerate(ids):
        if value >= vocab_size:
            shown = repr(chr(value)) if value < 128 else f"a byte of {raw[position:position + 4]!r}"
            raise ConfigError(f"{setting} {_shown(prompt)} has byte {value} ({shown}) at position {position}, past the "
                              f"model's vocabulary (vocab_size={vocab_size}, ids 0-{vocab_size - 1}): use a prompt "
                              f"made of bytes below {vocab_size}")
    return ids


def _shown(prompt: str | bytes) -> str:
    """A prompt as a message quotes it: text as text, bytes (or undecodable text) as bytes."""
    if isinstance(prompt, str):
        try:
            prompt.encode("utf-8")
            return repr(prompt)
        except UnicodeEncodeError:
            prompt = prompt_bytes(prompt)
    return repr(prompt)


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
