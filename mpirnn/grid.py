"""The process grid dp × sp × pp × tp, and who owns which rows and time steps.

Everything here is pure arithmetic on integers, so it is tested without MPI. Rank
layout: tp varies fastest, then pp, then sp, then dp (ranks that talk every time step
are neighbours, so on a cluster they share a node).
"""

from __future__ import annotations

from dataclasses import dataclass

from mpirnn.errors import ConfigError

AXES = ("dp", "sp", "pp", "tp")


def chunk(n: int, parts: int, index: int) -> tuple[int, int]:
    """[start, stop) of part `index` when n items are split into `parts` contiguous parts.

    The first n % parts parts get one extra item, so sizes differ by at most one.
    """
    if not 0 <= index < parts:
        raise ValueError(f"part {index} of {parts}")
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return start, start + base + (index < extra)


@dataclass(frozen=True)
class Grid:
    """A validated process grid. One degree may be -1: it is inferred from the world size."""

    world_size: int
    dp: int = -1
    sp: int = 1
    pp: int = 1
    tp: int = 1

    def __post_init__(self):
        degrees = {axis: getattr(self, axis) for axis in AXES}
        bad = [f"{a}={d}" for a, d in degrees.items() if d == 0 or d < -1]
        if bad:
            raise ConfigError(f"parallel degrees must be positive or -1: {', '.join(bad)}")
        inferred = [a for a, d in degrees.items() if d == -1]
        if len(inferred) > 1:
            raise ConfigError(f"only one parallel degree may be -1, got {', '.join(inferred)}")
        known = 1
        for d in degrees.values():
            known *= d if d != -1 else 1
        # One process where the grid wants several is most often a launch without mpirun.
        alone = (f"; only one process is running (no mpirun?): start it as `mpirun -n {known} python -m "
                 f"mpirnn.train ...`" if self.world_size == 1 and known > 1 else "")
        if inferred:
            if self.world_size % known:
                raise ConfigError(
                    f"cannot infer parallel.{inferred[0]}: world size {self.world_size} is not "
                    f"divisible by the product of the other degrees ({known}){alone}")
            object.__setattr__(self, inferred[0], self.world_size // known)
        elif known != self.world_size:
            shape = " x ".join(f"{a}={degrees[a]}" for a in AXES)
            raise ConfigError(
                f"grid {shape} has {known} ranks but the job has {self.world_size}: "
                f"make dp*sp*pp*tp equal the number of ranks (or set one degree to -1){alone}")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.dp, self.sp, self.pp, self.tp

    def enabled(self, axis: str) -> bool:
        return getattr(self, axis) > 1

    def coords(self, rank: int) -> dict[str, int]:
        """This rank's coordinate on each axis (tp fastest)."""
        coords = {}
        for axis in reversed(AXES):
            rank, coords[axis] = divmod(rank, getattr(self, axis))
        return {axis: coords[axis] for axis in AXES}

    def rank_of(self, **coords: int) -> int:
        rank = 0
        for axis in AXES:
            rank = rank * getattr(self, axis) + coords.get(axis, 0)
        return rank


def rows_of(batch_size: int, grid: Grid, dp_rank: int) -> tuple[int, int]:
    """The global-batch rows [start, stop) that data-parallel rank `dp_rank` owns."""
    return chunk(batch_size, grid.dp, dp_rank)


def segment_of(seq_len: int, grid: Grid, sp_rank: int) -> tuple[int, int]:
    """The time steps [start, stop) of every sequence that sequence-parallel rank `sp_rank` owns."""
    return chunk(seq_len, grid.sp, sp_rank)
