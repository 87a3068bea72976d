"""Staging buffers of point-to-point messages (mpirnn/distributed/staging.py): bounded under
variable lengths, never shared by two messages in flight, and the staged path delivers the data.

    python -m pytest -q tests/test_staging_pool.py

The staged path is what a GPU without CUDA-aware MPI takes; `stage_host=True` sends CPU
tensors through it so it is tested here without one.
"""

import torch

from mpirnn.distributed import transport
from mpirnn.distributed.staging import StagingPool


def test_variable_shapes_reuse_one_buffer_that_only_grows():
    pool = StagingPool(pinned=False)
    key = ("send", 1, 0, 7)
    largest = 0
    for rows, steps in [(4, 100), (4, 37), (3, 250), (4, 12), (2, 250), (4, 180)]:
        view, flat = pool.take(key, (rows, steps, 8), torch.float64)
        assert view.shape == (rows, steps, 8)
        largest = max(largest, rows * steps * 8)
        pool.give_back(key, flat)
        # One idle buffer per message, as large as the largest message so far (a shape-keyed
        # cache held six here and would keep growing with every new length).
        assert pool.held_bytes() == largest * 8
    assert pool.lent == 0


def test_messages_in_flight_at_once_get_different_buffers():
    pool = StagingPool(pinned=False)
    key = ("recv", 1, 1, 3)
    first, first_flat = pool.take(key, (2, 5), torch.float32)
    second, second_flat = pool.take(key, (2, 5), torch.float32)
    assert first_flat.data_ptr() != second_flat.data_ptr()
    pool.give_back(key, first_flat)
    pool.give_back(key, second_flat)
    # Both come back, and the next two messages reuse them instead of pinning new memory.
    again = {pool.take(key, (2, 5), torch.float32)[1].data_ptr() for _ in range(2)}
    assert again == {first_flat.data_ptr(), second_flat.data_ptr()}


def test_keys_and_dtypes_do_not_share():
    pool = StagingPool(pinned=False)
    _, a = pool.take(("send", 1, 0, 7), (3,), torch.float32)
    pool.give_back(("send", 1, 0, 7), a)
    _, b = pool.take(("send", 1, 0, 8), (3,), torch.float32)
    _, c = pool.take(("send", 1, 0, 7), (3,), torch.float64)
    assert len({a.data_ptr(), b.data_ptr(), c.data_ptr()}) == 3


class LoopbackComm:
    """One process that sends to itself: Isend copies the bytes at once, Irecv takes them at Wait."""

    class Request:
        def __init__(self, on_wait=None):
            self.on_wait = on_wait

        def Wait(self):  # noqa: N802 - mpi4py's names
            if self.on_wait:
                self.on_wait()

        def Test(self):  # noqa: N802
            return True

    def __init__(self):
        self.mailbox, self.addresses = {}, []

    def Isend(self, buffer, dest, tag):  # noqa: N802
        self.addresses.append(buffer.__array_interface__["data"][0])
        self.mailbox.setdefault(tag, []).append(buffer.copy())
        return self.Request()

    def Irecv(self, buffer, source, tag):  # noqa: N802
        def deliver():
            buffer[...] = self.mailbox[tag].pop(0)
        return self.Request(deliver)


def test_staged_messages_of_changing_lengths_arrive_whole_and_keep_one_buffer(monkeypatch):
    monkeypatch.setattr(transport, "_STAGING", StagingPool(pinned=False))
    comm = LoopbackComm()
    for step, steps in enumerate([64, 17, 200, 5, 200, 90]):
        sent = torch.randn(3, steps, 4, dtype=torch.float64)
        send = transport.isend(comm, sent, 0, tag=11, stage_host=True)
        assert comm.addresses[-1] != sent.data_ptr()   # staged: MPI read a host copy
        receive = transport.irecv(comm, torch.empty_like(sent), 0, tag=11, stage_host=True)
        send.wait()
        assert torch.equal(receive.wait(), sent)
    pool = transport.staging_pool()
    assert pool.lent == 0
    # One buffer per direction, each as large as the longest message (200 steps).
    assert pool.held_bytes() == 2 * 3 * 200 * 4 * 8


def test_unstaged_cpu_send_hands_mpi_the_tensor_itself():
    comm = LoopbackComm()
    sent = torch.arange(6.0)
    transport.isend(comm, sent, 0, tag=1).wait()
    assert comm.addresses[-1] == sent.data_ptr()


def test_pool_pins_its_buffers_where_cuda_exists():
    import pytest
    if not torch.cuda.is_available():
        pytest.skip("pinned memory needs CUDA; the GPU check (benchmarks/gpu_check.sh) runs this")
    view, flat = StagingPool().take(("send", 1, 0, 1), (4, 4), torch.float32)
    assert flat.is_pinned() and view.is_pinned()
