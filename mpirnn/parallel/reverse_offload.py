"""Offloaded reverse directions: the messages between a stage and the stage below that runs, for
some microbatches, the reverse direction of the stage's first layer (the plan's `offloaded`,
mpirnn/parallel/plan.py `offload_reverse`; docs/parallelism.md, "Balancing the stages").

Stage p owns those weights: its optimizer, gradient sums, clipping and checkpoints never change.
Each step it sends them to p-1 (one flat message); p-1 runs PyTorch's own one-direction kernel
on views of them (`LentLayer`), sends each lent microbatch's outputs up, gets their gradient
back, and returns that microbatch's weight gradient. Stage p adds those gradients one microbatch
at a time through autograd (`accumulate`), as its own backward passes add theirs, so the gradient
reducer's count of passes per parameter holds (mpirnn/parallel/gradients.py). A middle stage can
play both parts at once, with different peers. The executor that decides when each message goes
is mpirnn/parallel/bidirectional_wavefront.py.

    mpirun -n 2 python -m pytest -q --with-mpi -m mpi tests/mpi/test_bidirectional_exact.py -k offloaded
"""

from __future__ import annotations

import torch

from mpirnn.distributed.transport import irecv, isend

# What travels per lent microbatch on the pp communicator, and the weights once a step.
OUTPUTS, OUTPUT_GRAD, WEIGHT_GRAD, WEIGHTS = range(4)
WEIGHT_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def lent_tag(microbatches: int, index: int, kind: int) -> int:
    """After the activations' tags (2m, 2m+1 for m < M): 4 per lent microbatch (`index` among
    them); the weights, once a step, take kind WEIGHTS of index 0. The plan offloads only while
    M <= 4,000, so every tag stays under MPI's guaranteed 32,767."""
    return 2 * microbatches + 4 * index + kind


class LentLayer:
    """The reverse direction of a layer the stage above owns, as mpirnn/models/bidirectional.py
    `run_direction` reads it: views of one flat copy of its weights (sent each step), whose
    gradient is that flat tensor's."""

    def __init__(self, flat: torch.Tensor, shapes: list[tuple], hidden: int, training: bool):
        self.flat, self.hidden_size, self.training, self.nonlinearity = flat, hidden, training, "tanh"
        offset = 0
        for kind, shape in zip(WEIGHT_KINDS, shapes):
            size = torch.Size(shape).numel()
            setattr(self, f"{kind}_l0_reverse", flat[offset:offset + size].view(shape))
            offset += size


