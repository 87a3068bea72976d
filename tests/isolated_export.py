"""What tests/test_export.py and tests/test_export_labelled.py share: running a script on the
exported files in a Python that cannot import mpirnn (`-I -S`, only the site-packages folder on
sys.path, none of its .pth files, so not the editable install), and opening each format there as
a user would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from support import ROOT

FORMATS = ("torch", "onnx", "safetensors")
SITE = Path(torch.__file__).resolve().parents[1]
STANDALONE = ROOT / "mpirnn" / "inference" / "standalone.py"

# The start of every script run in the isolated Python (SITE, ROOT, FORMAT and the caller's own
# settings are set before it): it refuses to go on where mpirnn is importable, and opens a file.
PRELUDE = r"""
import importlib.util, json, sys
sys.path.append(SITE)
try:
    import mpirnn
    sys.exit("mpirnn is importable: the check would prove nothing")
except ImportError:
    pass
import torch


def open_torch(path):
    extra = {"mpirnn.json": ""}
    m = torch.jit.load(path, _extra_files=extra)
    return m, json.loads(extra["mpirnn.json"])


def onnx_metadata(path):
    import onnx
    return {p.key: p.value for p in onnx.load(path).metadata_props}


def open_safetensors(path):
    from safetensors import safe_open
    spec = importlib.util.spec_from_file_location("standalone", ROOT + "/standalone.py")
    standalone = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standalone)
    with safe_open(path, "pt") as f:
        meta, serial = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    return standalone.from_serial(serial, json.loads(meta["config"]), json.loads(meta["dataset"])), meta
"""


def run_isolated(root: Path, fmt: str, script: str, **settings) -> dict:
    """PRELUDE and `script` in the isolated Python, in root (which holds standalone.py: STANDALONE),
    with SITE, ROOT, FORMAT and `settings` set; what the script saved to root/{fmt}-results.pt."""
    values = {"SITE": str(SITE), "ROOT": str(root), "FORMAT": fmt, **settings}
    code = f"{', '.join(values)} = {', '.join(repr(v) for v in values.values())}\n{PRELUDE}{script}"
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=root, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr
    return torch.load(root / f"{fmt}-results.pt")
