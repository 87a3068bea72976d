"""minGRU / minLSTM and the log-space scans, against per-step references. No MPI.

Run: python -m pytest -q tests/test_linear_cells.py
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from mpirnn.models.linear_cells import MinGRU, MinLSTM, log_g, log_state
from mpirnn.models.scan import (
    apply_summary,
    combine,
    finish_segment,
    identity_summary,
    incoming_states,
    log_scan,
    segment_summary,
)

F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)
# Every method, and the chunked one with chunks short enough to pad and to recurse.
METHODS = [
    dict(method="auto"),
    dict(method="logcumsumexp"),
    dict(method="chunked", chunk=3),
    dict(method="chunked", chunk=8),
]


def random_gates(batch, length, hidden, dtype=F64, seed=0):
    """log a < 0 and finite log b, as the cells make them; leaves that require grad."""
    gen = torch.Generator().manual_seed(seed)
    log_a = -F.softplus(torch.randn(batch, length, hidden, generator=gen, dtype=F64))
    log_b = torch.randn(batch, length, hidden, generator=gen, dtype=F64)
    return log_a.to(dtype).requires_grad_(), log_b.to(dtype).requires_grad_()


def loop_scan(log_a, log_b, h0=None):
    """Reference: h_t = a_t h_{t-1} + b_t one step at a time, in linear space."""
    a, b = log_a.exp(), log_b.exp()
    h = torch.zeros_like(a[:, 0]) if h0 is None else h0
    out = []
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


def grads(output, inputs, seed=1):
    """Gradients of a random linear functional of `output` (every element matters)."""
    weight = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    loss = (output * weight.to(output.dtype)).sum()
    return torch.autograd.grad(loss, inputs)


def assert_all_close(xs, ys, **tol):
    for x, y in zip(xs, ys, strict=True):
        torch.testing.assert_close(x, y, **(tol or TOL))


def split_scan(log_a, log_b, lengths, log_h0=None, **kwargs):
    """The cross-rank algorithm in one process: summarise each segment, exclusive
    combine of the summaries (with `combine`, as an Exscan would), finish each segment."""
    bounds = torch.tensor([0, *lengths]).cumsum(0).tolist()
    assert bounds[-1] == log_a.shape[1]
    segments = [(log_a[:, s:e], log_b[:, s:e]) for s, e in zip(bounds, bounds[1:])]
    summaries = [segment_summary(a, b, **kwargs) for a, b in segments]
    prefix = identity_summary(log_a[:, 0])
    outputs = []
    for (a, b), summary in zip(segments, summaries):
        outputs.append(finish_segment(a, b, apply_summary(prefix, log_h0), **kwargs))
        prefix = combine(prefix, summary)
    return torch.cat(outputs, dim=1)


# ------------------------------------------------------------ log_scan


@pytest.mark.parametrize("kwargs", METHODS)
@pytest.mark.parametrize("with_h0", [False, True])
def test_log_scan_matches_step_loop(kwargs, with_h0):
    log_a, log_b = random_gates(3, 29, 5)
    h0 = torch.rand(3, 5, dtype=F64).add(0.1).requires_grad_() if with_h0 else None
    inputs = [log_a, log_b] + ([h0] if with_h0 else [])
    got = log_scan(log_a, log_b, None if h0 is None else h0.log(), **kwargs)
    want = loop_scan(log_a, log_b, h0).log()
    torch.testing.assert_close(got, want, **TOL)
    assert_all_close(grads(got, inputs), grads(want, inputs))


@pytest.mark.parametrize("length", [1, 2, 3, 7, 64])
def test_short_and_ragged_lengths(length):
    log_a, log_b = random_gates(2, length, 3)
    want = loop_scan(log_a, log_b).log()
    got = log_scan(log_a, log_b, method="chunked", chunk=3)
    torch.testing.assert_close(got, want, **TOL)
    assert_all_close(grads(got, [log_a, log_b]), grads(want, [log_a, log_b]))


def test_hand_written_backward_passes_gradcheck():
    log_a, log_b = random_gates(2, 11, 3)
    log_h0 = torch.randn(2, 3, dtype=F64, requires_grad=True)

    def scan(a, b, h0):
        return log_scan(a, b, h0, method="chunked", chunk=3)

    assert torch.autograd.gradcheck(scan, (log_a, log_b, log_h0))


@pytest.mark.parametrize("kwargs", METHODS)
def test_zero_state_gives_finite_gradients(kwargs):
    """h_0 = 0 given as None, or as -inf in some rows: gradients finite, 0 for those rows."""
    log_a, log_b = random_gates(3, 20, 4)
    log_h0 = torch.randn(3, 4, dtype=F64)
    log_h0[1] = -math.inf
    log_h0.requires_grad_()
    g_a, g_b, g_h0 = grads(log_scan(log_a, log_b, log_h0, **kwargs), [log_a, log_b, log_h0])
    assert all(torch.isfinite(g).all() for g in (g_a, g_b, g_h0))
    assert (g_h0[1] == 0).all() and (g_h0[0] != 0).all()
    g_none = grads(log_scan(log_a, log_b, None, **kwargs), [log_a, log_b])
    assert all(torch.isfinite(g).all() for g in g_none)
    # Row 1 has h_0 = 0 both ways, so it must agree with the None run.
    torch.testing.assert_close(g_none[0][1], g_a[1], **TOL)


def test_shape_errors_are_clear():
    log_a, log_b = random_gates(2, 5, 3)
    with pytest.raises(ValueError, match="log_a and log_b"):
        log_scan(log_a, log_b[:, :4])
    with pytest.raises(ValueError, match="log_h0"):
        log_scan(log_a, log_b, torch.zeros(2, 4, dtype=F64))
    with pytest.raises(ValueError, match="method"):
        log_scan(log_a, log_b, method="fast")


# ------------------------------------------------------------ summaries and the split scan


def test_summary_is_the_segment_map():
    log_a, log_b = random_gates(2, 13, 3)
    h0 = torch.rand(2, 3, dtype=F64) + 0.5
    after = apply_summary(segment_summary(log_a, log_b), h0.log())
    torch.testing.assert_close(after.exp(), loop_scan(log_a, log_b, h0)[:, -1], **TOL)


def test_combine_is_associative_not_commutative():
    pieces = [random_gates(2, n, 3, seed=s) for s, n in enumerate([4, 9, 6])]
    s1, s2, s3 = [segment_summary(a, b) for a, b in pieces]
    assert_all_close(combine(combine(s1, s2), s3), combine(s1, combine(s2, s3)))
    # Composition in time order equals summarising the concatenated segment.
    whole = segment_summary(*(torch.cat(parts, dim=1) for parts in zip(*pieces)))
    assert_all_close(combine(combine(s1, s2), s3), whole)
    # Swapping the order gives a different map (same A, different B).
    swapped = combine(s2, s1)
    torch.testing.assert_close(swapped[0], combine(s1, s2)[0], **TOL)
    assert (swapped[1] - combine(s1, s2)[1]).abs().min() > 1e-3


def test_identity_summary_is_neutral_and_safe():
    log_a, log_b = random_gates(2, 6, 3)
    summary = segment_summary(log_a, log_b)
    ident = identity_summary(summary[0])
    assert_all_close(combine(ident, summary), summary)
    assert_all_close(combine(summary, ident), summary)
    # Identity applied to h_0 = 0 is 0 + 0: -inf with a zero (not NaN) gradient.
    log_h0 = torch.full((2, 3), -math.inf, dtype=F64, requires_grad=True)
    out = apply_summary(combine(ident, ident), log_h0)
    assert torch.isneginf(out).all()
    (grad,) = torch.autograd.grad(out.clamp(min=-1.0).sum(), log_h0)
    assert (grad == 0).all()


@pytest.mark.parametrize("lengths", [[7, 20, 1, 22], [50], [1] * 5 + [45], [25, 25]])
@pytest.mark.parametrize("with_h0", [False, True])
def test_split_scan_equals_whole_scan(lengths, with_h0):
    log_a, log_b = random_gates(3, 50, 4)
    log_h0 = torch.randn(3, 4, dtype=F64, requires_grad=True) if with_h0 else None
    inputs = [log_a, log_b] + ([log_h0] if with_h0 else [])
    whole = log_scan(log_a, log_b, log_h0)
    split = split_scan(log_a, log_b, lengths, log_h0)
    torch.testing.assert_close(split, whole, **TOL)
    assert_all_close(grads(split, inputs), grads(whole, inputs))


def test_split_scan_uses_the_state_it_is_given():
    """Guards the test above: finishing every segment from h_0 = 0 (the 'independent
    segments' shortcut) is not exact, and the comparison notices."""
    log_a, log_b = random_gates(3, 50, 4)
    whole = log_scan(log_a, log_b)
    naive = torch.cat([log_scan(log_a[:, s:e], log_b[:, s:e]) for s, e in [(0, 20), (20, 50)]], 1)
    assert (naive - whole).abs().max() > 1e-3


def test_incoming_states_fold_the_summaries():
    log_a, log_b = random_gates(2, 30, 3)
    log_h0 = torch.randn(2, 3, dtype=F64)
    bounds = [0, 4, 15, 30]
    summaries = [segment_summary(log_a[:, s:e], log_b[:, s:e]) for s, e in zip(bounds, bounds[1:])]
    states = incoming_states(summaries, log_h0)
    whole = log_scan(log_a, log_b, log_h0)
    torch.testing.assert_close(states[0], log_h0, **TOL)
    for state, start in zip(states[1:], bounds[1:-1]):
        torch.testing.assert_close(state, whole[:, start - 1], **TOL)
    assert incoming_states(summaries)[0] is None


def test_long_sequence_float64():
    log_a, log_b = random_gates(1, 16384, 4)
    whole = log_scan(log_a, log_b)
    torch.testing.assert_close(split_scan(log_a, log_b, [5000, 3, 8000, 3381]), whole, **TOL)
    torch.testing.assert_close(whole, log_scan(log_a, log_b, method="logcumsumexp"), rtol=0, atol=1e-8)


def test_long_sequence_float32_chunked_matches_whole():
    log_a, log_b = random_gates(2, 4096, 8, dtype=torch.float32)
    whole = log_scan(log_a, log_b)
    split = split_scan(log_a, log_b, [1000, 1, 2000, 1095])
    torch.testing.assert_close(split.exp(), whole.exp(), rtol=1e-5, atol=0)
    for got, want in zip(grads(split, [log_a, log_b]), grads(whole, [log_a, log_b])):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # And both are accurate: float32 against the same scan in float64.
    exact = log_scan(log_a.double(), log_b.double())
    torch.testing.assert_close(whole.double().exp(), exact.exp(), rtol=1e-5, atol=0)


# ------------------------------------------------------------ the cells


def mingru_loop(cell, x, h0):
    """minGRU in linear space from the paper: h = (1 - z) h + z g(p)."""
    k, p = cell.linear(x).chunk(2, dim=-1)
    z = torch.sigmoid(k)
    g = torch.where(p >= 0, p + 0.5, torch.sigmoid(p))
    return loop_scan((1 - z).log(), (z * g).log(), h0)


def minlstm_loop(cell, x, h0):
    """minLSTM in linear space: f' = f / (f + i), i' = i / (f + i), h = f' h + i' g(p)."""
    f, i, p = cell.linear(x).chunk(3, dim=-1)
    f, i = torch.sigmoid(f), torch.sigmoid(i)
    g = torch.where(p >= 0, p + 0.5, torch.sigmoid(p))
    return loop_scan((f / (f + i)).log(), (i / (f + i) * g).log(), h0)


CELLS = [(MinGRU, mingru_loop), (MinLSTM, minlstm_loop)]


def make_cell(cls, seed=0):
    torch.manual_seed(seed)
    return cls(5, 6).double()


@pytest.mark.parametrize("cls, reference", CELLS)
@pytest.mark.parametrize("with_h0", [False, True])
def test_cell_matches_linear_space_loop(cls, reference, with_h0):
    cell = make_cell(cls)
    x = torch.randn(3, 23, 5, dtype=F64, requires_grad=True)
    h0 = torch.rand(3, 6, dtype=F64).add(0.1).requires_grad_() if with_h0 else None
    inputs = [x, *cell.parameters()] + ([h0] if with_h0 else [])
    h, h_last = cell(x, h0)
    want = reference(cell, x, h0)
    torch.testing.assert_close(h, want, **TOL)
    torch.testing.assert_close(h_last, want[:, -1], **TOL)
    assert_all_close(grads(h, inputs), grads(want, inputs))


@pytest.mark.parametrize("cls", [MinGRU, MinLSTM])
def test_cell_initial_state(cls):
    cell = make_cell(cls)
    x = torch.randn(2, 10, 5, dtype=F64)
    h_none, last_none = cell(x)
    h_zero, _ = cell(x, torch.zeros(2, 6, dtype=F64))
    torch.testing.assert_close(h_zero, h_none, **TOL)
    h_pos, _ = cell(x, torch.full((2, 6), 2.0, dtype=F64))
    assert (h_pos > h_none).all()  # a > 0: a positive state raises every later h
    # Carrying the final state across a cut reproduces the uncut run.
    first, carry = cell(x[:, :4])
    second, _ = cell(x[:, 4:], carry)
    torch.testing.assert_close(torch.cat([first, second], 1), h_none, **TOL)


@pytest.mark.parametrize("cls", [MinGRU, MinLSTM])
def test_cell_gates_are_valid(cls):
    cell = make_cell(cls)
    log_a, log_b = cell.gates(30 * torch.randn(4, 50, 5, dtype=F64))
    assert log_a.shape == log_b.shape == (4, 50, 6)
    assert (log_a < 0).all() and torch.isfinite(log_a).all() and torch.isfinite(log_b).all()


@pytest.mark.parametrize("cls", [MinGRU, MinLSTM])
def test_cell_construction_is_seeded(cls):
    a, b, c = make_cell(cls, 0), make_cell(cls, 0), make_cell(cls, 1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.linear.weight, c.linear.weight)


def test_cell_float32_with_zero_state_has_finite_gradients():
    cell = make_cell(MinLSTM).float()
    x = torch.randn(2, 300, 5, requires_grad=True)
    h, _ = cell(x, torch.zeros(2, 6))
    gradients = torch.autograd.grad(h.sum(), [x, *cell.parameters()])
    assert all(torch.isfinite(g).all() for g in gradients)


def test_log_g_and_log_state():
    p = torch.tensor([-800.0, -3.0, 0.0, 2.0, 1e4], dtype=F64, requires_grad=True)
    want = torch.where(p >= 0, p + 0.5, torch.sigmoid(p))
    torch.testing.assert_close(log_g(p)[1:].exp(), want[1:], **TOL)
    assert torch.isclose(log_g(p)[0], torch.tensor(-800.0, dtype=F64))  # sigmoid underflows
    (grad,) = torch.autograd.grad(log_g(p).sum(), p)
    assert torch.isfinite(grad).all()
    h = torch.tensor([0.0, 1.0, 3.0], dtype=F64, requires_grad=True)
    logs = log_state(h)
    assert torch.isneginf(logs[0]) and logs[1] == 0
    (grad,) = torch.autograd.grad(logs[1:].sum(), h)
    assert grad[0] == 0 and torch.isfinite(grad).all()


@pytest.mark.parametrize("reverse", [False, True])
def test_chunked_driver_pads_with_the_identity(reverse):
    """The two-level driver itself, both directions, ragged length, non-zero entry state
    (the backward only ever enters with 0, so the end-to-end tests cannot see this)."""
    from mpirnn.models.scan import _LINEAR, _scan_chunked

    gen = torch.Generator().manual_seed(3)
    a = torch.rand(2, 23, 3, generator=gen, dtype=F64)
    b = torch.randn(2, 23, 3, generator=gen, dtype=F64)
    x0 = torch.randn(2, 3, generator=gen, dtype=F64)
    order = range(22, -1, -1) if reverse else range(23)
    x, want = x0, torch.empty_like(b)
    for t in order:
        x = a[:, t] * x + b[:, t]
        want[:, t] = x
    torch.testing.assert_close(_scan_chunked(_LINEAR, a, b, x0, 4, reverse), want, **TOL)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_enter_state_equals_a_scan_from_that_state(dtype, tol):
    """One zero-start scan plus a prefix correction gives the scan from the real incoming state,
    in values and gradients, also when the correction stops early (a long, fast-forgetting segment)."""
    from mpirnn.models.scan import enter_state

    generator = torch.Generator().manual_seed(3)
    log_a = (-torch.rand(2, 1000, 5, generator=generator, dtype=dtype) * 2).requires_grad_()
    log_b = torch.randn(2, 1000, 5, generator=generator, dtype=dtype).requires_grad_()
    log_h0 = (torch.randn(2, 5, generator=generator, dtype=dtype) + 3).requires_grad_()
    direct = log_scan(log_a, log_b, log_h0)
    corrected = enter_state(log_a, log_scan(log_a, log_b, None), log_h0)
    torch.testing.assert_close(corrected, direct, rtol=tol, atol=tol)
    weights = torch.randn(direct.shape, generator=generator, dtype=dtype)
    expected = torch.autograd.grad((direct * weights).sum(), (log_a, log_b, log_h0))
    got = torch.autograd.grad((corrected * weights).sum(), (log_a, log_b, log_h0))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=tol, atol=tol)


