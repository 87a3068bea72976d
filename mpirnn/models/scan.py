"""Log-space scans for linear recurrences h_t = a_t * h_{t-1} + b_t (a in (0,1), b > 0).

The linear-recurrent cells (minGRU, minLSTM) reduce a whole sequence to this one
recurrence, so training them needs no per-step Python loop over time. Everything here
is a pure function of tensors shaped [B, T, H] (batch, time, hidden) holding *logs*:
log_a, log_b, log_h. A state h = 0 is log_h = -inf.

A segment of the recurrence is an affine map h_T = A * h_0 + B (its *summary*).
Summaries compose associatively but not commutatively, which is what makes the
sequence axis exact for these cells: each rank summarises its segment, an exclusive
scan of the summaries gives each rank its incoming state, and the rank then finishes
its segment from that state. `incoming_states` is that exclusive scan done serially.

Two exact methods for the in-segment scan (`log_scan(..., method=...)`):

* "logcumsumexp": the paper's formula, log_h = a* + logcumsumexp(log_b - a*) with
  a* = cumsum(log_a). One torch call, but on CPU logcumsumexp is not vectorised and its
  backward costs about three of it. Worse, a* grows like -T: adding it back loses
  ulp(|a*|) of log_h, about 1e-3 relative in float32 at T = 16384.
* "chunked" (the default): the cross-rank algorithm applied inside the segment.
  Time is cut into chunks; one pass of per-step logaddexp (vectorised over batch,
  hidden and all chunks at once) summarises every chunk, a recursive scan of the
  summaries gives every chunk its incoming state, and a second pass finishes the
  chunks. No quantity grows with T, so float32 stays at a few ulp. Its backward is
  written by hand (see `_ChunkedLogScan`) as a reverse linear scan with coefficients
  in [0, 1], again chunked.

Exercise: python -m pytest -q tests/test_linear_cells.py;
timings: python benchmarks/scan_methods.py
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.autograd.function import once_differentiable

Summary = tuple[torch.Tensor, torch.Tensor]
"""(log_A, log_B), each [B, H]: the affine map h -> A * h + B of a whole segment."""

METHODS = ("auto", "chunked", "logcumsumexp")


# ---------------------------------------------------------------- public API


def log_scan(
    log_a: torch.Tensor,
    log_b: torch.Tensor,
    log_h0: torch.Tensor | None = None,
    method: str = "auto",
    chunk: int | None = None,
) -> torch.Tensor:
    """log h_t for t = 1..T of h_t = a_t h_{t-1} + b_t, given log a, log b [B, T, H].

    log_h0 [B, H] is the log of the incoming state; None (or -inf entries) means
    h_0 = 0. Gradients flow to log_a, log_b and log_h0, and are finite when log_h0 is
    -inf (they are 0 there: log h does not move with log h_0 when h_0 = 0).
    log_b must be finite (b > 0), as the cells guarantee.

    method: "auto" (= "chunked", measured fastest on CPU, see benchmarks/scan_methods.py),
    "chunked" or "logcumsumexp" (use the latter if you need double backward).
    chunk: chunk length for "chunked"; None picks one from T.
    """
    _check_shapes(log_a, log_b, log_h0)
    if method not in METHODS:
        raise ValueError(f"log_scan: method must be one of {METHODS}, got {method!r}")
    if method == "logcumsumexp":
        return _log_scan_logcumsumexp(log_a, log_b, log_h0)
    if log_h0 is None:
        log_h0 = log_a.new_full((log_a.shape[0], log_a.shape[2]), -math.inf)
    return _ChunkedLogScan.apply(log_a, log_b, log_h0, chunk or default_chunk(log_a.shape[1]))


def finish_segment(
    log_a: torch.Tensor, log_b: torch.Tensor, log_h0: torch.Tensor | None, **kwargs
) -> torch.Tensor:
    """log h of a segment once its incoming state log_h0 is known.

    This is what a rank does on the sequence axis after the exclusive scan of summaries
    has told it the state at the start of its segment; it is `log_scan` itself, so the
    segments together compute exactly what one serial scan would.
    """
    return log_scan(log_a, log_b, log_h0, **kwargs)


# Below this, exp(r) is under the dtype's rounding relative to 1 (float32 eps ~ e^-16,
# float64 eps ~ e^-36): the incoming state's share of h_t no longer changes h_t at all.
NEGLIGIBLE_LOG_SHARE = {torch.float16: -20.0, torch.bfloat16: -20.0, torch.float32: -40.0, torch.float64: -80.0}


def enter_state(log_a: torch.Tensor, log_h_zero: torch.Tensor, log_h0: torch.Tensor) -> torch.Tensor:
    """log h of a segment entered with state log_h0, from its scan entered with h = 0.

    h_t = A_t h_0 + hz_t with A_t = a_1...a_t, so log h_t = logaddexp(cumsum(log_a)_t + log_h0,
    log_hz_t). The incoming state's share r_t = cumsum(log_a)_t + log_h0 - log_hz_t never
    increases along time (hz_t >= a_t hz_{t-1}), so once it is below rounding for every entry
    the rest of the segment equals log_hz: only a prefix is corrected, in doubling lengths.
    This lets a rank on the sequence axis scan its segment once (for its summary and its
    outputs) instead of twice.
    """
    k, a_star = reached_prefix(log_a, log_h_zero, log_h0)
    head = _logaddexp(a_star + log_h0.unsqueeze(1), log_h_zero[:, :k])
    return head if k == log_a.shape[1] else torch.cat([head, log_h_zero[:, k:]], dim=1)


def reached_prefix(log_a: torch.Tensor, log_h_zero: torch.Tensor, log_h0: torch.Tensor) -> tuple[int, torch.Tensor]:
    """(k, cumsum(log_a) over the first k steps): the steps an incoming state log_h0 still changes.

    Tries k = 64, 256, 1024, ... until the incoming state's share of h is below rounding at
    step k for every entry (it never grows along time, see `enter_state`), or k = T.
    """
    T = log_a.shape[1]
    negligible = NEGLIGIBLE_LOG_SHARE.get(log_a.dtype, -80.0)
    k = min(T, 64)
    while True:
        a_star = torch.cumsum(log_a[:, :k], dim=1)
        share = (a_star[:, -1] + log_h0 - log_h_zero[:, k - 1]).detach()
        if k == T or bool((share < negligible).all()):
            return k, a_star
        k = min(T, 4 * k)


def segment_summary(log_a: torch.Tensor, log_b: torch.Tensor, **kwargs) -> Summary:
    """The segment as one affine map h_T = A h_0 + B: (log_A, log_B), each [B, H].

    log_A = sum_t log a_t; log_B = log h_T when h_0 = 0. Differentiable.
    """
    _check_shapes(log_a, log_b, None)
    return log_a.sum(dim=1), log_scan(log_a, log_b, None, **kwargs)[:, -1]


def combine(left: Summary, right: Summary) -> Summary:
    """The map `left` followed by `right` (time order): A = A_l A_r, B = A_r B_l + B_r.

    Associative, not commutative. Safe with the identity (0, -inf) on either side.
    """
    log_a_left, log_b_left = left
    log_a_right, log_b_right = right
    return log_a_left + log_a_right, _logaddexp(log_a_right + log_b_left, log_b_right)


def apply_summary(summary: Summary, log_h0: torch.Tensor | None) -> torch.Tensor:
    """log(A h_0 + B): the state after a segment entered with state h_0 (None: 0)."""
    log_a, log_b = summary
    if log_h0 is None:
        return log_b
    return _logaddexp(log_a + log_h0, log_b)


def identity_summary(like: torch.Tensor) -> Summary:
    """The map h -> h, (0, -inf) shaped like `like` [B, H]: the exclusive scan's start."""
    return torch.zeros_like(like), torch.full_like(like, -math.inf)


