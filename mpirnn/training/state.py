"""A run's state under the serial model's names, so checkpoints do not depend on the grid.

The saved state (format 2) is

    {"format": 2, "step": S,
     "model": {name: whole tensor},                                   # as model.state_dict() on 1 rank
     "optimizer": {"param_groups": [hyperparameters], "state": {name: {"step", "exp_avg", ...}}},
     "carried": [layers, parts, batch, hidden]}                       # stateful runs only

On any grid, each part comes from the ranks that hold it (one replica of each pipeline
stage; the first time segment of every data-parallel group for carried states) and is
assembled on rank 0 (mpirnn/distributed/gather.py). Loading is the reverse: every rank
reads the file and keeps what its stage owns. Format 1 (before grid-independent
checkpoints: a 1-rank-style state_dict and the optimizer's own numbering) still loads.
"""

from __future__ import annotations

import torch

from mpirnn.distributed.gather import Piece, gather_pieces
from mpirnn.errors import CheckpointError
from mpirnn.parallel.shard import replicated, row_blocks, take_rows

FORMAT = 2


def _names(model) -> dict:
    return {id(p): name for name, p in model.named_parameters()}


def _pieces(key: str, tensor: torch.Tensor, whole_shape, blocks) -> list[Piece]:
    """`tensor` as pieces of the serial tensor: whole, or one piece per block of rows."""
    if blocks is None or tensor.dim() == 0:
        return [Piece.whole(key, tensor)]
    pieces, start = [], 0
    rest = tuple((0, n) for n in tensor.shape[1:])
    for a, b in blocks:
        pieces.append(Piece(key, tuple(whole_shape), ((a, b), *rest), tensor[start:start + b - a]))
        start += b - a
    return pieces


def _model_pieces(model, plan) -> list[Piece]:
    pieces = []
    first_of_group = plan.coords["tp"] == 0
    for name, tensor in model.state_dict().items():
        if replicated(name, plan) and not first_of_group:
            continue
        pieces += _pieces(f"model/{name}", tensor, model.serial_shapes[name], row_blocks(model, name, plan))
    return pieces


def _optimizer_pieces(model, optimizer, plan) -> list[Piece]:
    names = _names(model)
    pieces = []
    first_of_group = plan.coords["tp"] == 0
    for group in optimizer.param_groups:
        for param in group["params"]:
            name = names[id(param)]
            for field, value in optimizer.state.get(param, {}).items():
                if not isinstance(value, torch.Tensor):
                    continue
                if value.dim() == 0 or replicated(name, plan):
                    if first_of_group:  # the same on every rank of a tp group
                        pieces.append(Piece.whole(f"optimizer/{name}/{field}", value))
                    continue
                pieces += _pieces(f"optimizer/{name}/{field}", value, model.serial_shapes[name],
                                  row_blocks(model, name, plan))
    return pieces


def carried_piece(carried, plan, depth: int, batch_size: int, hidden: int) -> Piece:
    """This rank's carried states as part of [layers, parts, batch, hidden]."""
    layers, parts, rows, width = carried.shape
    shape = (depth, parts, batch_size, hidden)
    index = ((plan.layers[0], plan.layers[1]), (0, parts), (plan.rows[0], plan.rows[1]),
             (plan.hidden[0], plan.hidden[1]) if width < hidden else (0, hidden))
    return Piece("carried", shape, index, carried)


def gather_state(comms, plan, model, optimizer, step: int, carried_piece: Piece | None) -> dict | None:
    """The whole run state on world rank 0 (None elsewhere); every rank must call it."""
    holds_model = plan.coords["dp"] == 0 and plan.coords["sp"] == 0
    pieces = []
    if holds_model:
        pieces += _model_pieces(model, plan)
        pieces += _optimizer_pieces(model, optimizer, plan)
    if carried_piece is not None:
        pieces.append(carried_piece)
    whole = gather_pieces(comms.world, pieces)
    if whole is None:
        return None
    state = {"format": FORMAT, "step": step, "model": {}, "optimizer": {"state": {}}}
    for key, tensor in whole.items():
        kind, _, rest = key.partition("/")
        if kind == "model":
            state["model"][rest] = tensor
        elif kind == "optimizer":
            name, _, field = rest.rpartition("/")
            state["optimizer"]["state"].setdefault(name, {})[field] = tensor
        else:
            state[key] = tensor
    state["optimizer"]["param_groups"] = [{k: v for k, v in group.items() if k != "params"}
                                          for group in optimizer.param_groups]
    return state


def gather_weights(comms, plan, model) -> dict | None:
    """The serial model's parameters by name on world rank 0 (None elsewhere), without the
    optimizer state; every rank must call it."""
    holds_model = plan.coords["dp"] == 0 and plan.coords["sp"] == 0
    whole = gather_pieces(comms.world, _model_pieces(model, plan) if holds_model else [])
    if whole is None:
        return None
    return {key.partition("/")[2]: tensor for key, tensor in whole.items()}


def upgrade(state: dict, serial_names: list[str]) -> dict:
    """A format-1 checkpoint (1-rank optimizer numbering) in format 2."""
    if state.get("format", 1) >= FORMAT:
        return state
    saved = state["optimizer"]
    by_name = {serial_names[i]: fields for i, fields in saved["state"].items()}
    groups = [{k: v for k, v in group.items() if k != "params"} for group in saved["param_groups"]]
    return {**state, "format": FORMAT, "optimizer": {"state": by_name, "param_groups": groups}}


def check_compatible(model, state: dict, path: str) -> None:
    """Refuse a checkpoint of another model shape, naming the first difference."""
    saved = state["model"]
    shapes = model.serial_shapes
    for name, shape in shapes.items():
        if name not in saved:
            raise CheckpointError(f"checkpoint {path} has no parameter {name}: it is from a different model; "
                                  f"use a new checkpoint.dir or the matching model settings")
        if tuple(saved[name].shape) != tuple(shape):
            raise CheckpointError(
                f"checkpoint {path} is from a different model: {name} has shape {tuple(saved[name].shape)} "
                f"there and {tuple(shape)} here; use a new checkpoint.dir or the matching model settings")
    extra = set(saved) - set(shapes)
    if extra:
        raise CheckpointError(f"checkpoint {path} has parameters this model lacks ({sorted(extra)[0]}, ...): "
                              f"it is from a different model (model.cell?)")


def load_state(model, optimizer, state: dict, plan) -> None:
    """Restore the parameters and optimizer state this rank holds from a whole (format-2) state."""
    model.load_state_dict({name: take_rows(state["model"][name], row_blocks(model, name, plan))
                           for name in model.state_dict()})
    names = [name for group in optimizer.param_groups for name in
             (_names(model)[id(p)] for p in group["params"])]
    saved = state["optimizer"]
    # The optimizer moves its state to each parameter's device and dtype itself.
    local = {"state": {i: {field: take_rows(value, row_blocks(model, name, plan))
                           for field, value in saved["state"][name].items()}
                       for i, name in enumerate(names) if name in saved["state"]},
             "param_groups": [{**saved["param_groups"][0], "params": list(range(len(names)))}]}
    optimizer.load_state_dict(local)
