"""Pieces of tensors on many ranks assembled into whole tensors on one rank, and back.

A *piece* is (key, whole shape, dtype, index, tensor): the part [index] of the tensor named
`key`, whose whole shape is given. Checkpoints use this to collect the serial model, its
optimizer state and the carried states from whichever ranks hold them, whatever the grid.
Headers travel as JSON bytes and tensors as raw buffers (never pickle).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
from mpi4py import MPI

from mpirnn.distributed.transport import host_view

HEADER_TAG, PIECE_TAG = 7001, 7002


@dataclass
class Piece:
    key: str
    shape: tuple[int, ...]      # of the whole tensor
    index: tuple[tuple[int, int], ...]  # [start, stop) per dimension of this piece
    tensor: torch.Tensor

    @classmethod
    def whole(cls, key: str, tensor: torch.Tensor) -> "Piece":
        return cls(key, tuple(tensor.shape), tuple((0, n) for n in tensor.shape), tensor)

    def describe(self) -> dict:
        return {"key": self.key, "shape": list(self.shape), "index": [list(i) for i in self.index],
                "dtype": str(self.tensor.dtype).removeprefix("torch.")}


def _place(whole: dict, key: str, shape, index, dtype, tensor) -> None:
    if key not in whole:
        whole[key] = torch.empty(tuple(shape), dtype=dtype)
    whole[key][tuple(slice(a, b) for a, b in index)] = tensor


def gather_pieces(comm: MPI.Comm, pieces: list[Piece], root: int = 0) -> dict[str, torch.Tensor] | None:
    """Every rank's pieces, assembled on `root` into {key: whole CPU tensor}; None elsewhere."""
    header = json.dumps([p.describe() for p in pieces]).encode()
    sizes = np.zeros(comm.size, dtype=np.int64) if comm.rank == root else None
    comm.Gather(np.array([len(header) if pieces else 0], dtype=np.int64), sizes, root=root)
    if comm.rank != root:
        if pieces:
            comm.Send(np.frombuffer(header, dtype=np.uint8), dest=root, tag=HEADER_TAG)
            for piece in pieces:
                comm.Send(host_view(piece.tensor.detach().cpu().contiguous()), dest=root, tag=PIECE_TAG)
        return None
    whole: dict[str, torch.Tensor] = {}
    for piece in pieces:
        _place(whole, piece.key, piece.shape, piece.index, piece.tensor.dtype, piece.tensor.detach().cpu())
    for source in range(comm.size):
        if source == root or sizes[source] == 0:
            continue
        raw = np.empty(int(sizes[source]), dtype=np.uint8)
        comm.Recv(raw, source=source, tag=HEADER_TAG)
        for item in json.loads(raw.tobytes()):
            dtype = getattr(torch, item["dtype"])
            part = torch.empty([b - a for a, b in item["index"]], dtype=dtype)
            comm.Recv(host_view(part), source=source, tag=PIECE_TAG)
            _place(whole, item["key"], item["shape"], item["index"], dtype, part)
    return whole
