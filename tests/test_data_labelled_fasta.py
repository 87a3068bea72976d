"""FASTA records as token rows: the alphabet inferred (DNA, RNA, protein) or given, labels per
record from a CSV or per letter from a second FASTA file, and every bad input refused by the
real command with the record and position.

    .venv/bin/python -m pytest -q tests/test_data_labelled_fasta.py
"""

from types import SimpleNamespace

import h5py
import pytest
from support import assert_refused, run_data_cli

from mpirnn.data.fasta_input import prepare_fasta
from mpirnn.training.dataset_fit import check_fit
from mpirnn.data.manifest import load_manifest
from mpirnn.data.row_reader import RowReader
from mpirnn.errors import DataError

DNA = """>s1 promoter of gene A
ACGTACGT
acgt
>s2
GGGN
>s3
TTAC
>s4
CA
"""
LABELS_CSV = "id,label\ns2,yes\ns1,no\ns3,yes\ns4,no\n"
PROTEIN = ">p1\nMKVL\n>p2\nAWYF\n"
STRUCTURE = ">p1\nCHHE\n>p2\nEEC\n"


def write(tmp_path, **files):
    for name, text in files.items():
        (tmp_path / name.replace("_", ".")).write_text(text)


def test_dna_with_record_labels(tmp_path):
    write(tmp_path, seqs_fa=DNA, labels_csv=LABELS_CSV)
    m = prepare_fasta(tmp_path / "seqs.fa", tmp_path / "ds", labels=tmp_path / "labels.csv",
                      val_fraction=0)
    assert (m.kind, m.alphabet, m.vocab_size, m.seq_len) == ("token_sequences", "ACGTN", 5, 12)
    assert (m.task, m.classes) == ("classify", ("no", "yes"))   # first appearance, record order
    batch = RowReader(m).read(range(4))
    assert batch.lengths.tolist() == [12, 4, 4, 2]
    assert batch.labels.tolist() == [0, 1, 1, 0]
    assert batch.inputs[0].tolist() == [0, 1, 2, 3] * 3        # lower case read as upper case
    assert batch.inputs[1, :4].tolist() == [2, 2, 2, 4] and batch.inputs[3, 2:].sum() == 0


def test_protein_with_per_letter_labels(tmp_path):
    write(tmp_path, p_faa=PROTEIN.replace("AWYF", "AWY"), ss_fasta=STRUCTURE)
    m = prepare_fasta(tmp_path / "p.faa", tmp_path / "ds", labels=tmp_path / "ss.fasta",
                      val_fraction=0)
    assert m.alphabet == "ACDEFGHIKLMNPQRSTVWYX" and (m.task, m.classes) == ("tag", ("C", "H", "E"))
    assert RowReader(m).read([0, 1]).labels.tolist() == [[0, 1, 1, 2], [2, 2, 0, -1]]


def test_numbers_in_the_csv_are_regression_targets(tmp_path):
    write(tmp_path, seqs_fa=DNA, y_csv="s1,0.5\ns2,1.25\ns3,-3\ns4,2\n")
    m = prepare_fasta(tmp_path / "seqs.fa", tmp_path / "ds", labels=tmp_path / "y.csv",
                      val_fraction=0)
    assert (m.task, m.task_spec.targets) == ("regress", 1)
    with h5py.File(m.shard_path(0)) as f:
        assert f["labels"][:, 0].tolist() == [0.5, 1.25, -3, 2]


def test_a_given_alphabet_and_an_rna_file(tmp_path):
    write(tmp_path, r_fa=">a\nACGU\n>b\nUUGA\n", y_csv="a,x\nb,z\n")
    assert prepare_fasta(tmp_path / "r.fa", tmp_path / "rna", labels=tmp_path / "y.csv",
                         val_fraction=0).alphabet == "ACGUN"
    m = prepare_fasta(tmp_path / "r.fa", tmp_path / "own", labels=tmp_path / "y.csv",
                      alphabet="UGCA", val_fraction=0)
    assert m.alphabet == "UGCA" and RowReader(m).read([0]).inputs.tolist() == [[3, 2, 1, 0]]


