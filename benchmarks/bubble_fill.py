"""What state-independent work could fill the sequence-parallel bubble of W1, and what it costs.

    .venv/bin/python benchmarks/bubble_fill.py      # one process, 1 thread, about 20 s

In W1 at sp=2 (LSTM 2x256, embedding 64, 32 rows x 256 steps; M = 4 microbatches of 8 rows,
segments of 128 steps) segment 1 idles while segment 0 runs microbatch 0, and segment 0 idles
at the end of backward. Work that does not need the incoming state could run then:

- the embedding of every microbatch (mpirnn/parallel/wavefront.py does it before the first
  wait);
- the first layer's input products x·W_ihᵀ, but PyTorch's fused LSTM computes them inside the
  same call as the recurrence; taking them out means mpirnn's per-step loop (the tensor-
  parallel path at K = 1, mpirnn/parallel/tensor.py).

This prints each one's forward+backward time beside one fused first-layer unit's.
"""

import torch
from mpi4py import MPI

from interleaved import interleaved_medians   # benchmarks/interleaved.py, beside this script
from mpirnn.parallel.tensor import ShardedRecurrentLayer, TensorGroup

ROWS, STEPS, EMBED, HIDDEN, VOCAB = 8, 128, 64, 256, 256


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(VOCAB, EMBED)
    fused = torch.nn.LSTM(EMBED, HIDDEN, batch_first=True)
    loop = ShardedRecurrentLayer(fused, "lstm", TensorGroup(MPI.COMM_SELF, HIDDEN))
    tokens = torch.randint(0, VOCAB, (ROWS, STEPS))
    x = torch.randn(ROWS, STEPS, EMBED, requires_grad=True)
    zeros = torch.zeros(1, ROWS, HIDDEN)
    grad = torch.randn(ROWS, STEPS, HIDDEN)
    w_ih = fused.weight_ih_l0.detach().clone().requires_grad_()

    def fused_layer():
        fused(x, (zeros, zeros))[0].backward(grad)

    def loop_layer():
        loop.run(x, torch.stack([zeros[0], zeros[0]]))[0].backward(grad)

    def input_products():
        products = x.reshape(-1, EMBED) @ w_ih.t()
        products.backward(torch.ones_like(products))

    def embed():
        out = embedding(tokens)
        out.backward(torch.ones_like(out))

    parts = {"fused first layer": fused_layer, "per-step loop first layer": loop_layer,
             "its input products": input_products, "embedding": embed}
    times = interleaved_medians(parts, repeats=15)
    base = times["fused first layer"]
    for name, seconds in times.items():
        print(f"{name:28s} {1e3 * seconds:8.2f} ms  {seconds / base:6.3f} of the fused layer")


if __name__ == "__main__":
    main()
