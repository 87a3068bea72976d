"""The performance model's formulas on hand-computed cases: no processes, no timing.

    python -m pytest -q tests/test_perf_model.py
"""

from __future__ import annotations

import math

import pytest

from mpirnn.perf import links
from mpirnn.perf.calibration import FORMAT, Calibration, _interp, _log_interp
from mpirnn.perf.schedule import bubble_fraction, chain_time, critical_units
from mpirnn.perf.step_model import Layout, Shape, bucket_bytes, crossing_hops, invalid, predict, stage_tensors
from mpirnn.perf.ranking import best_microbatches, factorizations, rank_grids, valid_grids
from mpirnn.tools.planner import parse_grid


def toy_calibration(step_per_row_s=1e-4, call_s=0.0, adam_param_s=0.0, alpha_s=0.0, beta_s=0.0) -> dict:
    """Every cost zero except a fused time step costing `step_per_row_s` per row (any hidden size),
    a fixed cost per fused call, Adam per parameter and an intra-node link."""
    table = {"hidden": [16, 32], "rows": [1, 8], "step_s": [[step_per_row_s, 8 * step_per_row_s]] * 2,
             "call_s": [[call_s, call_s]] * 2}
    zero_head = {"hidden": [16, 32], "token_s": [0.0, 0.0]}
    return {
        "format": FORMAT,
        "host": {"cpu": "toy", "cores": 64, "device": "cpu", "date": "2026-01-01"},
        "compute": {"fused": {"lstm": table, "gru": table, "rnn": table}, "input_mac_s": 0.0,
                    "linear": {"mingru": {"element_s": 1e-6, "mac_s": 0.0, "call_s": 0.0},
                               "minlstm": {"element_s": 1e-6, "mac_s": 0.0, "call_s": 0.0}},
                    "head": {"tokens": {"vocab": 256, **zero_head}, "series": zero_head},
                    "input": {"tokens_element_s": 0.0, "series_element_s": 0.0},
                    "adam_param_s": adam_param_s, "adam_tensor_s": 0.0, "accumulate_element_s": 0.0,
                    "unit_overhead_s": 0.0, "cell_loop_step_s": 0.0, "slowdown": {"busy": 2, "factor": 1.0}},
        "links": {"intra": {"alpha_s": alpha_s, "beta_s_per_byte": beta_s}, "inter": None, "staging": None},
        "async_progress": 0.0,
    }


LSTM = Shape("lstm", layers=2, hidden=16, embed=8, batch=8, seq_len=10)


# ------------------------------------------------------------------ the schedule


def test_bubble_fractions_match_the_closed_forms():
    assert bubble_fraction(M=4, C=1, S=2, P=1) == pytest.approx(1 / 5)           # (S-1) / (M+S-1)
    assert bubble_fraction(M=2, C=4, S=1, P=3) == pytest.approx(2 / 10)          # (P-1) / (M·C+P-1)
    assert bubble_fraction(M=2, C=2, S=2, P=2) == pytest.approx(3 / 7)           # ((S-1)C + P-1) / (MC + ...)
    assert bubble_fraction(M=4, C=1, S=3, P=2, linear=True) == pytest.approx(1 / 5)  # no chain over segments
    assert bubble_fraction(M=1, C=1, S=1, P=1) == 0
    assert critical_units(M=3, C=2, S=2, P=2) == 6 + 2 + 1
    # Layer by layer along the chain: the next segment waits for a share h of the last chunk only.
    assert bubble_fraction(M=4, C=1, S=2, P=1, hop=0.5) == pytest.approx(0.5 / 4.5)
    assert critical_units(M=3, C=2, S=2, P=2, hop=0.5) == 6 + 1.5 + 1


def test_bubble_agrees_with_the_scheduler_own_formula():
    plan = pytest.importorskip("mpirnn.parallel.plan")
    if not hasattr(plan, "bubble"):
        pytest.skip("mpirnn.parallel.plan has no bubble()")
    for M in (1, 2, 5):
        for C in (1, 3):
            for S in (1, 2, 4):
                for P in (1, 2, 3):
                    assert bubble_fraction(M, C, S, P) == pytest.approx(plan.bubble(S, P, M, C, "chain"))
                    for L in (2, 3):   # L equal layers per stage: the hop is 1/L of a unit
                        assert bubble_fraction(M, C, S, P, hop=1 / L) == pytest.approx(
                            plan.bubble(S, P, M, C, "chain", layers=L))
                    assert bubble_fraction(M, 1, S, P, linear=True) == pytest.approx(plan.bubble(S, P, M, 1, "scan"))


