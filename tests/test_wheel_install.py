"""The package a cluster user installs: a wheel built from the sources, installed (not editable)
into a fresh environment, trains on 2 ranks from a folder outside the repository through the
console scripts, with the performance model choosing its counts from a calibration found
after the install (a shipped one inside site-packages, or the user's own folder on a CPU the
shipped ones do not cover), then evaluates the checkpoint.

    .venv/bin/python -m pytest -q tests/test_wheel_install.py     # about a minute

The fresh environment takes its dependencies (torch, mpi4py, h5py, ...) from this one through
a .pth line naming this environment's site-packages: that adds the folder to sys.path but runs
none of its own .pth files, so this environment's editable mpirnn is not picked up (checked);
its MPI library through LD_LIBRARY_PATH, as a site MPI is found on a cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from support import ROOT, make_token_dataset

from mpirnn.host import cpu_model

pytestmark = pytest.mark.timeout(900)

SCRIPTS = ("mpirnn-train", "mpirnn-data", "mpirnn-config", "mpirnn-reference", "mpirnn-evaluate", "mpirnn-generate",
           "mpirnn-forecast", "mpirnn-export", "mpirnn-plan", "mpirnn-bench", "mpirnn-report", "mpirnn-scaling",
           "mpirnn-schedule")


def run(command, **kw):
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done


def build_wheel(tmp: Path) -> Path:
    """The wheel of a copy of the sources (building in the repository would leave build/ there)."""
    source = tmp / "source"
    shutil.copytree(ROOT / "mpirnn", source / "mpirnn", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "wheel", source])
    (wheel,) = (tmp / "wheel").glob("mpirnn-*.whl")
    return wheel


def fresh_environment(tmp: Path, wheel: Path) -> tuple[Path, Path]:
    """(its bin folder, its site-packages) with the wheel installed and this environment's packages visible."""
    new = tmp / "new-env"
    run([sys.executable, "-m", "venv", "--without-pip", new])
    python = new / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel])
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "dependencies-from-the-test-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return new / "bin", site


def test_the_wheel_installs_and_trains_on_two_ranks_outside_the_repository(tmp_path):
    wheel = build_wheel(tmp_path)
    bin_dir, site = fresh_environment(tmp_path, wheel)
    assert all((bin_dir / script).exists() for script in SCRIPTS)
    where = run([bin_dir / "python", "-c", "import mpirnn, mpirnn.perf.calibration as c; "
                                           "print(mpirnn.__file__); print(c.SHIPPED_DIR)"], cwd=tmp_path).stdout.split()
    assert Path(where[0]).is_relative_to(site), where            # the installed copy, not the editable one
    shipped = sorted(Path(where[1]).glob("*.json"))
    assert shipped and all(p.is_relative_to(site) for p in shipped)   # the calibrations came with the wheel

    user = tmp_path / "user-calibrations"
    # The MPI library of this environment (the mpich wheel's, in its lib/), found as a cluster's
    # `module load` makes a site MPI found.
    libraries = os.pathsep.join(filter(None, [str(Path(sys.prefix) / "lib"), os.environ.get("LD_LIBRARY_PATH")]))
    env = {**os.environ, "MPIRNN_CALIBRATION_DIR": str(user), "LD_LIBRARY_PATH": libraries}
    env.pop("MPIRNN_SHIPPED_CALIBRATIONS", None)
    if not any(json.loads(p.read_text())["host"]["cpu"] == cpu_model() for p in shipped):
        # The shipped calibrations are of the project's own CPU; on another, a user's calibration (here a
        # shipped one relabelled, as `mpirnn-plan --calibrate` would write it) is what the run must use.
        data = json.loads(shipped[-1].read_text())
        data["host"]["cpu"] = cpu_model()
        user.mkdir()
        expected = user / "this-cpu.json"
        expected.write_text(json.dumps(data))
    else:
        expected = None

    data = make_token_dataset(tmp_path / "data", val_fraction=0.1)
    checkpoints = tmp_path / "checkpoints"
    mpirun = Path(sys.executable).with_name("mpirun")
    trained = run([mpirun, "-n", "2", bin_dir / "mpirnn-train", "--set", f"data.path={data}", "--set", "parallel.sp=2",
                   "--set", "model.cell=lstm", "--set", "model.hidden=32", "--set", "model.embed=16",
                   "--set", "data.batch_size=8", "--set", "data.seq_len=32", "--set", "train.steps=3",
                   "--set", "output.sample_bytes=0", "--set", f"checkpoint.dir={checkpoints}"], cwd=tmp_path, env=env)
    line = next(line for line in trained.stdout.splitlines() if "automatic counts chosen by" in line)
    chosen = (tmp_path / line.split("the performance model, calibration ", 1)[1].strip()).resolve()  # shown from cwd
    if expected is None:
        assert chosen.is_relative_to(site.resolve()) and chosen.parent == Path(where[1]).resolve(), line
    else:
        assert chosen == expected.resolve(), line

    evaluated = run([mpirun, "-n", "2", bin_dir / "mpirnn-evaluate", "--checkpoint", checkpoints,
                     "--out", tmp_path / "eval.json"], cwd=tmp_path, env=env)
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["split"] == "val" and result["loss"] > 0 and "val split" in evaluated.stdout
    assert run([bin_dir / "mpirnn-config"], cwd=tmp_path).stdout.count("=") > 30
