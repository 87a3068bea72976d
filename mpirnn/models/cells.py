"""One time step of rnn / lstm / gru on a slice of the hidden units, forward and backward. No MPI.

Tensor parallelism (mpirnn/parallel/tensor.py) gives each rank h = H/K of a layer's hidden
units and the matching rows of every gate's weights. A step needs the *whole* previous hidden
state h_full [B, H] (the matrix product mixes all units) but produces only this rank's slice;
the caller gathers the slices between steps. With K = 1 the slice is the whole layer and these
steps reproduce PyTorch's nn.RNN / nn.LSTM / nn.GRU exactly (tests/test_tensor_cells.py).

Gate layout follows PyTorch: weight_hh rows are [gate blocks] of h rows each, in the order
(i, f, g, o) for LSTM and (r, z, n) for GRU. The input products x W_ih^T (+ biases) of all
steps are computed before the loop, as one matrix product.

Each `*_forward` returns (new state slice, what backward needs); each `*_backward` takes the
gradient of the new state slice and returns (d input products [B, G*h], d hidden products
[B, G*h], d previous state slice from the elementwise part). The hidden products' gradient
times W_hh is a [B, H] gradient of h_full that the caller sums over the ranks and scatters
back to the slices (for rnn and lstm both product gradients are the same tensor).
"""

from __future__ import annotations

import torch

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
PARTS = {"rnn": 1, "lstm": 2, "gru": 1}


class StepProduct:
    """x @ W^T for a matrix W reused every time step.

    On the CPU in float32 the matrix is packed once into oneDNN's blocked layout: a step's
    product is a thin matrix (batch rows) times a large one, which PyTorch's plain GEMM ran
    1.6x slower than oneDNN's packed one (H = 2048, 16 rows, one thread; the same speed
    PyTorch's own fused nn.LSTM gets). Elsewhere (float64, GPUs, small matrices) a plain product.
    """

    PACK_FROM = 1 << 18  # elements: below this packing costs more than it saves

    def __init__(self, weight: torch.Tensor):
        self.weight = weight
        self.packed = None
        if (weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.numel() >= self.PACK_FROM
                and torch.backends.mkldnn.is_available()):
            try:
                self.packed = weight.detach().contiguous().to_mkldnn()
            except RuntimeError:  # a build without oneDNN support for this: the plain product
                self.packed = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return x @ self.weight.t()
        return torch._C._nn.mkldnn_linear(x.contiguous().to_mkldnn(), self.packed, None).to_dense()


def rnn_forward(xw_t, h_full, state, times_w):
    """xw_t [B, h] holds x W_ih^T + b_ih + b_hh; state [1, B, h]; times_w(h) = h W_hh^T."""
    h = torch.tanh(xw_t + times_w(h_full))
    return h.unsqueeze(0), (h,)


def rnn_backward(grad_state, saved):
    (h,) = saved
    dpre = grad_state[0] * (1 - h * h)
    return dpre, dpre, torch.zeros_like(grad_state)


def lstm_forward(xw_t, h_full, state, times_w):
    """xw_t [B, 4h] holds x W_ih^T + b_ih + b_hh; state [2, B, h] = (h, c)."""
    pre = xw_t + times_w(h_full)
    i, f, g, o = pre.chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * state[1] + i * g
    tanh_c = torch.tanh(c)
    h = o * tanh_c
    return torch.stack([h, c]), (i, f, g, o, tanh_c, state[1])


def lstm_backward(grad_state, saved):
    i, f, g, o, tanh_c, c_prev = saved
    dh, dc = grad_state[0], grad_state[1]
    do = dh * tanh_c
    dc = dc + dh * o * (1 - tanh_c * tanh_c)
    dpre = torch.cat([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g), do * o * (1 - o)], dim=1)
    direct = torch.stack([torch.zeros_like(dh), dc * f])
    return dpre, dpre, direct


def gru_forward(xw_t, h_full, state, times_w, b_hh, h_slice):
    """xw_t [B, 3h] holds x W_ih^T + b_ih; b_hh stays inside (n uses r * (W_hn h + b_hn)).
    h_slice is this rank's columns of h_full (the previous state slice)."""
    gh = b_hh + times_w(h_full)
    xr, xz, xn = xw_t.chunk(3, dim=1)
    hr, hz, hn = gh.chunk(3, dim=1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    h = (1 - z) * n + z * h_slice
    return h.unsqueeze(0), (r, z, n, hn, h_slice)


def gru_backward(grad_state, saved):
    """Returns (d input products [B, 3h], d gh = d(h_full W_hh^T + b_hh) [B, 3h], direct)."""
    r, z, n, hn, h_slice = saved
    dh = grad_state[0]
    dn = dh * (1 - z) * (1 - n * n)
    dz = dh * (h_slice - n) * z * (1 - z)
    dr = dn * hn * r * (1 - r)
    dpre_x = torch.cat([dr, dz, dn], dim=1)
    dpre_h = torch.cat([dr, dz, dn * r], dim=1)
    return dpre_x, dpre_h, (dh * z).unsqueeze(0)