def test_chain_time_uniform_and_uneven_stages():
    assert chain_time([0.5], M=4, C=1, S=2) == pytest.approx(0.5 * 5)
    assert chain_time([0.5, 0.5], M=2, C=2, S=2) == pytest.approx(0.5 * 7)
    # Stage 0 takes 1 per unit, stage 1 takes 2: stage 1 ends its 4 units at 1 + 4·2 = 9.
    assert chain_time([1.0, 2.0], M=4, C=1, S=1) == pytest.approx(9.0)


# ------------------------------------------------------------------ links


def test_alpha_beta_costs_of_a_known_message():
    link = links.Link(alpha_s=1e-6, beta_s_per_byte=1e-9, gamma_s_per_byte=1e-10)
    n = 1e6
    assert links.p2p(link, n) == pytest.approx(1e-6 + 1e-3)
    assert links.allreduce(link, n, 2) == pytest.approx(2e-6 + 1e-3 + 0.5e6 * 1e-10)
    assert links.allreduce(link, n, 4) == pytest.approx(4e-6 + 1.5e-3 + 0.75e6 * 1e-10)
    assert links.allgather(link, 1e3, 8) == pytest.approx(3e-6 + 7e3 * 1e-9)
    assert links.reduce_scatter(link, 8e3, 8) == pytest.approx(3e-6 + 7e3 * 1.1e-9)
    assert links.allreduce(link, n, 1) == 0 and links.allgather(link, n, 1) == 0


def test_fit_recovers_alpha_and_beta():
    from mpirnn.perf.calibrate import fit_alpha_beta, fit_gamma
    alpha, beta, gamma = 2e-6, 1e-10, 3e-10
    points = [[n, alpha + n * beta] for n in (8, 1024, 65536, 1 << 20)]
    fitted = fit_alpha_beta(points)
    assert fitted == pytest.approx((alpha, beta), rel=1e-6)
    link = links.Link(alpha, beta)
    allreduce = [[n, 2 * alpha + n * beta + n / 2 * gamma] for n in (65536, 1 << 20, 4 << 20)]
    assert fit_gamma(link, allreduce) == pytest.approx(gamma, rel=1e-6)


def test_node_boundaries_of_a_chain():
    assert crossing_hops(stride=1, size=8, per_node=8) == 0
    assert crossing_hops(stride=1, size=16, per_node=8) == 1
    assert crossing_hops(stride=8, size=4, per_node=8) == 3


# ------------------------------------------------------------------ interpolation


def test_interpolation_is_linear_in_rows_and_loglog_in_hidden():
    assert _interp([1, 8], [1.0, 8.0], 4) == pytest.approx(4.0)
    assert _interp([1, 8], [1.0, 8.0], 16) == pytest.approx(16.0)  # the last piece's slope
    assert _log_interp([100, 400], [1.0, 16.0], 200) == pytest.approx(4.0)   # exponent 2
    assert _log_interp([100, 400], [1.0, 16.0], 800, highest=2.0) == pytest.approx(64.0)


def test_affine_fit_of_a_cost_table():
    torch = pytest.importorskip("torch")  # noqa: F841 - compute_bench imports torch
    from mpirnn.perf.compute_bench import affine
    assert affine([1, 2, 4, 8], [3.0, 5.0, 9.0, 17.0]) == pytest.approx([3.0, 5.0, 9.0, 17.0])   # 1 + 2·rows
    smoothed = affine([1, 2, 4, 8, 16], [3.0, 5.0, 12.0, 17.0, 33.0])   # one point 33 % high
    assert smoothed[2] < 11.0 and all(b > a for a, b in zip(smoothed, smoothed[1:]))


# ------------------------------------------------------------------ parameters and buckets


@pytest.mark.parametrize("pp", [1, 2])
def test_stage_tensors_are_the_model_parameters(pp):
    torch = pytest.importorskip("torch")  # noqa: F841
    from mpirnn.models.model import RecurrentModel
    for stage in range(pp):
        model = RecurrentModel("lstm", 16, 2, 8, vocab_size=256)
        if pp > 1:
            model.keep_only(range(stage, stage + 1), embedding=stage == 0, head=stage == pp - 1)
        sizes = [p.numel() for p in model.parameters()]
        assert stage_tensors(LSTM, Layout(pp=pp), stage) == sizes


def test_gradient_buckets_close_at_the_limit_in_reverse_order():
    assert bucket_bytes([100, 200, 300], itemsize=4, bucket_mb=1000 / 2**20) == [1200, 1200]
    assert bucket_bytes([10, 10], itemsize=4, bucket_mb=4.0) == [80]


