"""Evaluation batches and their plans (mpirnn/data/sampler.py sequential_batches,
mpirnn/inference/scoring.py evaluation_plan, mpirnn/data/loader.py check_eval_fit): pure, no MPI.
The numbers on real grids are in tests/mpi/test_evaluation.py.

    cd /work/main && .venv/bin/python -m pytest -q tests/test_inference_scoring.py
"""

import pytest
from support import make_series_dataset

from mpirnn.config import load_config
from mpirnn.data.loader import EvaluationLoader, check_eval_fit
from mpirnn.data.manifest import load_manifest
from mpirnn.data.sampler import sequential_batches
from mpirnn.errors import DataError
from mpirnn.inference.scoring import evaluation_plan
from mpirnn.grid import Grid
from mpirnn.parallel.plan import make_plan


def test_every_window_once_in_order():
    batches = sequential_batches(10, 4)
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [b.tolist() for b in sequential_batches(10, 4, limit=2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [b.tolist() for b in sequential_batches(1, 32)] == [[0]]


def plans(world, batch_rows, **settings):
    cfg = load_config(None, [f"{k}={v}" for k, v in {"data.seq_len": 40, "data.batch_size": 8, **settings}.items()])
    p = cfg.parallel
    grid = Grid(world, p.dp, p.sp, p.pp)
    out = []
    for rank in range(world):
        base = make_plan(grid, grid.coords(rank), batch_size=grid.dp, seq_len=cfg.data.seq_len,
                         layers=cfg.model.layers, cell=cfg.model.cell, microbatches=1, chunks=p.chunks)
        out.append(evaluation_plan(base, cfg, batch_rows))
    return out


def test_a_short_last_batch_is_cut_over_dp_again():
    short = plans(4, 3, **{"parallel.dp": 4})
    assert [p.rows for p in short] == [(0, 1), (1, 2), (2, 3), (3, 3)]   # the fourth group sits it out
    assert all(p.microbatches == 1 for p in short)


def test_microbatches_shrink_to_the_rows_there_are():
    full = plans(2, 8, **{"parallel.dp": 1, "parallel.sp": 2, "parallel.microbatches": 4})
    assert [p.microbatches for p in full] == [4, 4]
    one = plans(2, 1, **{"parallel.dp": 1, "parallel.sp": 2, "parallel.microbatches": 4})
    assert [(p.rows, p.microbatches, p.segment) for p in one] == [((0, 1), 1, (0, 20)), ((0, 1), 1, (20, 40))]
    auto = plans(2, 1, **{"parallel.dp": 1, "parallel.sp": 2})   # automatic would refuse 1 row: 1 is used
    assert [p.microbatches for p in auto] == [1, 1]


def test_a_short_batch_keeps_only_the_offloaded_microbatches_it_has():
    # A bidirectional pipeline whose training plan runs microbatches 1 and 3's reverse direction of
    # layer 1 on stage 0: a validation batch of 3 rows has 3 microbatches, so only 1 moves, and a
    # batch of 1 row has one microbatch, so nothing does (and both stages agree).
    cfg = load_config(None, ["data.seq_len=40", "data.batch_size=16", "parallel.pp=2", "parallel.microbatches=4",
                             "model.bidirectional=true", "model.hidden=128", "model.embed=64"])
    grid = Grid(2, 1, 1, 2)
    bases = [make_plan(grid, grid.coords(rank), batch_size=16, seq_len=40, layers=2, cell="lstm", microbatches=4,
                       hidden=128, bidirectional=True, embed=64) for rank in range(2)]
    assert [b.offloaded for b in bases] == [((), (1, 3))] * 2
    assert [evaluation_plan(b, cfg, 16).offloaded for b in bases] == [((), (1, 3))] * 2
    three = [evaluation_plan(b, cfg, 3) for b in bases]
    assert [(p.microbatches, p.offloaded) for p in three] == [(3, ((), (1,)))] * 2
    assert [evaluation_plan(b, cfg, 1).offloaded for b in bases] == [(), ()]


def test_a_split_too_short_for_one_sequence_is_refused(tmp_path):
    data = make_series_dataset(tmp_path / "s", length=600, val_fraction=0.1)
    val = load_manifest(data, split="val")
    assert check_eval_fit(val, 59) == 1
    with pytest.raises(DataError, match="the val split of .* holds 60 steps, too few for one sequence of 60 steps"):
        check_eval_fit(val, 60)
    loader = EvaluationLoader(val, 20, 2, "cpu", None)
    assert loader.windows == 2 and [b.tolist() for b in loader.batches()] == [[0, 1]]
    loader.close()