def _segment_inputs(dtype, length, remembering, seed=4):
    """Gates for one segment and a large incoming state. remembering=True: a close to 1 and b small,
    so the incoming state dominates the whole segment (every step corrected, w near 1)."""
    generator = torch.Generator().manual_seed(seed)
    scale = 1e-3 if remembering else 2.0
    log_a = -torch.rand(2, length, 5, generator=generator, dtype=F64) * scale
    log_b = torch.randn(2, length, 5, generator=generator, dtype=F64) - (8.0 if remembering else 0.0)
    log_h0 = torch.randn(2, 5, generator=generator, dtype=F64) + 3
    weights = torch.randn(2, length, 5, generator=generator, dtype=F64)
    return [t.to(dtype) for t in (log_a, log_b, log_h0, weights)]


def _values_and_grads(function, log_a, log_b, log_h0, weights):
    leaves = [t.clone().requires_grad_() for t in (log_a, log_b, log_h0)]
    out = function(*leaves)
    return (out, *torch.autograd.grad((out * weights).sum(), leaves))


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
@pytest.mark.parametrize("length, remembering", [(1000, False), (300, True), (40, False)])
def test_segment_scan_equals_a_scan_from_the_incoming_state(dtype, rtol, length, remembering):
    """The cross-rank scan's Function on one rank (COMM_SELF: the incoming state is the initial state
    given) gives the plain scan from that state, in values and gradients: when the correction stops
    early (1000 fast-forgetting steps), when it covers the segment with the incoming state dominant
    (w near 1: its gradient share must not cancel in float32), and for a segment shorter than 64.
    float32 is held to a float64 reference."""
    from mpi4py import MPI

    from mpirnn.models.scan import default_chunk
    from mpirnn.parallel.linear_scan import SegmentScan

    inputs = _segment_inputs(dtype, length, remembering)
    chunk = default_chunk(length)
    got = _values_and_grads(lambda a, b, h0: SegmentScan.apply(a, b, h0, MPI.COMM_SELF, None, chunk), *inputs)
    exact = _values_and_grads(lambda a, b, h0: log_scan(a, b, h0), *[t.double() for t in inputs])
    for name, g, e in zip(("log h", "d log a", "d log b", "d log h0"), got, exact):
        scale = e.abs().amax(dim=1, keepdim=True) if e.dim() == 3 else e.abs()
        error = ((g.double() - e).abs() / scale.clamp_min(1e-300)).max().item()
        assert error <= rtol, f"{name}: relative error {error:.1e} > {rtol:.0e}"
