"""The executor: walks the schedule (mpirnn/parallel/schedule.py) for one step on this rank.

Forward runs the units in order. A unit takes its incoming state (from the previous chunk,
from segment s-1 or the initial state), its input activations (the embedding on stage 0,
else received from stage p-1), runs this stage's layers over the chunk with PyTorch's fused
modules (or the cross-rank scan in "scan" mode), and sends what the next ranks need with
nonblocking sends, so transfers overlap the next unit's compute. Each unit is its own
autograd graph: received tensors and the state handed from chunk to chunk are leaves.
Backward runs the units in reverse, feeding each one the gradients of its outputs (from
stage p+1, or its loss on the last stage) and of its final state (from the next chunk or
segment s+1), and sends the gradients of its leaves back. Each unit's loss is a sum divided
by the global element count, so the units' losses add up to the serial loss exactly.

Rows of different lengths (labelled tasks): a unit runs its layers only up to the last valid
step of its longest row inside its chunk, and none at all for a chunk that is all padding for
its rows (its final state is then its incoming one). The outputs past that point are zeros that
nothing scores, so no padded step costs a recurrent step and none changes a result
(docs/tasks.md, "Variable lengths"). The scan mode runs whole segments. Bidirectional layers
run like the others with sp = 1, with each row's length in the unit (where its reverse direction
starts); their plans have one chunk, so a unit holds whole rows (docs/parallelism.md,
"Bidirectional layers"). With sp > 1 they run on mpirnn/parallel/bidirectional_wavefront.py.

Where states pass between segments (the chain with sp > 1), a unit runs its layers one at a
time, each its own autograd graph, and sends each layer's final state as soon as that layer
is done: the next segment starts a microbatch as soon as the first layer of its last chunk is
done instead of the whole unit, which with one chunk cuts the sequence chain's bubble by the
stage's layer count (docs/parallelism.md, "Layer by layer along the sequence chain"). Backward
mirrors it: the top layer's state gradient leaves first.

    python -m pytest -q --with-mpi -m mpi tests/mpi/test_exact_step.py   (under mpirun -n 1..4)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mpirnn.distributed.transport import irecv, isend
from mpirnn.models.precision import FLOAT32
from mpirnn.parallel.linear_scan import scan_layers
from mpirnn.parallel.schedule import (Position, Unit, activation_grad_tag, activation_tag, backward_order,
                                      forward_order, state_grad_tag, state_tag)


@dataclass
class GroupGraph:
    """One group of consecutive layers of a unit (all the stage's layers, or one of them)."""

    start: torch.Tensor           # incoming states (a leaf when they came from a peer or the previous chunk)
    below: torch.Tensor | None    # the group below's outputs as a leaf; None for the stage's first group
    outputs: torch.Tensor         # the group's top outputs over the chunk
    final: torch.Tensor           # final states of the group's layers


@dataclass
class UnitGraph:
    """What backward needs of one unit's forward."""

    groups: list[GroupGraph]      # bottom to top
    inputs: torch.Tensor | None   # received activations (a leaf), None on stage 0
    loss: torch.Tensor | None     # last stage: this unit's share of the loss, of `head_in`
    head_in: torch.Tensor | None  # last stage: what the loss was taken of (the top outputs, or them detached)

    @property
    def outputs(self) -> torch.Tensor:
        return self.groups[-1].outputs


class Wavefront:
    """One rank's part of a step for a given plan; reusable from step to step."""

    def __init__(self, model, plan, comms, precision=FLOAT32):
        self.model, self.plan, self.comms = model, plan, comms
        self.precision = precision  # what runs in reduced precision (mpirnn/models/precision.py)
        self.sp, self.pp = comms.axis["sp"], comms.axis["pp"]
        self.position = Position(plan.coords["sp"], plan.grid.sp, plan.coords["pp"], plan.grid.pp,
                                 chain=plan.mode == "chain")
        self.layers = range(*plan.layers)
        # Layer groups [start, stop) as offsets into the stage's layers: one per layer where the
        # next segment waits for the states (so it can start a layer behind), else all at once.
        per_layer = plan.mode == "chain" and plan.grid.sp > 1
        count = len(self.layers)
        self.groups = [(i, i + 1) for i in range(count)] if per_layer else [(0, count)]
        self.rows = plan.microbatch_rows()
        self.steps = plan.chunk_steps()
        self.units = forward_order(plan.microbatches, plan.chunks)
        # Where backward starts by waiting for the next segment's state gradient, the loss's
        # backward (through the head) runs in that wait, unit after unit until the first state
        # gradient arrives (the rest just before their own unit's backward): the loss is then
        # taken of the outputs detached, so that its backward can run on its own.
        first_back = backward_order(plan.microbatches, plan.chunks)[:1]
        self.loss_ahead = plan.last_stage and any(self.position.state_to_peer(u, plan.chunks) for u in first_back)

    # -- shapes of what arrives ----------------------------------------------------------

    def _state_like(self, m: int, group: int) -> torch.Tensor:
        rows = self.rows[m].stop - self.rows[m].start
        return self.model.zero_state(rows, self._like, self._layers_of(group))

    def _layers_of(self, group: int) -> range:
        first, stop = self.groups[group]
        return range(self.layers.start + first, self.layers.start + stop)

    def _layer_label(self, group: int) -> str:
        """' layer l' where units run layer by layer (trace and wait labels), else nothing."""
        return "" if len(self.groups) == 1 else f" layer {self._layers_of(group).start}"

    def _span(self, what: str, unit: Unit, group: int) -> str:
        return f"{what} {unit.microbatch}.{unit.chunk}{self._layer_label(group)}"

    def _activation_like(self, unit: Unit) -> torch.Tensor:
        rows = self.rows[unit.microbatch].stop - self.rows[unit.microbatch].start
        steps = self.steps[unit.chunk].stop - self.steps[unit.chunk].start
        return torch.empty(rows, steps, self.model.output_width, dtype=self.model.dtype, device=self._like.device)

    # -- one step ------------------------------------------------------------------------

    def __call__(self, inputs, targets, state, norm: float, lengths=None, noise=None):
        """Forward and backward of this rank's units.

        inputs: this rank's rows and segment (stage 0 only, else None); targets likewise on the
        last stage; state: the initial states [stage layers, parts, rows, hidden] (used on
        segment 0); lengths: each of this rank's rows' length (every stage), or None where every
        row fills the sequence; noise: the step's dropout key (mpirnn/models/dropout.py) or None.
        Returns (this rank's share of the loss as a float64 CPU scalar,
        the final states of its rows at the end of its segment — the step's final states on the
        last segment).
        """
        self._like = state  # device and dtype of what arrives
        with self.precision.autocast():  # the forward only: backward runs in each op's forward dtype
            graphs, sends, finals, _ = self._forward(inputs, targets, state, norm, lengths, noise=noise)
        total = self._backward(graphs, sends)
        for send in sends:
            send.wait()
        return total, torch.cat(finals, dim=2)

    @torch.no_grad()
    def evaluate(self, inputs, targets, state, norm: float, observe=None, lengths=None):
        """Forward only (validation, evaluation): the same units, edges and sends, no graphs.

        Returns (this rank's share of the loss, the final states at the end of its segment).
        `observe(outputs, targets)` is called on the last stage for every unit, with the
        stage's top outputs and the chunk's targets, to accumulate other measures.
        """
        self._like = state
        with self.precision.autocast():
            _, sends, finals, total = self._forward(inputs, targets, state, norm, lengths, observe=observe,
                                                    train=False)
        for send in sends:
            send.wait()
        return total, torch.cat(finals, dim=2)

    def _forward(self, inputs, targets, state, norm, lengths=None, observe=None, train=True, noise=None):
        pos, C, G, timer = self.position, self.plan.chunks, len(self.groups), self.comms.timer
        states_in = {(u.microbatch, g): irecv(self.sp, self._state_like(u.microbatch, g), pos.segment - 1,
                                              state_tag(u, g, G), timer,
                                              f"receive state {u.microbatch}{self._layer_label(g)} "
                                              f"from segment {pos.segment - 1}")
                     for u in self.units if pos.state_from_peer(u) for g in range(G)}
        inputs_in = {u: irecv(self.pp, self._activation_like(u), pos.stage - 1, activation_tag(u, C), timer,
                              f"receive inputs {u.microbatch}.{u.chunk} from stage {pos.stage - 1}")
                     for u in self.units} if pos.inputs_from_peer() else {}
        graphs, sends, previous, finals = {}, [], {}, []
        total = torch.zeros((), dtype=torch.float64)
        leaf = (lambda t: t.requires_grad_()) if train else (lambda t: t)
        def embed(unit):
            with timer.tracer.span(f"embed {unit.microbatch}.{unit.chunk}"):
                return self.model.embed(inputs[self.rows[unit.microbatch], self.steps[unit.chunk]])
        # The embedding needs no incoming state: where the first unit waits for one, embed every unit
        # while it is on its way (docs/performance.md, "Filling the bubble"); elsewhere as each unit runs.
        ahead = not pos.inputs_from_peer() and bool(self.units) and pos.state_from_peer(self.units[0])
        embedded = {unit: embed(unit) for unit in self.units} if ahead else {}
        for unit in self.units:
            m, rows, steps = unit.microbatch, self.rows[unit.microbatch], self.steps[unit.chunk]
            limit = self._valid_steps(lengths, rows, steps)
            # Dropout masks are keyed on global rows and steps, so every grid draws the same ones.
            here = None if noise is None else noise.at(self.plan.rows[0] + rows.start, self.plan.segment[0] + steps.start)
            if pos.inputs_from_peer():
                received = leaf(inputs_in.pop(unit).wait())
                features = received
            else:
                received = None
                features = embedded.pop(unit) if ahead else embed(unit)
            groups, carried = [], previous.pop(m, None)
            for g, (first, stop) in enumerate(self.groups):
                if pos.state_from_peer(unit):
                    start = leaf(states_in.pop((m, g)).wait())
                elif unit.chunk > 0:
                    start = leaf(carried[g].detach())
                else:
                    start = state[first:stop, :, rows]
                below = leaf(features.detach()) if g and train else None
                with timer.tracer.span(self._span("forward", unit, g)):
                    outputs, final = self._run(features if below is None else below, start, self._layers_of(g),
                                               limit, here, self._reverse_lengths(lengths, rows, steps, limit))
                # Send at once: the next segment waits for this layer's state, not for the layers above.
                if pos.state_to_peer(unit, C):
                    sends.append(isend(self.sp, final, pos.segment + 1, state_tag(unit, g, G), timer, "send state"))
                groups.append(GroupGraph(start, below, outputs, final))
                features = outputs
            if not self.plan.last_stage:
                sends.append(isend(self.pp, outputs, pos.stage + 1, activation_tag(unit, C), timer, "send outputs"))
            loss = head_in = None
            if self.plan.last_stage:
                with timer.tracer.span(f"loss {unit.microbatch}.{unit.chunk}"):
                    head_in = outputs.detach().requires_grad_() if train and self.loss_ahead else outputs
                    loss = self.model.loss_sum(head_in, targets[rows, steps]) / norm
                    if observe is not None:
                        observe(outputs, targets[rows, steps])
                    if not train:
                        total += loss.double().cpu()
            previous[m] = [group.final for group in groups]
            if unit.chunk == C - 1:
                finals.append(torch.cat([group.final.detach() for group in groups]))
            if train:
                graphs[unit] = UnitGraph(groups, received, loss, head_in)
        return graphs, sends, finals, total

    def _valid_steps(self, lengths, rows: slice, steps: slice) -> int:
        """Steps of the chunk `steps` worth running for `rows`: up to the last valid step of the
        longest row (all of them where lengths are not given, or in the scan mode, whose
        segments exchange summaries of every step)."""
        width = steps.stop - steps.start
        if lengths is None or self.plan.mode == "scan":
            return width
        start = self.plan.segment[0] + steps.start
        return max(0, min(width, int(lengths[rows].max()) - start)) if rows.stop > rows.start else width

    def _reverse_lengths(self, lengths, rows: slice, steps: slice, limit: int):
        """Bidirectional layers: where each row's reverse direction starts, as a length inside the
        unit (its valid steps there; a bidirectional unit always starts at step 0, plan.py). None
        for one-direction layers, which never need them."""
        if not self.model.bidirectional:
            return None
        if lengths is None:
            return torch.full((rows.stop - rows.start,), limit, dtype=torch.long)
        return (lengths[rows] - (self.plan.segment[0] + steps.start)).clamp(0, limit)

    def _run(self, features, start, layers, limit: int, noise=None, reverse_lengths=None):
        if self.plan.mode == "scan":
            run = lambda x, s: scan_layers(self.model, layers, x, s, self.sp, self.comms.timer, noise)  # noqa: E731
            return self.precision.run_layers(self.model.cell, run, features, start)
        run = lambda x, s: self.model.run_layers(x, s, layers, noise, reverse_lengths)  # noqa: E731
        width = features.shape[1]
        if limit >= width:   # (a caller may pass fewer steps than the plan's chunk: the bench's warm-up)
            return self.precision.run_layers(self.model.cell, run, features, start)
        rows = features.shape[0]
        if limit == 0:  # all padding for these rows: nothing to run, the state passes through
            return features.new_zeros(rows, width, self.model.output_width).to(start.dtype), start
        outputs, final = self.precision.run_layers(self.model.cell, run, features[:, :limit], start)
        return torch.cat([outputs, outputs.new_zeros(rows, width - limit, outputs.shape[2])], dim=1), final

    def _backward(self, graphs, sends):
        pos, C, G, timer = self.position, self.plan.chunks, len(self.groups), self.comms.timer
        order = backward_order(self.plan.microbatches, C)
        # Backward runs the groups top to bottom, so their state gradients arrive in that order.
        state_grads_in = {(u.microbatch, g): irecv(self.sp, self._state_like(u.microbatch, g), pos.segment + 1,
                                                   state_grad_tag(u, g, G), timer,
                                                   f"receive state gradient {u.microbatch}{self._layer_label(g)} "
                                                   f"from segment {pos.segment + 1}")
                          for u in order if pos.state_to_peer(u, C) for g in reversed(range(G))}
        output_grads_in = {u: irecv(self.pp, self._activation_like(u), pos.stage + 1, activation_grad_tag(u, C), timer,
                                    f"receive output gradient {u.microbatch}.{u.chunk} from stage {pos.stage + 1}")
                           for u in order} if pos.outputs_to_peer() else {}
        total = torch.zeros((), dtype=torch.float64)
        if self.loss_ahead:
            # Until the first state gradient arrives; the rest run as their units come (the wait
            # is one layer's backward, which a large head could outlast).
            first = state_grads_in[(order[0].microbatch, G - 1)]
            with timer.tracer.span("loss backward, ahead of the state gradients"):
                for unit in order:
                    if first.arrived():
                        break
                    self._loss_backward(graphs[unit], timer)
        next_start_grad = {}
        for unit in order:
            graph, m = graphs.pop(unit), unit.microbatch
            if graph.loss is not None:
                total += graph.loss.detach().double().cpu()
            # What flows into the top group's outputs: the loss (whole, or its gradient when taken
            # ahead) on the last stage, the next stage's gradient elsewhere.
            if graph.loss is not None and not self.loss_ahead:
                root, grad = graph.loss, torch.ones_like(graph.loss)
            elif graph.loss is not None:
                root, grad = graph.outputs, self._loss_backward(graph, timer, f"loss backward {m}.{unit.chunk}")
            else:
                root, grad = graph.outputs, output_grads_in.pop(unit).wait()
            for g in reversed(range(G)):
                group = graph.groups[g]
                roots, grads = [root], [grad]
                if pos.state_to_peer(unit, C):
                    final_grad = state_grads_in.pop((m, g)).wait()
                else:
                    final_grad = next_start_grad.pop((m, g), None)
                if final_grad is not None:
                    roots.append(group.final)
                    grads.append(final_grad)
                # A unit that skipped an all-padding chunk has outputs that depend on nothing.
                live = [(r, d) for r, d in zip(roots, grads) if r.requires_grad]
                with timer.tracer.span(self._span("backward", unit, g)):
                    if live:
                        torch.autograd.backward(*map(list, zip(*live)))
                if pos.state_from_peer(unit):
                    sends.append(isend(self.sp, _grad_of(group.start), pos.segment - 1, state_grad_tag(unit, g, G),
                                       timer, "send state gradient"))
                elif unit.chunk > 0:
                    next_start_grad[(m, g)] = _grad_of(group.start)
                if g:
                    root, grad = graph.groups[g - 1].outputs, _grad_of(group.below)
            if graph.inputs is not None:
                sends.append(isend(self.pp, _grad_of(graph.inputs), pos.stage - 1, activation_grad_tag(unit, C), timer,
                                   "send input gradient"))
        return total

    @staticmethod
    def _loss_backward(graph: UnitGraph, timer, span: str | None = None) -> torch.Tensor | None:
        """Backward of a unit's loss down to its top outputs (once; traced as `span` if given);
        returns their gradient.

        The recurrent backward then starts from it. Backward is linear in what flows in, so
        splitting it there gives the same gradients as one pass.
        """
        if graph.loss is None:
            return None
        if graph.head_in.grad is None:
            if span is None:
                graph.loss.backward()
            else:
                with timer.tracer.span(span):
                    graph.loss.backward()
        return _grad_of(graph.head_in)


def _grad_of(leaf: torch.Tensor) -> torch.Tensor:
    """A leaf's gradient; zeros when nothing downstream depended on it."""
    return leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
