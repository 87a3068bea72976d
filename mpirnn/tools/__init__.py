"""Tools around training: the benchmark (bench, shapes, workloads), Slurm scaling studies
(scaling) and their reports (report). The commands are `python -m mpirnn.bench`, `mpirnn.scaling`
and `mpirnn.report`."""
