"""A performance model of one mpirnn training step, its calibration, and the grid planner's arithmetic.

    python -m mpirnn.plan --ranks 4                 # rank the grids for 4 ranks (mpirnn/tools/planner.py)
    python -m mpirnn.plan --calibrate               # measure this machine (mpirnn/perf/calibrate.py)
    python -m pytest -q tests/test_perf_model.py tests/test_plan_cli.py

links.py (α–β message and collective costs), schedule.py (the wavefront's critical path),
calibration.py (a calibration file and the costs read from it), step_model.py (one step's
time for a shape and a layout), compute_bench.py and comm_bench.py (the measurements),
projection.py (GPU projection). Everything except the two benches is plain arithmetic:
no torch, no MPI. docs/performance.md describes the model and its validation.
"""
