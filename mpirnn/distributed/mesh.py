"""The process mesh: one communicator per grid axis, and the groups training reduces over.

Communicators are made when a run starts (`Comms.create`), never at import time, and all
library traffic runs on a `Dup()` of the world. Besides the four axes, two groups are named
for what they are for (mpirnn/distributed/reductions.py uses them):

- `replicas`: ranks holding the same parameters (same pp and tp coordinates, every dp and
  sp coordinate). Gradients are summed over it and parameters broadcast within it.
- `model_parallel`: ranks holding disjoint parts of one copy of the model (same dp and sp
  coordinates, every pp and tp coordinate). The gradient norm is summed over it.

The loss, non-finite flags and stop signals are agreed over the whole world.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpi4py import MPI

from mpirnn.distributed.transport import CommTimer
from mpirnn.grid import AXES, Grid


@dataclass
class Comms:
    world: MPI.Comm
    grid: Grid
    coords: dict
    axis: dict                # axis name -> communicator over that axis (ranks differing only there)
    replicas: MPI.Comm
    model_parallel: MPI.Comm
    local_rank: int
    local_size: int
    timer: CommTimer

    @classmethod
    def create(cls, grid: Grid, world: MPI.Comm | None = None) -> "Comms":
        world = (world or MPI.COMM_WORLD).Dup()
        coords = grid.coords(world.rank)
        axis = {}
        for name in AXES:
            # Ranks that agree on every other coordinate form this axis's communicator.
            colour = grid.rank_of(**{a: coords[a] for a in AXES if a != name})
            axis[name] = world.Split(colour, coords[name])
        replicas = world.Split(coords["pp"] * grid.tp + coords["tp"], world.rank)
        model_parallel = world.Split(coords["dp"] * grid.sp + coords["sp"], world.rank)
        node = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.rank)
        local_rank, local_size = node.rank, node.size
        node.Free()
        return cls(world, grid, coords, axis, replicas, model_parallel, local_rank, local_size, CommTimer())

    @property
    def rank(self) -> int:
        return self.world.rank

    def free(self) -> None:
        for comm in [*self.axis.values(), self.replicas, self.model_parallel, self.world]:
            if comm != MPI.COMM_NULL:
                comm.Free()
