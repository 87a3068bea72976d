"""Tests for the typed run configuration (mpirnn.config): defaults, docs, TOML, --set, checks.

Plain pytest, no MPI: cd /work/main && .venv/bin/python -m pytest -q tests/test_config.py
"""

import dataclasses
import subprocess
import sys
import tomllib

import pytest

from mpirnn.config import CELLS, Config, describe, load_config, parse_override
from mpirnn.errors import ConfigError

SECTIONS = ("model", "data", "parallel", "train", "checkpoint", "output")


def all_keys():
    """(section, key, dataclass field) for every key of the config."""
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory()):
            yield section.name, f.name, f


def test_defaults_load_and_match_the_dataclasses():
    cfg = load_config()
    assert cfg == Config()
    assert [f.name for f in dataclasses.fields(cfg)] == list(SECTIONS)
    # The contract names (docs/design.md, "Config") exist with sensible defaults.
    assert cfg.model.cell in CELLS
    assert (cfg.parallel.dp, cfg.parallel.sp, cfg.parallel.pp, cfg.parallel.tp) == (-1, 1, 1, 1)
    assert cfg.train.steps > 0 and cfg.train.lr > 0
    assert cfg.checkpoint.resume is False
    assert cfg.to_dict()["model"]["hidden"] == cfg.model.hidden


def test_every_key_has_a_one_line_doc():
    keys = list(all_keys())
    assert len(keys) > 20
    for section, key, f in keys:
        text = f.metadata.get("doc")
        assert text and text.strip(), f"{section}.{key} has no doc"
        assert "\n" not in text, f"{section}.{key}: doc is not one line"


def test_python_m_config_lists_every_key_with_its_doc():
    out = subprocess.run([sys.executable, "-m", "mpirnn.config"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out == describe() + "\n"
    lines = out.splitlines()
    for section in SECTIONS:
        assert f"[{section}]" in lines
    for section, key, f in all_keys():
        matching = [line for line in lines if line.split("=")[0].strip() == key]
        assert any(f.metadata["doc"] in line for line in matching), f"{section}.{key} missing from the listing"


def test_the_listing_is_a_valid_toml_of_the_defaults():
    # With the comments stripped by the TOML parser it must load back as the defaults.
    table = tomllib.loads(describe())
    assert table == Config().to_dict()


def test_toml_file_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[model]\ncell = "gru"\nhidden = 48\n\n[train]\nsteps = 7\nlr = 1\n'
                    '[data]\npath = "/data/corpus"\n')
    cfg = load_config(path, ["model.hidden=64", "train.seed=5"])
    assert cfg.model.cell == "gru"
    assert cfg.model.hidden == 64            # --set wins over the file
    assert cfg.train.steps == 7
    assert cfg.train.seed == 5
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)   # int accepted for float
    assert cfg.data.path == "/data/corpus"
    assert cfg.model.layers == Config().model.layers                # untouched keys keep defaults


def test_later_override_wins():
    cfg = load_config(None, ["train.steps=3", "train.steps=9"])
    assert cfg.train.steps == 9


@pytest.mark.parametrize("text, expected", [
    ("train.steps=3", 3),
    ("train.lr=1e-3", 1e-3),
    ("train.stateful=true", True),
    ("checkpoint.resume=false", False),
    ('model.cell="gru"', "gru"),
    ("data.path=/data/corpus", "/data/corpus"),
    ("data.path=relative/dir", "relative/dir"),
    ("data.path=", ""),
    ("output.sample_prompt=a=b", "a=b"),
])
def test_set_values_read_as_toml_or_plain_string(text, expected):
    section, rest = text.split(".", 1)
    key = rest.split("=", 1)[0]
    parsed = parse_override(text)
    assert parsed == {section: {key: expected}}
    assert type(parsed[section][key]) is type(expected)


def test_set_unquoted_path_reaches_the_config():
    cfg = load_config(None, ["data.path=/scratch/my data/set", "output.metrics=runs/x.jsonl"])
    assert cfg.data.path == "/scratch/my data/set"
    assert cfg.output.metrics == "runs/x.jsonl"


@pytest.mark.parametrize("text", ["train.steps", "steps=3", "a.b.c=1", "=3"])
def test_set_needs_section_key_value(text):
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override(text)


