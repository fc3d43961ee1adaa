"""Aqueous solubility classes of molecules (low < medium < high) as a lossbench `data=arrays` file, with RDKit.

Usage: python scripts/prepare_solubility.py ../shared/data/solubility data/solubility.npz [--bits 1024]
Needs RDKit: pip install 'lossbench[chem]'.

Reads solubility.train.sdf (training, and the validation split) and solubility.test.sdf (test): SD records with
the fields ID and SOL_classification ('(A) low', '(B) medium', '(C) high'). Each molecule, parsed from its mol
block, becomes one feature vector:
- a Morgan fingerprint (radius 2, `--bits` bits, default 1024): which substructures of up to 2 bonds around each
  atom are present, the usual structure-only encoding;
- 7 descriptors that carry most of what is known to drive solubility: Crippen logP, molecular weight, rotatable
  bonds and the aromatic share of heavy atoms (the four inputs of Delaney's ESOL, J. Chem. Inf. Comput. Sci. 44,
  1000-1005, 2004), and TPSA, H-bond donors and H-bond acceptors (polarity and hydrogen bonding with water).
lossbench standardises every feature with the training set's mean and standard deviation.

A record RDKit cannot parse, or whose class is missing or unknown, is skipped: the script prints how many were
skipped per split and their IDs (or record numbers), and refuses (exit 2) only when a split keeps no molecule.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from lossbench.atomic import savez_atomic
from lossbench.errors import LossbenchError, require, script_exit

CLASSES = ["low", "medium", "high"]
LABELS = {"(A) low": 0, "(B) medium": 1, "(C) high": 2}
FILES = {"train": "solubility.train.sdf", "test": "solubility.test.sdf"}
FIELD = re.compile(r">\s*<([^>]+)>")
DESCRIPTORS = ["logp", "mol_weight", "rotatable_bonds", "aromatic_share", "tpsa", "h_donors", "h_acceptors"]


def rdkit():
    """RDKit's modules, or one line saying how to install it."""
    try:
        from rdkit import Chem, RDLogger
        from rdkit.Chem import Crippen, Descriptors, Lipinski, rdFingerprintGenerator, rdMolDescriptors
    except ImportError:
        raise LossbenchError("RDKit is not installed: pip install 'lossbench[chem]' (or pip install rdkit)") from None
    RDLogger.DisableLog("rdApp.*")  # a record it cannot parse is reported once below, not as RDKit's log lines
    return Chem, Crippen, Descriptors, Lipinski, rdFingerprintGenerator, rdMolDescriptors


def records(path: Path) -> list[tuple[str, dict[str, str]]]:
    """(mol block, data fields) of every record of an SD file, split on its `$$$$` lines."""
    require(path.is_file(), f"{path}: file not found")
    out = []
    for text in path.read_text(errors="replace").split("$$$$\n"):
        if not text.strip():
            continue
        block, _, data = text.partition("M  END\n")
        lines = data.splitlines()
        # a field is a header line `>  <NAME>  (1)` and its value on the next line
        fields = {match[1]: value.strip() for line, value in zip(lines, lines[1:]) if (match := FIELD.match(line))}
        out.append((block + "M  END\n", fields))
    return out


def features(mol, bits: int) -> np.ndarray:
    """The Morgan fingerprint bits, then the DESCRIPTORS, as float32."""
    _, crippen, descriptors, lipinski, fingerprints, mol_descriptors = rdkit()
    fingerprint = fingerprints.GetMorganGenerator(radius=2, fpSize=bits).GetFingerprintAsNumPy(mol)
    heavy = mol.GetNumHeavyAtoms()
    aromatic = sum(atom.GetIsAromatic() for atom in mol.GetAtoms())
    values = [
        crippen.MolLogP(mol),
        descriptors.MolWt(mol),
        lipinski.NumRotatableBonds(mol),
        aromatic / heavy if heavy else 0.0,
        mol_descriptors.CalcTPSA(mol),
        lipinski.NumHDonors(mol),
        lipinski.NumHAcceptors(mol),
    ]
    return np.concatenate([fingerprint.astype(np.float32), np.array(values, dtype=np.float32)])


def read_split(path: Path, bits: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """x, y and the IDs of the skipped records of one SD file."""
    chem = rdkit()[0]
    xs, ys, skipped = [], [], []
    for number, (block, fields) in enumerate(records(path), start=1):
        name = fields.get("ID") or f"record {number}"
        mol = chem.MolFromMolBlock(block)
        label = LABELS.get(fields.get("SOL_classification", ""))
        if mol is None or label is None or mol.GetNumHeavyAtoms() == 0:
            skipped.append(name)
            continue
        xs.append(features(mol, bits))
        ys.append(label)
    require(xs, f"{path}: no record could be used ({len(skipped)} skipped: unparseable or without a class)")
    return np.stack(xs), np.array(ys, dtype=np.int64), skipped


def prepare(source: Path, out: Path, bits: int) -> dict[str, np.ndarray]:
    require(bits > 0, f"--bits must be > 0, not {bits}")
    arrays: dict[str, np.ndarray] = {}
    for split, name in FILES.items():
        x, y, skipped = read_split(source / name, bits)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
        counts = Counter(CLASSES[i] for i in y.tolist())
        print(f"{split} ({name}): {len(y):,} molecules: " + ", ".join(f"{c} {counts[c]:,}" for c in CLASSES))
        if skipped:
            print(
                f"  skipped {len(skipped)} record(s) RDKit could not parse or without a known class: "
                + ", ".join(skipped)
            )
    arrays["classes"] = np.array(CLASSES)
    arrays["feature_names"] = np.array([f"morgan_{i}" for i in range(bits)] + DESCRIPTORS)
    out.parent.mkdir(parents=True, exist_ok=True)
    savez_atomic(out, arrays)
    print(
        f"wrote {out}: x_train {arrays['x_train'].shape}, x_test {arrays['x_test'].shape} "
        f"({bits} fingerprint bits + {len(DESCRIPTORS)} descriptors)"
    )
    return arrays


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the folder with solubility.train.sdf and solubility.test.sdf")
    parser.add_argument("out", type=Path, help="the .npz file to write (e.g. data/solubility.npz)")
    parser.add_argument("--bits", type=int, default=1024, help="Morgan fingerprint length (default 1024)")
    args = parser.parse_args(argv)
    return script_exit(lambda: prepare(args.source, args.out, args.bits), args.out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
