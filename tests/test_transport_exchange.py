"""The transport's per-step collectives (GroupExchange): routes, reused buffers, no needless copies.

    python -m pytest -q tests/test_transport_exchange.py

A stand-in communicator plays K ranks that hold the same tensors (so every result is known)
and records the memory address of every buffer MPI is handed. The CUDA tests run only where
a GPU is visible (and the device-direct one only under CUDA-aware MPI): see
docs/parallelism.md, "Where tp's exchanges go", for the GPU check.
"""

import pytest
import torch
from mpi4py import MPI
from torch import nn

from mpirnn.distributed.transport import GroupExchange, cuda_aware, route
from mpirnn.parallel.tensor import ShardedRecurrentLayer, TensorGroup


class MirrorComm:
    """K ranks holding the same data, played by one process; records the addresses MPI is given."""

    def __init__(self, size=2, rank=0):
        self.size, self.rank, self.seen = size, rank, []

    def _note(self, name, *buffers):
        self.seen.append((name, *[b.__array_interface__["data"][0] for b in buffers]))

    def Allgather(self, send, recv):  # noqa: N802 - mpi4py's names
        self._note("Allgather", send, recv)
        recv[...] = send

    def Reduce_scatter_block(self, send, recv, op=None):  # noqa: N802
        self._note("Reduce_scatter_block", send, recv)
        recv[...] = send[self.rank] * self.size

    def Allreduce(self, send, recv, op=None):  # noqa: N802
        assert send is MPI.IN_PLACE
        self._note("Allreduce", recv)
        recv *= self.size


@pytest.mark.parametrize("cuda, direct, stage_host, expected", [
    (False, False, False, "host"), (False, True, False, "host"), (False, False, True, "staged"),
    (True, True, False, "device"), (True, False, False, "staged"), (True, True, True, "device")])
def test_routes(cuda, direct, stage_host, expected):
    # CUDA tensors skip the host only when MPI is CUDA-aware; CPU tensors are staged only on request (tests).
    assert route(cuda, direct, stage_host) == expected


def test_allgather_hands_a_contiguous_cpu_tensor_to_mpi_and_reuses_its_result_buffer():
    comm = MirrorComm(size=3)
    exchange = GroupExchange(comm, device_direct=False)
    results = []
    for step in range(4):
        piece = torch.full((2, 5), float(step))
        gathered = exchange.allgather(piece)
        assert comm.seen[-1][1] == piece.data_ptr()   # the piece's own memory: no copy
        assert torch.equal(gathered, piece.expand(3, 2, 5))
        results.append(gathered)
    assert all(r is results[0] for r in results)      # one buffer for every step
    assert len({seen[2] for seen in comm.seen}) == 1
    assert len(exchange.buffers) == 1


def test_reduce_scatter_copies_only_non_contiguous_blocks_into_one_reused_buffer():
    comm = MirrorComm(size=2, rank=1)
    exchange = GroupExchange(comm, device_direct=False)
    blocks = torch.arange(12.0).view(2, 2, 3)
    mine = exchange.reduce_scatter_block(blocks)
    assert comm.seen[-1][1] == blocks.data_ptr() and not exchange.buffers   # contiguous: used as it is
    assert torch.equal(mine, 2 * blocks[1])
    sends, outs = set(), []
    for step in range(3):
        partial = torch.randn(2, 6)
        strided = partial.view(2, 2, 3).movedim(-2, 0)   # what TensorGroup.reduce_scatter hands over
        out = exchange.reduce_scatter_block(strided)
        assert torch.equal(out, 2 * partial[:, 3:])
        sends.add(comm.seen[-1][1])
        outs.append(out)
    assert len(sends) == 1 and len(exchange.buffers) == 1
    assert len({o.data_ptr() for o in outs}) == 3     # results are new tensors: the caller may keep them


def test_allreduce_leaves_its_input_alone():
    exchange = GroupExchange(MirrorComm(size=4), device_direct=False)
    grad = torch.randn(3, 7)
    before = grad.clone()
    summed = exchange.allreduce_sum(grad)
    assert torch.equal(grad, before) and torch.equal(summed, 4 * before)


def test_staged_route_reuses_its_host_buffers_and_gives_the_same_bits():
    # The path CUDA tensors take without CUDA-aware MPI, run on CPU tensors.
    comm, plain = MirrorComm(size=2), GroupExchange(MirrorComm(size=2), device_direct=False)
    staged = GroupExchange(comm, device_direct=False, stage_host=True)
    first = {}
    for step in range(3):
        piece, partial = torch.randn(4, 3), torch.randn(4, 6)
        blocks = partial.view(4, 2, 3).movedim(-2, 0)
        assert torch.equal(staged.allgather(piece), plain.allgather(piece))
        assert torch.equal(staged.reduce_scatter_block(blocks), plain.reduce_scatter_block(blocks))
        assert torch.equal(staged.allreduce_sum(partial), plain.allreduce_sum(partial))
        buffers = {key: id(buf) for key, buf in staged.buffers.items()}
        first = first or buffers
        assert buffers == first                       # the same staging buffers every step
    assert all(key[0].startswith("staged") and key[3].type == "cpu" for key in staged.buffers)
    assert comm.seen[0][1] != comm.seen[0][2]         # the piece was copied into its staging buffer


def test_buffers_are_bounded_when_shapes_change():
    exchange = GroupExchange(MirrorComm(size=2), device_direct=False, keep=3)
    for rows in range(1, 8):
        exchange.allgather(torch.ones(rows, 2))
    assert len(exchange.buffers) == 3
    assert [key[1] for key in exchange.buffers] == [(2, 5, 2), (2, 6, 2), (2, 7, 2)]


def test_a_tensor_parallel_layer_reuses_one_gather_buffer_over_every_time_step():
    torch.manual_seed(0)
    comm = MirrorComm(size=2)
    full = nn.LSTM(8, 8, batch_first=True)
    layer = ShardedRecurrentLayer(full, "lstm", TensorGroup(comm, 8))
    x = torch.randn(3, 6, 8, requires_grad=True)
    outputs, _ = layer.run(x, torch.zeros(2, 3, 4))
    outputs.sum().backward()
    gathers = {seen[2] for seen in comm.seen if seen[0] == "Allgather"}
    scatters = {seen[1] for seen in comm.seen if seen[0] == "Reduce_scatter_block"}
    assert sum(seen[0] == "Allgather" for seen in comm.seen) == 7 and len(gathers) == 1
    assert sum(seen[0] == "Reduce_scatter_block" for seen in comm.seen) == 6 and len(scatters) == 1


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


@cuda
@pytest.mark.parametrize("direct", [False, pytest.param(True, marks=pytest.mark.skipif(
    not cuda_aware(), reason="needs CUDA-aware MPI"))])
def test_cuda_tensors_give_the_cpu_bits(direct):
    host, device = GroupExchange(MPI.COMM_SELF, device_direct=False), GroupExchange(MPI.COMM_SELF, device_direct=direct)
    piece, partial = torch.randn(4, 3), torch.randn(1, 4, 3)
    for _ in range(2):
        gathered = device.allgather(piece.cuda())
        assert gathered.is_cuda == direct and torch.equal(gathered.cpu(), host.allgather(piece))
        mine = device.reduce_scatter_block(partial.cuda())
        assert mine.is_cuda and torch.equal(mine.cpu(), host.reduce_scatter_block(partial))
        summed = device.allreduce_sum(piece.cuda())
        assert summed.is_cuda and torch.equal(summed.cpu(), host.allreduce_sum(piece))
    if not direct:
        assert all(buf.is_pinned() for buf in device.buffers.values())
