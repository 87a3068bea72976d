"""A performance model of one mpirnn training step, its calibrations, and the planner's ranking.

Part of the engine, not of the tools: training chooses its automatic microbatches and chunks
with it (mpirnn/training/layout.py; docs/design.md, "Layers").

    python -m mpirnn.plan --ranks 4                 # rank the grids for 4 ranks (mpirnn/tools/planner.py)
    python -m mpirnn.plan --calibrate               # measure this machine (calibrate.py)
    python -m pytest -q tests/test_perf_model.py tests/test_perf_plan_cli.py tests/test_plan_calibrates.py

links.py (α–β message and collective costs), schedule.py (the wavefront's critical path),
calibration.py (a calibration file, the costs read from it, and where files live),
step_model.py (one step's time for a shape and a layout), ranking.py (grids, microbatches
and chunks, fastest first), compute_bench.py and comm_bench.py (the measurements),
calibrate.py (their driver) and processes.py (how it starts them); calibrations/ holds the
shipped calibration files (package data). Everything except the measurements is plain
arithmetic: no torch, no MPI. docs/performance.md describes the model and its validation.
"""
