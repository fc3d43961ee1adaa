"""scripts/prepare_ss8.py: windows of one-hot residues around every resolved residue, the chain as group."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import lossbench, make_cfg

from lossbench.data.loading import load_dataset
from lossbench.data.sources import dataset_classes

SCRIPT = Path(__file__).parents[1] / "scripts" / "prepare_ss8.py"
spec = importlib.util.spec_from_file_location("prepare_ss8", SCRIPT)
prepare_ss8 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prepare_ss8)

HEADER = "input, dssp3, dssp8, disorder, cb513_mask\n"


def row(residues: str, states: str, disorder: str) -> str:
    """One chain as the CSV files hold it: space-separated letters, `disorder` 1.0/0.0 per residue."""
    spaced = lambda text: " ".join(text)  # noqa: E731
    flags = " ".join("1.0" if d == "1" else "0.0" for d in disorder)
    return f"{spaced(residues)}, {spaced('C' * len(states))}, {spaced(states)}, {flags}, {flags}\n"


def write_source(folder: Path, train_rows: list[str], test_rows: list[str]) -> Path:
    folder.mkdir()
    (folder / "CB513_HHblits.csv").write_text(HEADER + "".join(train_rows))
    (folder / "TS115_HHblits.csv").write_text(HEADER + "".join(test_rows))
    return folder


def test_windows_are_one_hot_with_unknown_and_beyond_the_chain_end():
    x = prepare_ss8.windows(list("AXC"), window=1)
    assert x.shape == (3, 22, 3) and (x.sum(axis=1) == 1).all()  # one channel set per position
    codes = x.argmax(axis=1)  # [residue, position]
    a, c, unknown, beyond = 0, prepare_ss8.AMINO_ACIDS.index("C"), prepare_ss8.UNKNOWN, prepare_ss8.BEYOND
    assert codes.tolist() == [[beyond, a, unknown], [a, unknown, c], [unknown, c, beyond]]


def test_prepare_keeps_resolved_residues_with_their_chain_as_group(tmp_path, capsys):
    source = write_source(
        tmp_path / "ss8", [row("MKVL", "HHGE", "0111"), row("ACDEF", "CCTSB", "11111")], [row("GHI", "IEC", "110")]
    )
    out = tmp_path / "ss8.npz"
    assert prepare_ss8.main([str(source), str(out), "--window", "2"]) == 0
    npz = np.load(out)
    assert npz["x_train"].shape == (8, 22, 5) and npz["x_test"].shape == (2, 22, 5)
    assert list(npz["classes"]) == ["H", "G", "I", "E", "B", "T", "S", "C"]
    assert list(npz["class_groups"]) == ["H", "H", "H", "E", "E", "C", "C", "C"]
    states = "HGIEBTSC"
    assert "".join(states[i] for i in npz["y_train"]) == "HGECCTSB"
    assert "".join(states[i] for i in npz["y_test"]) == "IE"
    assert npz["groups_train"].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    # the unresolved M is no example but stays K's left neighbour
    assert npz["x_train"][0].argmax(axis=0).tolist()[1] == prepare_ss8.AMINO_ACIDS.index("M")
    assert "train (CB513_HHblits.csv): 2 chains, 9 residues, 8 resolved" in capsys.readouterr().out


def test_the_prepared_file_loads_with_a_chain_level_validation_split(tmp_path):
    rng = np.random.default_rng(0)
    chains = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 12)) for _ in range(20)]
    train = [row(c, "".join(rng.choice(list("HGIEBTSC"), 12)), "1" * 12) for c in chains]
    source = write_source(tmp_path / "ss8", train, [row("ACDEFGHIK", "HHHHEEEEC", "1" * 9)])
    out = tmp_path / "ss8.npz"
    assert prepare_ss8.main([str(source), str(out)]) == 0
    cfg = make_cfg("data=arrays", f"data.path={out}", "data.val_size=0.2").data
    data = load_dataset(cfg, dataset_classes(cfg), torch.eye(8))
    assert data.train_x.shape[1:] == (22, 15) and len(data.val_y) + len(data.train_y) == 240
    assert len(data.val_y) % 12 == 0  # whole chains of 12 residues


@pytest.mark.parametrize(
    "train_row, message",
    [
        (row("MKV", "HH", "111"), "chain 1: input, dssp8 and disorder have different lengths (3, 2, 3)"),
        (row("MKV", "HHQ", "111"), "chain 1: unknown state 'Q' in dssp8 (known: H G I E B T S C)"),
    ],
)
def test_bad_chains_are_one_line_naming_the_file_and_chain(tmp_path, capsys, train_row, message):
    source = write_source(tmp_path / "ss8", [train_row], [row("A", "H", "1")])
    assert prepare_ss8.main([str(source), str(tmp_path / "out.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "CB513_HHblits.csv" in err and err.count("\n") == 1
    assert not (tmp_path / "out.npz").exists()


def test_a_disorder_value_other_than_0_or_1_is_refused(tmp_path, capsys):
    source = write_source(tmp_path / "ss8", ["M K, C C, H H, 1.0 0.5, 1.0 1.0\n"], [row("A", "H", "1")])
    assert prepare_ss8.main([str(source), str(tmp_path / "out.npz")]) == 2
    assert "disorder must be 1.0 (resolved) or 0.0 (not), not '0.5'" in capsys.readouterr().err


def test_a_missing_file_is_one_line(tmp_path, capsys):
    (tmp_path / "ss8").mkdir()
    assert prepare_ss8.main([str(tmp_path / "ss8"), str(tmp_path / "out.npz")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'ss8' / 'CB513_HHblits.csv'}: file not found\n"


@pytest.mark.parametrize("model", ["mlp", "cnn1d"])
def test_the_ss8_preset_trains_on_a_prepared_file_and_scores_it_with_the_q3_table(tmp_path, model):
    rng = np.random.default_rng(0)
    chains = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 30)) for _ in range(12)]
    train = [row(c, "".join(rng.choice(list("HGIEBTSC"), 30)), "1" * 30) for c in chains]
    source = write_source(tmp_path / "ss8", train, [row(chains[0], "HHHHHGGGIIEEEEBBTTSSCCCCCHHHHH", "1" * 30)])
    assert prepare_ss8.main([str(source), str(tmp_path / "ss8.npz")]) == 0
    table = Path(__file__).parents[1] / "scripts" / "reference" / "ss8_q3_scores.csv"
    result = lossbench(
        "run",
        "experiment=ss8",
        f"model={model}",
        f"data.path={tmp_path / 'ss8.npz'}",
        f"scores.path={table}",
        "train.epochs=1",
        "train.batch_size=64",
        "train.progress=false",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    confusion = pd.read_csv(tmp_path / "run" / "confusion.csv", index_col=0)
    assert list(confusion.columns) == ["H", "G", "I", "E", "B", "T", "S", "C"] and confusion.to_numpy().sum() == 30


def test_chains_sharing_a_stretch_of_sequence_are_one_family(tmp_path):
    """CB513 holds the same stretches of sequence in several chains: a split by chain would put copies of training
    windows into validation. Chains linked by an identical 12-residue stretch, even through a third, share a group."""
    a, b = "ACDEFGHIKLMN", "PQRSTVWYACDE"
    chains = ["WW" + a + "YY", a + b, "MM" + b, "QQ" + a[:11] + "V", "H" * 14]
    train = [row(c, "C" * len(c), "1" * len(c)) for c in chains]
    source = write_source(tmp_path / "ss8", train, [row("A", "H", "1")])
    assert prepare_ss8.main([str(source), str(tmp_path / "out.npz")]) == 0
    groups = np.load(tmp_path / "out.npz")["groups_train"]
    first = np.cumsum([0] + [len(c) for c in chains[:-1]])
    family = [int(groups[i]) for i in first]
    assert family[0] == family[1] == family[2]  # 0 and 2 share nothing, but each shares 12 residues with 1
    assert len({family[0], family[3], family[4]}) == 3  # 11 shared residues are not a family
    assert all(len(set(groups[f : f + len(c)])) == 1 for f, c in zip(first, chains))  # a chain is never cut