@pytest.mark.parametrize("override, words", [
    ("train.stepz=3", ["train.stepz", "did you mean 'steps'"]),
    ("model.hiden=3", ["model.hiden", "did you mean 'hidden'"]),
    ("modle.hidden=3", ["[modle]", "did you mean 'model'"]),
    ("paralel.dp=2", ["[paralel]", "did you mean 'parallel'"]),
])
def test_unknown_section_or_key_suggests(override, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    for word in words:
        assert word in str(info.value)


def test_unknown_key_with_nothing_close_still_names_it():
    with pytest.raises(ConfigError, match=r"unknown key train\.zzzzqqq") as info:
        load_config(None, ["train.zzzzqqq=1"])
    assert "did you mean" not in str(info.value)


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[model]\nhiden = 16\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "did you mean 'hidden'" in str(info.value)


def test_section_must_be_a_table(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("model = 3\n")
    with pytest.raises(ConfigError, match=r"\[model\] must be a table"):
        load_config(path)


def test_missing_and_invalid_config_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "broken.toml"
    bad.write_text("[model\nhidden = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


@pytest.mark.parametrize("override, kind", [
    ("train.steps=abc", "int"),       # string for int
    ("train.steps=true", "int"),      # bool for int
    ("train.steps=2.5", "int"),       # float for int
    ("model.hidden=\"16\"", "int"),   # quoted number is a string
    ("train.lr=fast", "float"),
    ("train.lr=true", "float"),       # bool is not a number here
    ("train.stateful=1", "bool"),     # int for bool
    ("train.stateful=yes", "bool"),
    ("data.path=3", "str"),
    ("model.cell=[1, 2]", "str"),
])
def test_wrong_type_is_refused(override, kind):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert override.split("=")[0] in message
    assert f"must be {kind}" in message


def test_wrong_type_in_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[data]\nbatch_size = "8"\n')
    with pytest.raises(ConfigError, match="data.batch_size must be int"):
        load_config(path)


@pytest.mark.parametrize("key", ["model.hidden", "model.layers", "model.embed", "data.seq_len",
                                 "data.batch_size", "output.log_every", "checkpoint.keep"])
@pytest.mark.parametrize("value", [0, -4])
def test_sizes_must_be_positive(key, value):
    with pytest.raises(ConfigError, match=f"{key} = {value} must be positive"):
        load_config(None, [f"{key}={value}"])


@pytest.mark.parametrize("key", ["train.steps", "parallel.microbatches", "checkpoint.every",
                                 "train.threads", "output.sample_bytes", "train.grad_clip"])
def test_counts_must_not_be_negative(key):
    with pytest.raises(ConfigError, match=f"{key} = -1.* must not be negative"):
        load_config(None, [f"{key}=-1"])
    load_config(None, [f"{key}=0"])  # zero is allowed for these


@pytest.mark.parametrize("value", ["0", "-1e-3"])
def test_learning_rate_must_be_positive(value):
    with pytest.raises(ConfigError, match="train.lr .* must be positive"):
        load_config(None, [f"train.lr={value}"])


@pytest.mark.parametrize("axis", ["dp", "sp", "pp", "tp"])
@pytest.mark.parametrize("value", [0, -2])
def test_parallel_degrees_positive_or_minus_one(axis, value):
    with pytest.raises(ConfigError, match=f"parallel.{axis} = {value}"):
        load_config(None, [f"parallel.{axis}={value}"])
    # -1 (infer) passes the config check; the grid refuses two -1s later (tests/test_grid.py).
    assert getattr(load_config(None, [f"parallel.{axis}=-1"]).parallel, axis) == -1


def test_bad_cell_with_suggestion():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.cell=lstn"])
    message = str(info.value)
    assert "'lstn'" in message and "did you mean 'lstm'" in message
    for cell in CELLS:
        assert cell in message  # the choices are listed


def test_every_cell_is_accepted():
    for cell in CELLS:
        assert load_config(None, [f"model.cell={cell}"]).model.cell == cell


@pytest.mark.parametrize("dtype", ["float16", "double", "Float32"])
def test_bad_dtype(dtype):
    with pytest.raises(ConfigError, match="model.dtype .*float32 or float64"):
        load_config(None, [f"model.dtype={dtype}"])


def test_float64_accepted():
    assert load_config(None, ["model.dtype=float64"]).model.dtype == "float64"


def test_bad_device():
    with pytest.raises(ConfigError, match="train.device"):
        load_config(None, ["train.device=tpu"])


def test_resume_needs_a_checkpoint_dir(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint.resume = true needs checkpoint.dir"):
        load_config(None, ["checkpoint.resume=true"])
    cfg = load_config(None, ["checkpoint.resume=true", f"checkpoint.dir={tmp_path}"])
    assert cfg.checkpoint.resume and cfg.checkpoint.dir == str(tmp_path)