def incoming_states(
    summaries: list[Summary], log_h0: torch.Tensor | None = None
) -> list[torch.Tensor | None]:
    """The state entering each segment, given every segment's summary in time order.

    The serial reference of the cross-rank exclusive scan: entry k is
    apply_summary(summary_0 ∘ ... ∘ summary_{k-1}, log_h0); entry 0 is log_h0 itself
    (None stays None).
    """
    states: list[torch.Tensor | None] = [log_h0]
    for summary in summaries[:-1]:
        states.append(apply_summary(summary, states[-1]))
    return states


def default_chunk(length: int) -> int:
    """Chunk length for the chunked scan: about sqrt(T), between 16 and 128, a divisor of T if one is near.

    A pass over a chunk costs one vectorised step per time step of the chunk, so
    long chunks mean few, large steps (good on CPU) and short chunks mean few steps
    overall (good where each step is a kernel launch). A chunk that divides T saves
    padding: a full copy of each input per pass (8192 steps: 128 instead of 91 made the
    scan 8-9% faster on CPU, benchmarks/w3_breakdown.py). Where two divisors are equally
    near (64 and 128 for 8192), the longer one. See benchmarks/scan_methods.py.
    """
    ideal = min(128.0, max(16.0, math.sqrt(length)))
    divisors = [c for c in range(16, 129) if length % c == 0 and abs(math.log2(c / ideal)) <= 0.5 + 1e-9]
    if divisors:
        return min(divisors, key=lambda c: (round(abs(math.log2(c / ideal)), 6), -c))
    return int(round(ideal))


# ---------------------------------------------------------------- helpers