@pytest.mark.parametrize("files, extra, words", [
    ({"seqs_fa": DNA.replace("GGGN", "GGJN")}, [],
     ["record 's2' (record 2, line 4) position 3: letter 'J' is not in the alphabet ACGTN"]),
    ({"seqs_fa": DNA.replace("GGGN", "GGGU")}, ["--alphabet", "dna"],
     ["record 's2' (record 2, line 4) position 4: letter 'U' is not in the alphabet ACGTN "
      "(--alphabet dna)"]),
    ({"labels_csv": LABELS_CSV + "s9,yes\n"}, [], ["labels.csv line 6: id 's9' is not a record"]),
    ({"labels_csv": "s1,no\ns2,yes\ns3,no\n"}, [], ["record 's4' of seqs.fa has no label"]),
    ({"labels_csv": "s1,no\ns1,yes\n"}, [], ["line 2: id 's1' already has a label (line 1)"]),
    ({"seqs_fa": DNA + ">s1\nAC\n"}, [], ["line 10: record id 's1' already used on line 1"]),
    ({"labels_csv": "s1\n"}, [], ["labels.csv line 1: expected two fields id,label"]),
])
def test_bad_input_is_refused_by_the_command(tmp_path, files, extra, words):
    write(tmp_path, **{"seqs_fa": DNA, "labels_csv": LABELS_CSV, **files})
    out = tmp_path / "out"
    result = run_data_cli("prepare", "--out", out, "--fasta", tmp_path / "seqs.fa", "--labels",
                          tmp_path / "labels.csv", *extra)
    assert_refused(result, out, *words)


@pytest.mark.parametrize("labels, words", [
    (">p1\nCHHE\n>p2\nEE\n", ["record 'p2': 2 label letters in ss.fasta for 4 letters in p.faa"]),
    (">p1\nCHHE\n", ["record 'p2' of p.faa has no labels in ss.fasta"]),
    (STRUCTURE.replace("EEC", "EECC") + ">p3\nC\n", ["ss.fasta line 5: id 'p3' is not a record"]),
])
def test_bad_per_letter_labels_are_refused(tmp_path, labels, words):
    write(tmp_path, p_faa=PROTEIN, ss_fasta=labels)
    out = tmp_path / "out"
    result = run_data_cli("prepare", "--out", out, "--fasta", tmp_path / "p.faa", "--labels",
                          tmp_path / "ss.fasta")
    assert_refused(result, out, *words)


def test_fasta_without_labels_is_token_rows_of_task_next(tmp_path):
    write(tmp_path, seqs_fa=DNA)
    result = run_data_cli("prepare", "--out", tmp_path / "ds", "--fasta", tmp_path / "seqs.fa",
                          "--val-fraction", "0.25")
    assert result.returncode == 0, result.stderr
    assert "task next" in result.stdout and "token_sequences: 3 rows" in result.stdout
    m = load_manifest(tmp_path / "ds")
    assert (m.task, m.kind, m.has_lengths, m.alphabet) == ("next", "token_sequences", True, "ACGTN")
    batch = RowReader(m).read(range(3))
    val = RowReader(load_manifest(tmp_path / "ds", split="val"))
    assert batch.labels is None and batch.inputs.shape == (3, 12)
    assert sorted(batch.lengths.tolist() + val.lengths.tolist()) == [2, 4, 4, 12]
    assert run_data_cli("validate", tmp_path / "ds").returncode == 0
    with pytest.raises(DataError, match="token rows of different lengths without labels"):
        check_fit(m, SimpleNamespace(data=SimpleNamespace(batch_size=2, seq_len=4, holdout=0)), None)
    out = tmp_path / "out"
    assert_refused(run_data_cli("prepare", "--out", out, "--fasta", tmp_path / "seqs.fa",
                                "--task", "classify"), out, "--task only applies with --labels")