def accumulate(weights: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    """Add `grads` to the weights' gradients as a backward pass does (their hooks fire)."""
    torch.autograd.backward(weights, grads)


class Lending:
    """One rank's parts in the offloaded reverse directions of a step: `borrowed`, the microbatches
    whose reverse direction of this stage's first layer the stage below runs; `lent`, those whose
    reverse direction of the next stage's first layer this stage runs."""

    def __init__(self, model, plan, comm, timer):
        self.model, self.comm, self.timer = model, comm, timer
        self.stage, self.microbatches = plan.coords["pp"], plan.microbatches
        offloaded = plan.offloaded or ((),) * plan.grid.pp
        self.borrowed = list(offloaded[self.stage])
        self.lent = list(offloaded[self.stage + 1]) if self.stage + 1 < plan.grid.pp else []
        above = plan.layers[1]
        self.lent_shapes = [model.serial_shapes[f"layers.{above}.{kind}_l0_reverse"] for kind in WEIGHT_KINDS] \
            if self.lent else []
        self.first = plan.layers[0]

    def _tag(self, m: int, kind: int, lending: bool) -> int:
        return lent_tag(self.microbatches, (self.lent if lending else self.borrowed).index(m), kind)

    def owned_weights(self) -> list[torch.Tensor]:
        """This stage's first layer's reverse-direction weights, the ones the stage below borrows."""
        layer = self.model.layers[self.first]
        return [getattr(layer, f"{kind}_l0_reverse") for kind in WEIGHT_KINDS]

    # -- forward -------------------------------------------------------------------------

    def start(self, sends: list, outputs_like) -> tuple[dict, object]:
        """At the start of a step: send our weights down if we borrow, and post the receives of the
        borrowed outputs ({m: Transfer}) and of the weights we will run for the stage above (or
        None). `outputs_like(m)`: an empty [rows, T, H] tensor for microbatch m."""
        outputs_in, weights_in = {}, None
        if self.borrowed:
            flat = torch.cat([w.detach().reshape(-1) for w in self.owned_weights()])
            sends.append(isend(self.comm, flat, self.stage - 1, lent_tag(self.microbatches, 0, WEIGHTS), self.timer,
                               "send reverse weights"))
            outputs_in = {m: irecv(self.comm, outputs_like(m), self.stage - 1, self._tag(m, OUTPUTS, False),
                                   self.timer, f"receive reverse outputs {m}/{self.first}") for m in self.borrowed}
        if self.lent:
            like = torch.empty(sum(torch.Size(s).numel() for s in self.lent_shapes), dtype=self.model.dtype,
                               device=self.model.device)
            weights_in = irecv(self.comm, like, self.stage + 1, lent_tag(self.microbatches, 0, WEIGHTS), self.timer,
                               "receive reverse weights")
        return outputs_in, weights_in

    def layer(self, weights_in, train: bool) -> LentLayer:
        """The stage above's reverse direction, from the weights it sent this step."""
        flat = weights_in.wait()
        return LentLayer(flat.requires_grad_() if train else flat, self.lent_shapes, self.model.hidden,
                         self.model.training)

    def send_outputs(self, m: int, outputs: torch.Tensor, sends: list) -> None:
        sends.append(isend(self.comm, outputs, self.stage + 1, self._tag(m, OUTPUTS, True), self.timer,
                           f"send reverse outputs {m}"))

    # -- backward ------------------------------------------------------------------------

    def expect_gradients(self, outputs_like) -> tuple[dict, dict]:
        """Receives for the gradients of the directions we ran for the stage above, and for our
        weights' gradients from the directions the stage below ran for us."""
        outputs = {m: irecv(self.comm, outputs_like(m), self.stage + 1, self._tag(m, OUTPUT_GRAD, True), self.timer,
                            f"receive reverse output gradient {m}") for m in self.lent}
        if not self.borrowed:
            return outputs, {}
        mine = self.owned_weights()
        flat = torch.empty(sum(w.numel() for w in mine), dtype=mine[0].dtype, device=mine[0].device)
        weights = {m: irecv(self.comm, flat, self.stage - 1, self._tag(m, WEIGHT_GRAD, False), self.timer,
                            f"receive reverse weight gradient {m}") for m in self.borrowed}
        return outputs, weights

    def send_output_gradient(self, m: int, grad: torch.Tensor, sends: list) -> None:
        """The gradient of the outputs the stage below computed for us (its [H, 2H) columns of `grad`)."""
        hidden = self.model.hidden
        sends.append(isend(self.comm, grad[..., hidden:2 * hidden], self.stage - 1, self._tag(m, OUTPUT_GRAD, False),
                           self.timer, f"send reverse output gradient {m}"))

    def send_weight_gradient(self, m: int, layer: LentLayer, sends: list) -> None:
        """After the backward of lent microbatch m: its weights' gradient, up to their owner."""
        grad = layer.flat.grad if layer.flat.grad is not None else torch.zeros_like(layer.flat)
        sends.append(isend(self.comm, grad, self.stage + 1, self._tag(m, WEIGHT_GRAD, True), self.timer,
                           f"send reverse weight gradient {m}"))
        layer.flat.grad = None

    def add_weight_gradients(self, weights_in: dict) -> None:
        """Our weights' gradients from the directions the stage below ran, one microbatch at a time."""
        if not self.borrowed:
            return
        weights = self.owned_weights()
        for m in self.borrowed:
            flat, grads, offset = weights_in.pop(m).wait(), [], 0
            for w in weights:
                grads.append(flat[offset:offset + w.numel()].view_as(w))
                offset += w.numel()
            accumulate(weights, grads)