# ------------------------------------------------------------------ the step


def test_step_time_of_a_toy_calibration():
    cal = Calibration(toy_calibration(step_per_row_s=1e-4))
    # 1 rank: 2 layers × 10 steps × 8 rows × 1e-4.
    assert predict(LSTM, Layout(), cal).step_s == pytest.approx(2 * 10 * 8e-4)
    # dp=2: half the rows.
    assert predict(LSTM, Layout(dp=2), cal).step_s == pytest.approx(2 * 10 * 4e-4)
    # sp=2, M=2: a unit is 2 layers × 5 steps × 4 rows; the second segment starts one layer (half a
    # unit) behind, so M + (S - 1)/2 = 2.5 units are on the critical path.
    assert predict(LSTM, Layout(sp=2, microbatches=2), cal).step_s == pytest.approx(2.5 * 2 * 5 * 4e-4)
    # Adam: the whole model's parameters.
    params = sum(stage_tensors(LSTM, Layout(), 0))
    adam = Calibration(toy_calibration(step_per_row_s=0.0, adam_param_s=1e-6))
    assert predict(LSTM, Layout(), adam).step_s == pytest.approx(params * 1e-6)


def test_boundary_state_messages_are_paid_on_the_fill():
    cal = Calibration(toy_calibration(step_per_row_s=0.0, alpha_s=1e-3, beta_s=0.0))
    # Per unit, each layer's state each way (sender's cost), and each of the S-1 hops once each way on
    # the fill; 2.5 units on the critical path (a unit of two zero-cost layers: the hop is half of it).
    step = predict(LSTM, Layout(sp=2, microbatches=2), cal).step_s
    assert step == pytest.approx(2.5 * 4e-3 + 2 * 1e-3 + 2e-3)   # units, fill, gradient allreduce (p = 2)


def test_best_microbatches_trades_the_bubble_for_call_costs():
    # A unit is 2 layers · (call + T_s·R/M·1e-4) with T_s = 5, R = 8, call = 5e-4, and M + 1/2 units are
    # on the critical path: Step(M) = (M + 1/2)·(1e-3 + 8e-3/M) = M·1e-3 + 8.5e-3 + 4e-3/M.
    # M=1: 0.0135, M=2: 0.0125, M=4: 0.0135, M=8: 0.017.
    cal = Calibration(toy_calibration(step_per_row_s=1e-4, call_s=5e-4))
    best = best_microbatches(LSTM, {"dp": 1, "sp": 2, "pp": 1, "tp": 1}, cal)
    assert best.layout.microbatches == 2
    assert best.step_s == pytest.approx(0.0125)
    fixed = best_microbatches(LSTM, {"dp": 1, "sp": 2, "pp": 1, "tp": 1}, cal, microbatches=8)
    assert fixed.layout.microbatches == 8 and fixed.step_s == pytest.approx(0.017)


def test_linear_cells_have_no_chain_over_segments():
    cal = Calibration(toy_calibration())
    shape = Shape("mingru", 1, 16, 8, batch=4, seq_len=100, vocab=None)
    one, two = predict(shape, Layout(), cal), predict(shape, Layout(sp=2), cal)
    assert two.step_s == pytest.approx(one.step_s / 2)
    assert two.bubble == 0


# ------------------------------------------------------------------ grids


def test_grids_multiply_to_the_ranks_and_respect_the_shape():
    assert len(factorizations(4)) == 10
    assert all(math.prod(g) == 12 for g in factorizations(12))
    grids = valid_grids(LSTM, 4)
    assert all(g["pp"] <= 2 and LSTM.hidden % g["tp"] == 0 and g["dp"] <= LSTM.batch for g in grids)
    assert {"dp": 1, "sp": 1, "pp": 4, "tp": 1} not in grids   # 2 layers
    assert invalid(LSTM, Layout(tp=3)) is not None


def test_rank_grids_puts_the_fastest_first():
    # Rows cost linearly and messages cost latency: dp (one allreduce per step) beats tp (two collectives per time step).
    cal = Calibration(toy_calibration(step_per_row_s=1e-4, call_s=1e-4, alpha_s=1e-5))
    ranked = rank_grids(LSTM, 4, cal)
    assert [p.step_s for p in ranked] == sorted(p.step_s for p in ranked)
    assert ranked[0].layout.grid == {"dp": 4, "sp": 1, "pp": 1, "tp": 1}


