"""The scaling study's plan (no Slurm needed: --dry-run) and the report built from a sweep's run folders.

    cd /work/main && .venv/bin/python -m pytest -q tests/test_scaling_report.py
"""

import csv
import json

import pytest

from mpirnn.tools import report, scaling

PNG = b"\x89PNG\r\n\x1a\n"


MODEL = {"cell": "lstm", "hidden": 16, "layers": 1, "embed": 8, "dtype": "float32"}


def write_run(folder, nodes, strategy, mode, step_time, comm=0.1, config=True):
    """A finished run of an mpirnn.scaling sweep: metrics, run.json and (by default) the config beside them."""
    folder.mkdir(parents=True)
    lines = [{"step": s, "loss": 3.0 - 0.1 * s, "step_time_s": step_time * (3 if s == 1 else 1),
              "tokens_per_s": 1000 / step_time, "comm_time_s": comm * step_time} for s in range(1, 8)]
    lines.append({"summary": True, "final_loss": 2.3, "world_size": 2 * nodes, "grid": {"dp": 2 * nodes}})
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (folder / "run.json").write_text(json.dumps({"nodes": nodes, "strategy": strategy, "mode": mode}))
    if config:
        batch = 8 * (2 * nodes if mode == "weak" else 1)  # a weak dp sweep grows the batch with the ranks
        (folder / "metrics.config.json").write_text(json.dumps(
            {"model": MODEL, "data": {"path": "data/x", "seq_len": 32, "batch_size": batch},
             "parallel": {"dp": 2 * nodes}}))


@pytest.mark.parametrize("config", [True, False], ids=["with-config", "run-json-only"])
def test_report_speedup_efficiency_and_plots(tmp_path, config):
    write_run(tmp_path / "dp-strong-n1", 1, "dp", "strong", 1.0, config=config)
    write_run(tmp_path / "dp-strong-n2", 2, "dp", "strong", 0.625, config=config)
    write_run(tmp_path / "dp-weak-n1", 1, "dp", "weak", 1.0, config=config)
    write_run(tmp_path / "dp-weak-n2", 2, "dp", "weak", 1.25, config=config)
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    assert report.main([str(tmp_path)]) == 0
    rows = {(r["mode"], r["nodes"]): r for r in csv.DictReader((tmp_path / "report.csv").open())}
    assert sorted(r["run"] for r in rows.values()) == ["dp-strong-n1", "dp-strong-n2", "dp-weak-n1", "dp-weak-n2"]
    assert {r["study"] for r in rows.values()} == {"dp strong", "dp weak"}
    assert float(rows["strong", "2"]["speedup"]) == pytest.approx(1.6)
    assert float(rows["strong", "2"]["efficiency"]) == pytest.approx(0.8)
    assert float(rows["weak", "2"]["efficiency"]) == pytest.approx(0.8)
    assert float(rows["strong", "1"]["speedup"]) == 1.0
    assert float(rows["strong", "1"]["step_time_s"]) == pytest.approx(1.0)  # the slow warm-up step is left out
    assert float(rows["strong", "1"]["comm_share"]) == pytest.approx(0.1)
    text = (tmp_path / "report.md").read_text()
    assert text.count("## Scaling study") == 2 and "Runs not in a study" not in text
    assert "Left out (no summary line" in text and "unfinished" in text  # named, but not in a table
    assert (tmp_path / "report.csv").read_text().startswith("run,study,strategy,mode,nodes")
    assert (tmp_path / "speedup.png").stat().st_size > 1000 and (tmp_path / "efficiency.png").exists()
    assert (tmp_path / "loss.png").read_bytes()[:8] == PNG


def test_report_without_runs_fails_clearly(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 1
    assert "no finished runs" in capsys.readouterr().err


def test_scaling_plan_strong_and_weak(tmp_path, capsys):
    scaling.main(["--out", str(tmp_path), "--nodes", "1,2", "--strategies", "dp,sp", "--modes", "strong,weak",
                  "--set", "data.batch_size=8", "--set", "data.seq_len=64", "--dry-run"])
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 8 and all(c.startswith("sbatch --parsable --nodes=") for c in commands)
    weak_dp_2 = next(c for c in commands if "dp-weak-n2" in c)
    assert "--nodes=2" in weak_dp_2 and "data.batch_size=32" in weak_dp_2 and "parallel.dp=4" in weak_dp_2
    weak_sp_2 = next(c for c in commands if "sp-weak-n2" in c)
    assert "data.seq_len=256" in weak_sp_2 and "parallel.sp=4" in weak_sp_2
    strong_sp_2 = next(c for c in commands if "sp-strong-n2" in c)
    assert "data.seq_len" not in strong_sp_2.split("--set data.seq_len=64", 1)[1]
