"""scripts/prepare_solubility.py: RDKit features of SD records, unparseable or unlabelled records skipped and
named. Needs RDKit (the `chem` extra, in `dev`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rdkit")
from rdkit import Chem  # noqa: E402

SCRIPT = Path(__file__).parents[1] / "scripts" / "prepare_solubility.py"
spec = importlib.util.spec_from_file_location("prepare_solubility", SCRIPT)
prepare_solubility = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prepare_solubility)

BROKEN_BLOCK = "broken\n     RDKit          2D\n\n  1  0  0  0  0  0  0  0  0  0999 V2000\nnot an atom line\nM  END\n"


def record(ident: str, smiles: str | None, label: str | None) -> str:
    """One SD record as the data files hold it (mol block, then `>  <FIELD>  (n)` and its value)."""
    block = Chem.MolToMolBlock(Chem.MolFromSmiles(smiles)) if smiles else BROKEN_BLOCK
    fields = {"ID": ident, "SOL_classification": label, "smiles": smiles or "?"}
    data = "".join(f">  <{k}>  (1) \n{v}\n\n" for k, v in fields.items() if v is not None)
    return f"{block}{data}$$$$\n"


def write_source(folder: Path, train: list[str], test: list[str]) -> Path:
    folder.mkdir()
    (folder / "solubility.train.sdf").write_text("".join(train))
    (folder / "solubility.test.sdf").write_text("".join(test))
    return folder


def test_features_are_fingerprint_bits_then_descriptors(tmp_path):
    ethanol = prepare_solubility.features(Chem.MolFromSmiles("CCO"), bits=64)
    assert ethanol.shape == (64 + len(prepare_solubility.DESCRIPTORS),) and ethanol.dtype == np.float32
    assert set(np.unique(ethanol[:64])) <= {0.0, 1.0} and ethanol[:64].sum() > 0
    logp, weight, rotatable, aromatic, tpsa, donors, acceptors = ethanol[64:]
    assert weight == pytest.approx(46.07, abs=0.01) and donors == 1 and acceptors == 1 and aromatic == 0
    assert prepare_solubility.features(Chem.MolFromSmiles("c1ccccc1"), bits=64)[64 + 3] == 1.0  # all aromatic


def test_prepare_writes_labels_in_order_and_skips_what_it_cannot_use(tmp_path, capsys):
    train = [
        record("1", "CCCCC", "(A) low"),
        record("2", "CCO", "(C) high"),
        record("3", None, "(B) medium"),
        record("4", "CC(=O)O", None),
        record("5", "c1ccccc1O", "(B) medium"),
    ]
    source = write_source(tmp_path / "sol", train, [record("9", "CCN", "(C) high")])
    out = tmp_path / "sol.npz"
    assert prepare_solubility.main([str(source), str(out), "--bits", "32"]) == 0
    npz = np.load(out)
    assert list(npz["classes"]) == ["low", "medium", "high"]
    assert npz["y_train"].tolist() == [0, 2, 1] and npz["y_test"].tolist() == [2]
    assert npz["x_train"].shape == (3, 32 + 7) and len(npz["feature_names"]) == 39
    printed = capsys.readouterr().out
    assert "skipped 2 record(s) RDKit could not parse or without a known class: 3, 4" in printed
    assert "train (solubility.train.sdf): 3 molecules: low 1, medium 1, high 1" in printed


def test_a_split_with_no_usable_record_is_refused_in_one_line(tmp_path, capsys):
    source = write_source(tmp_path / "sol", [record("1", "CCO", "(A) low")], [record("7", None, "(A) low")])
    assert prepare_solubility.main([str(source), str(tmp_path / "out.npz")]) == 2
    err = capsys.readouterr().err
    assert "solubility.test.sdf: no record could be used (1 skipped" in err and err.count("\n") == 1
    assert not (tmp_path / "out.npz").exists()


def test_a_missing_file_is_one_line(tmp_path, capsys):
    (tmp_path / "sol").mkdir()
    assert prepare_solubility.main([str(tmp_path / "sol"), str(tmp_path / "out.npz")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'sol' / 'solubility.train.sdf'}: file not found\n"
