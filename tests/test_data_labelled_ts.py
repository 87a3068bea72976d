"""UEA/UCR .ts files: the real JapaneseVowels archive file (installed by make setup, inside
aeon's wheel), small files the tests write (equal and unequal length, uni- and multivariate,
classes and regression targets), and every malformed line refused by the real command.

    .venv/bin/python -m pytest -q tests/test_data_labelled_ts.py
"""

import numpy as np
import pytest
from support import assert_refused, run_data_cli

from mpirnn.data.bundled import aeon_ts
from mpirnn.data.manifest import load_manifest
from mpirnn.data.row_reader import RowReader
from mpirnn.data.row_stats import lengths_and_counts
from mpirnn.data.ts_format import read_ts
from mpirnn.data.ts_input import prepare_ts

HEADER = """# a comment
% another comment
@problemName Toy
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength false
@classLabel true up down flat
@data
"""
CASES = ["1,2,3:4,5,6:up", "3,2:1,0:down", "0,0,0,0:1,1,1,1:flat", "5,6,?,?:7,8,?,?:up",
         "9,8,7:6,5,4:down", "1,1:2,2:flat"]


def write(tmp_path, text: str, name: str = "toy.ts"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def japanese_vowels():
    train, test = aeon_ts("JapaneseVowels"), aeon_ts("JapaneseVowels", "TEST")
    if train is None or test is None:
        pytest.skip("aeon's wheel is not installed (make setup installs it, --no-deps): the real "
                    "JapaneseVowels .ts files are inside it; the parser is still tested below")
    return train, test


def test_the_real_japanese_vowels_file(tmp_path, japanese_vowels):
    train, test = japanese_vowels
    parsed = read_ts(train)
    assert (len(parsed.series), parsed.dimensions, parsed.classes) == (
        270, 12, tuple("123456789"))
    m = prepare_ts(train, tmp_path / "jv", val=test)
    val = load_manifest(tmp_path / "jv", split="val")
    assert (m.task, m.length, val.length, m.features, m.seq_len) == ("classify", 270, 370, 12, 29)
    train_lengths, train_counts = lengths_and_counts(m)
    val_lengths, val_counts = lengths_and_counts(val)
    both = np.concatenate([train_lengths, val_lengths])
    assert (both.min(), both.max()) == (7, 29)
    assert train_counts.tolist() == [30] * 9 and val_counts.sum() == 370
    assert m.val_split == {"method": "file", "file": "JapaneseVowels_TEST.ts"}
    first = RowReader(m).read([0])
    assert first.lengths.item() == 20   # the first case: 20 steps
    assert np.isclose(m.denormalize(first.inputs[0, 0].double().numpy())[0], 1.860936, atol=1e-5)
    result = run_data_cli("info", tmp_path / "jv")
    assert result.returncode == 0 and "rows per class: 1 30, 2 30" in result.stdout
    assert "val: 370 rows, lengths min 7 median" in result.stdout


def test_a_written_file_parses_with_lengths_and_trimmed_trailing_missing(tmp_path):
    parsed = read_ts(write(tmp_path, HEADER + "\n".join(CASES) + "\n"))
    assert parsed.classes == ("up", "down", "flat") and parsed.problem == "Toy"
    assert parsed.lengths.tolist() == [3, 2, 4, 2, 3, 2] and parsed.trimmed == 1
    assert parsed.series[1].tolist() == [[3, 1], [2, 0]]
    m = prepare_ts(tmp_path / "toy.ts", tmp_path / "ds", val_fraction=0.5, seed=1)
    val = load_manifest(tmp_path / "ds", split="val")
    assert m.classes == ("up", "down", "flat") and m.seq_len == 4
    assert lengths_and_counts(m)[1].tolist() == [1, 1, 1]     # stratified: one of each class
    assert lengths_and_counts(val)[1].tolist() == [1, 1, 1]


def test_lower_case_keywords_univariate_regression(tmp_path):
    path = write(tmp_path, "@problemname R\n@univariate true\n@equallength true\n"
                           "@serieslength 3\n@targetlabel true\n@data\n"
                           "1,2,3:0.5\n2,3,4:1.5\n3,4,5:-2\n4,5,6:0.25\n")
    m = prepare_ts(path, tmp_path / "ds", val_fraction=0)
    assert (m.task, m.task_spec.targets, m.features, m.seq_len) == ("regress", 1, 1, 3)
    targets = m.task_spec.target_normalization.denormalize(
        RowReader(m).read(range(4)).labels.double().numpy())
    assert np.allclose(targets.ravel(), [0.5, 1.5, -2, 0.25], atol=1e-6)


@pytest.mark.parametrize("lines, words", [
    (["1,2,3:4,5,6:up", "1,x,3:4,5,6:up"], ["toy.ts line 12: 'x' is not a number (dimension 0"]),
    (["1,2,3:4,5,6:up", "1,2,3:up"], ["toy.ts line 12: 1 dimension(s) and a label, expected 2"]),
    (["1,2,3:4,5,6:sideways"], ["line 11: class label 'sideways' is not declared"]),
    (["1,?,3:4,5,6:up"], ["line 11: missing value at dimension 0, step 1, inside the series"]),
    (["1,2,3:4,5:up"], ["line 11: its dimensions have different lengths (3, 2)"]),
    ([], ["no cases after @data"]),
])
def test_bad_lines_are_refused_with_their_line_number(tmp_path, lines, words):
    write(tmp_path, HEADER + "\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert_refused(run_data_cli("prepare", "--out", out, "--ts", tmp_path / "toy.ts"), out, *words)


@pytest.mark.parametrize("header, words", [
    ("@timeStamps true\n@classLabel true a\n@data\n", ["@timeStamps true is not supported"]),
    ("@classLabel false\n@data\n", ["no labels (@classLabel and @targetLabel"]),
    ("@dimensionz 2\n@data\n", ["line 1: unknown header keyword @dimensionz"]),
    ("1,2:a\n", ["line 1: '1,2:a' comes before @data"]),
])
def test_bad_headers_are_refused(tmp_path, header, words):
    write(tmp_path, header + "1,2:a\n")
    out = tmp_path / "out"
    assert_refused(run_data_cli("prepare", "--out", out, "--ts", tmp_path / "toy.ts"), out, *words)


def test_a_val_file_of_another_problem_is_refused(tmp_path):
    write(tmp_path, HEADER + "\n".join(CASES) + "\n")
    write(tmp_path, HEADER.replace("up down flat", "a b") + "1,2:3,4:a\n", "other.ts")
    out = tmp_path / "out"
    result = run_data_cli("prepare", "--out", out, "--ts", tmp_path / "toy.ts", "--val",
                          tmp_path / "other.ts")
    assert_refused(result, out, "other.ts declares 'a b' but toy.ts 'up down flat'")
    both = run_data_cli("prepare", "--out", out, "--ts", tmp_path / "toy.ts", "--val",
                        tmp_path / "toy.ts", "--val-fraction", "0.2")
    assert_refused(both, out, "--val and --val-fraction both choose the val split")