def test_parse_grid_fills_dp_with_the_rest():
    assert parse_grid("sp=2", 4) == {"dp": 2, "sp": 2, "pp": 1, "tp": 1}
    assert parse_grid("dp=1,sp=2,pp=2", 4) == {"dp": 1, "sp": 2, "pp": 2, "tp": 1}
    with pytest.raises(SystemExit):
        parse_grid("dp=3", 4)


# ------------------------------------------------------------------ what a calibration measures


def test_hidden_option_adds_sizes_to_a_calibration(monkeypatch, capsys):
    import mpirnn.perf.calibrate as calibrate_module
    from mpirnn.tools.planner import main, parse_args
    assert parse_args(["--calibrate", "--hidden", "2048,1024,2048"]).hidden == [1024, 2048]
    assert parse_args(["--calibrate"]).hidden is None
    for text in ("", "256,", "x", "0", "2,256"):
        with pytest.raises(SystemExit) as exit_:
            parse_args(["--calibrate", "--hidden", text])
        assert exit_.value.code == 2 and "argument --hidden" in capsys.readouterr().err
    seen = {}
    monkeypatch.setattr(calibrate_module, "calibrate", lambda out, **kw: seen.update(kw))
    assert main(["--calibrate", "--hidden", "2048"]) == 0
    assert seen["hidden"] == [64, 128, 256, 512, 2048]     # beside the default sizes, not instead
    assert main(["--calibrate", "--set", "model.cell=gru", "--set", "model.hidden=48", "--hidden", "16"]) == 0
    assert seen["hidden"] == [16, 48] and seen["cells"] == ["gru"]   # only what the config needs (and --hidden)


def test_quick_is_refused_with_the_reason(capsys):
    from mpirnn.tools.planner import main
    assert main(["--calibrate", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--quick was removed" in err and "6.69 s" in err


def test_the_bench_calibrates_every_hidden_size_it_runs():
    from mpirnn.tools.bench_predictions import scope
    from mpirnn.tools.shapes import shape_of
    shapes = [shape_of(w, tiny=False) for w in ("W1", "W3", "W4")]
    assert scope(shapes) == (["lstm", "mingru"], [128, 256, 2048])   # W4's 2048 measured, not extrapolated


def test_a_tp_step_is_floored_by_one_fused_step_on_gpus_only():
    data = toy_calibration(step_per_row_s=1e-4)   # a fused step: 1e-4 s per row, one row the table's least
    data["compute"]["tp_step"] = {"overhead_s": 0.0, "matmul_factor": 1.0}
    cpu = Calibration(data)
    gpu = Calibration({**data, "host": {**data["host"], "device": "cuda"}})
    assert cpu.tp_step_s("lstm", 1, 16, 16, 4) == pytest.approx(2.5e-5)   # a quarter of a one-row step
    assert gpu.tp_step_s("lstm", 1, 16, 16, 4) == pytest.approx(1e-4)     # never below one fused step
    assert cpu.tp_step_s("lstm", 8, 16, 16, 2) == pytest.approx(4e-4)     # above the floor both agree
    assert gpu.tp_step_s("lstm", 8, 16, 16, 2) == pytest.approx(4e-4)


def test_tp_exchanges_pay_host_staging_only_for_gpus_without_cuda_aware_mpi():
    # mpirnn/distributed/transport.py: CUDA tensors reach MPI through pinned host copies unless
    # MPI is CUDA-aware; CPU tensors never are copied. The calibration records that as a link.
    assert links.staging("cuda", cuda_aware_mpi=False) is links.HOST_STAGING
    assert links.staging("cuda", cuda_aware_mpi=True) is None
    assert links.staging("cpu", cuda_aware_mpi=False) is None
    plain = toy_calibration(step_per_row_s=0.0)
    staged = {**plain, "links": {**plain["links"], "staging": links.HOST_STAGING.to_dict()}}
    layout = Layout(tp=2)
    extra = predict(LSTM, layout, Calibration(staged)).step_s - predict(LSTM, layout, Calibration(plain)).step_s
    # The wire costs nothing here: what is left is the staging hop of every per-step exchange.
    rows, steps, b, H, S = 8, 10, 4, 16, links.HOST_STAGING
    per_step = links.allgather(S, rows * H * b / 2, 2) + links.reduce_scatter(S, rows * H * b, 2)
    inputs = links.allreduce(S, rows * steps * 8 * b, 2) + links.allreduce(S, rows * steps * H * b, 2)
    assert extra == pytest.approx(2 * steps * per_step + inputs)
    assert extra > 0