def _check_shapes(log_a, log_b, log_h0) -> None:
    """Refuse mismatched shapes with a message, before any compute."""
    if log_a.dim() != 3 or log_a.shape != log_b.shape:
        raise ValueError(
            f"log_a and log_b must both be [B, T, H]; got {tuple(log_a.shape)} "
            f"and {tuple(log_b.shape)}"
        )
    if log_a.shape[1] == 0:
        raise ValueError("log_scan needs at least one time step")
    if log_h0 is not None and log_h0.shape != (log_a.shape[0], log_a.shape[2]):
        raise ValueError(
            f"log_h0 must be [B, H] = {(log_a.shape[0], log_a.shape[2])}; "
            f"got {tuple(log_h0.shape)}"
        )


def _logaddexp(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logaddexp whose gradient is 0, not NaN, where both inputs are -inf (h = 0 + 0)."""
    both = torch.isneginf(x) & torch.isneginf(y)
    out = torch.logaddexp(torch.where(both, 0.0, x), torch.where(both, 0.0, y))
    return torch.where(both, -math.inf, out)


def _log_scan_logcumsumexp(log_a, log_b, log_h0):
    """The paper's closed form, differentiated by autograd.

    The incoming state is added with a separate logaddexp rather than as a -inf slot
    inside logcumsumexp, so that no -inf ever reaches logcumsumexp's backward.
    """
    a_star = torch.cumsum(log_a, dim=1)
    log_h = a_star + torch.logcumsumexp(log_b - a_star, dim=1)
    if log_h0 is None:
        return log_h
    return _logaddexp(a_star + log_h0.unsqueeze(1), log_h)


# ------------------------------------------------- chunked scan (no autograd)


@dataclass(frozen=True)
class _Affine:
    """One flavour of x_t = a_t x_{t-1} + b_t: its step, how coefficients compose, its identity.

    The identity step (a, b) = (one, zero) leaves x unchanged; it pads ragged chunks, and
    `zero` is the empty state a chunk is summarised from.
    """

    step: Callable[..., torch.Tensor]  # (a_t, b_t, x, out=None) -> next x
    reduce: Callable[..., torch.Tensor]
    one: float
    zero: float


_LOG = _Affine(lambda a, b, x, out=None: torch.logaddexp(a + x, b, out=out), torch.sum, 0.0, -math.inf)
"""The forward: log(a h + b) from logs."""

_LINEAR = _Affine(lambda a, b, x, out=None: torch.addcmul(b, a, x, out=out), torch.prod, 1.0, 0.0)
"""The backward's adjoint, a linear recurrence with coefficients in [0, 1]."""


def _chunked(x: torch.Tensor, chunk: int, pad: float) -> torch.Tensor:
    """[B, T, H] -> time-major chunks [chunk, B, n, H]: step c of every chunk is x_c[c].

    A view when T is a multiple of `chunk` (no copy); otherwise a copy padded at the end
    with `pad` (the identity step, so the padding changes no state in either direction).
    """
    batch, length, hidden = x.shape
    n_chunks = -(-length // chunk)
    if n_chunks * chunk == length and x.is_contiguous():
        return x.view(batch, n_chunks, chunk, hidden).permute(2, 0, 1, 3)
    padded = x.new_empty((batch, n_chunks * chunk, hidden))
    padded[:, :length] = x
    padded[:, length:] = pad
    return padded.view(batch, n_chunks, chunk, hidden).permute(2, 0, 1, 3)


def _scan_steps(algebra: _Affine, a, b, x, out=None, reverse=False):
    """Run the step over dim 0 of a, b from state x (backwards if reverse); fill `out`."""
    steps = range(a.shape[0] - 1, -1, -1) if reverse else range(a.shape[0])
    for t in steps:
        x = algebra.step(a[t], b[t], x, out=None if out is None else out[t])
    return x


def _scan_chunked(algebra: _Affine, a, b, x0, chunk: int, reverse: bool = False):
    """States x_1..x_T [B, T, H] of x_t = a_t x_{t-1} + b_t from x0 [B, H].

    Summarise every chunk from the empty state (coefficient: `reduce` of a over the
    chunk; offset: the state it ends in), scan the summaries recursively (a chunk is one
    step of the same recurrence), then rerun every chunk from its true incoming state.
    reverse=True runs time backwards (x0 enters after the last step).
    """
    batch, length, hidden = a.shape
    if length <= chunk:
        out = b.new_empty((batch, length, hidden))
        _scan_steps(algebra, a.transpose(0, 1), b.transpose(0, 1), x0, out.transpose(0, 1), reverse)
        return out
    a_c, b_c = _chunked(a, chunk, algebra.one), _chunked(b, chunk, algebra.zero)
    empty = torch.full_like(b_c[0], algebra.zero)
    chunk_b = _scan_steps(algebra, a_c, b_c, empty, reverse=reverse)  # [B, n, H]
    chunk_a = algebra.reduce(a_c, dim=0)
    after = _scan_chunked(algebra, chunk_a, chunk_b, x0, chunk, reverse)
    if reverse:
        before = torch.cat([after[:, 1:], x0.unsqueeze(1)], dim=1)
    else:
        before = torch.cat([x0.unsqueeze(1), after[:, :-1]], dim=1)
    out = b.new_empty((batch, a_c.shape[2] * chunk, hidden))
    out_c = out.view(batch, -1, chunk, hidden).permute(2, 0, 1, 3)
    _scan_steps(algebra, a_c, b_c, before, out_c, reverse)
    return out[:, :length]


class _ChunkedLogScan(torch.autograd.Function):
    """Chunked log-space scan with a hand-written backward.

    Backward, with g_t = dL/dlog h_t and gamma_t = h_t dL/dh_t (total, future included):
        gamma_t = g_t + w_{t+1} gamma_{t+1},   w_t = a_t h_{t-1} / h_t  in [0, 1]
        dL/dlog a_t = gamma_t w_t,   dL/dlog b_t = gamma_t b_t / h_t,
        dL/dlog h_0 = gamma_1 w_1.
    w and b/h are the shares of h_t that come from the carried state and from b_t;
    both are computed from O(1) logs, and the adjoint recurrence has coefficients in
    [0, 1], so it runs in linear space without overflow, chunked like the forward.
    """

    @staticmethod
    def forward(ctx, log_a, log_b, log_h0, chunk):
        log_h = chunked_log_scan(log_a, log_b, log_h0, chunk)
        ctx.save_for_backward(log_a, log_b, log_h0, log_h)
        ctx.chunk = chunk
        return log_h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        log_a, log_b, log_h0, log_h = ctx.saved_tensors
        return (*chunked_scan_grads(log_a, log_b, log_h0, log_h, grad, ctx.chunk, ctx.needs_input_grad[:3]), None)


def chunked_log_scan(log_a: torch.Tensor, log_b: torch.Tensor, log_h0: torch.Tensor, chunk: int) -> torch.Tensor:
    """The chunked scan's forward without autograd: log h [B, T, H] from log_h0 [B, H] (-inf: h_0 = 0)."""
    return _scan_chunked(_LOG, log_a, log_b, log_h0, chunk)


def chunked_scan_grads(log_a, log_b, log_h0, log_h, grad, chunk: int, needs=(True, True, True), head=None):
    """(dL/dlog a, dL/dlog b, dL/dlog h_0) of the scan that gave log_h, from grad = dL/dlog h.

    See `_ChunkedLogScan` for the formulas; `needs` says which of the three to compute
    (None for the others). head [B, k, H], if given, holds the scan's own states for the
    first k steps where log_h holds others (the cross-rank scan corrects that prefix in
    place), so that no full-size copy of the states is needed.
    """
    # next_w[:, t] = w_{t+1} (0 after the last step); w_1 from the incoming state.
    next_w = torch.empty_like(log_h, memory_format=torch.contiguous_format)
    next_w[:, -1] = 0
    if log_h.shape[1] > 1:
        torch.sub(log_h[:, :-1], log_h[:, 1:], out=next_w[:, :-1])
        next_w[:, :-1].add_(log_a[:, 1:]).exp_()
    first = log_h[:, 0]
    if head is not None:
        k = head.shape[1]
        states = torch.cat([head, log_h[:, k:k + 1]], dim=1)   # the prefix and the step after it
        m = states.shape[1] - 1
        torch.sub(states[:, :-1], states[:, 1:], out=next_w[:, :m])
        next_w[:, :m].add_(log_a[:, 1:m + 1]).exp_()
        first = head[:, 0]
    first_w = torch.exp(log_a[:, 0] + log_h0 - first)  # 0 where h_0 = 0
    gamma = _scan_chunked(_LINEAR, next_w, grad, torch.zeros_like(log_h0), chunk, reverse=True)
    grad_a = grad_b = grad_h0 = None
    if needs[0]:
        grad_a = torch.empty_like(gamma)
        if log_h.shape[1] > 1:
            torch.mul(gamma[:, 1:], next_w[:, :-1], out=grad_a[:, 1:])
        torch.mul(gamma[:, 0], first_w, out=grad_a[:, 0])
    if needs[1]:
        grad_b = torch.sub(log_b, log_h).exp_().mul_(gamma)
        if head is not None:
            torch.sub(log_b[:, :k], head, out=grad_b[:, :k]).exp_().mul_(gamma[:, :k])
    if needs[2]:
        grad_h0 = gamma[:, 0] * first_w
    return grad_a, grad_b, grad_h0
