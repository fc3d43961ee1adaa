"""Protein secondary structure (8 DSSP states) from sequence alone, as a lossbench `data=arrays` file.

Usage: python scripts/prepare_ss8.py ../shared/data/ss8 data/ss8.npz [--window 7]

Reads CB513_HHblits.csv (training, and the validation split lossbench carves from it) and TS115_HHblits.csv
(test): one row per chain with the space-separated columns `input` (amino acids), `dssp8` (states) and `disorder`
(1.0 resolved, 0.0 not). Every resolved residue becomes one example: the residues `window` positions to either
side of it and itself, one-hot over 22 channels (the 20 standard amino acids in AMINO_ACIDS order, `unknown`
for any other letter such as X, Z or U, `beyond the chain end` for positions past either end), shaped
[N, 22, 2 * window + 1] so that model=mlp (which flattens) and model=cnn1d (which convolves along the positions)
both take it; stored as uint8 (lossbench reads it as float32). Unresolved residues are never examples, but they
stay in the sequence as their neighbours' context: their amino acid is known, only their structure is not.

The file holds x_train, y_train, x_test, y_test, `classes` (H G I E B T S C: DSSP's helices, strands, then
turn/bend/coil), `class_groups` (the 3-state group of each class: H, H, H, E, E, C, C, C, the usual DSSP 8-to-3
reduction, used for Q3 accuracy) and `groups_train` (the family of each training residue's chain), for
lossbench's validation split keeps each group whole. Two leaks make the group a family, not a chain: the windows
of neighbouring residues overlap in all but one position, and CB513 holds the same stretches of sequence in
several chains (a chain-level split left 30% of the validation windows identical to a training window, against
0.2% of TS115's). Chains that share an identical stretch of FAMILY_STRETCH residues are one family: CB513's 511
chains form 427 families (the same 424-428 for stretches of 8 to 20 residues).
Counts per split and class are printed, to check against the data's README.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from lossbench.atomic import savez_atomic
from lossbench.errors import LossbenchError, require, script_exit

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
UNKNOWN, BEYOND = len(AMINO_ACIDS), len(AMINO_ACIDS) + 1  # channels 20 and 21
CHANNELS = len(AMINO_ACIDS) + 2
STATES = ["H", "G", "I", "E", "B", "T", "S", "C"]
STATE_GROUPS = ["H", "H", "H", "E", "E", "C", "C", "C"]  # DSSP 8 -> 3: helix H/G/I, strand E/B, coil T/S/C
FILES = {"train": "CB513_HHblits.csv", "test": "TS115_HHblits.csv"}
FAMILY_STRETCH = 12  # residues: chains sharing an identical stretch this long are one family (one group)
COLUMNS = ("input", "dssp8", "disorder")


def read_chains(path: Path) -> list[tuple[list[str], list[str], np.ndarray]]:
    """(residues, states, resolved mask) per chain of one CSV file, checked: one line naming the file and the
    chain for a missing column, sequences of different lengths, an unknown state or a disorder value not 0/1."""
    require(path.is_file(), f"{path}: file not found")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle, skipinitialspace=True))
    require(rows, f"{path}: no chains")
    missing = [c for c in COLUMNS if c not in rows[0]]
    require(not missing, f"{path}: missing column(s) {missing} (has {sorted(rows[0])})")
    chains = []
    for number, row in enumerate(rows, start=1):
        residues, states, disorder = ((row[c] or "").split() for c in COLUMNS)
        where = f"{path}: chain {number}"
        require(
            len(residues) == len(states) == len(disorder),
            f"{where}: input, dssp8 and disorder have different lengths "
            f"({len(residues)}, {len(states)}, {len(disorder)})",
        )
        unknown = sorted(set(states) - set(STATES))
        if unknown:
            raise LossbenchError(f"{where}: unknown state {unknown[0]!r} in dssp8 (known: {' '.join(STATES)})")
        bad = sorted(set(disorder) - {"0.0", "1.0", "0", "1"})
        if bad:
            raise LossbenchError(f"{where}: disorder must be 1.0 (resolved) or 0.0 (not), not {bad[0]!r}")
        chains.append((residues, states, np.array([float(d) == 1.0 for d in disorder])))
    return chains


def windows(residues: list[str], window: int) -> np.ndarray:
    """uint8 [L, CHANNELS, 2 * window + 1]: the one-hot window around every residue of one chain."""
    codes = np.array([AMINO_ACIDS.find(r) if r in AMINO_ACIDS else UNKNOWN for r in residues], dtype=np.int64)
    padded = np.concatenate([np.full(window, BEYOND), codes, np.full(window, BEYOND)])
    index = np.lib.stride_tricks.sliding_window_view(padded, 2 * window + 1)  # [L, positions]
    return np.eye(CHANNELS, dtype=np.uint8)[index].transpose(0, 2, 1)


def families(chains: list[tuple[list[str], list[str], np.ndarray]]) -> np.ndarray:
    """The family number of each chain: chains linked by a shared identical stretch of FAMILY_STRETCH residues,
    directly or through other chains, are one family (union-find over the stretches)."""
    parent = list(range(len(chains)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_seen: dict[str, int] = {}
    for number, (residues, _, _) in enumerate(chains):
        sequence = "".join(residues)
        for start in range(len(sequence) - FAMILY_STRETCH + 1):
            stretch = sequence[start : start + FAMILY_STRETCH]
            other = first_seen.setdefault(stretch, number)
            parent[root(number)] = root(other)
    return np.unique([root(i) for i in range(len(chains))], return_inverse=True)[1].reshape(-1)


def examples(
    chains: list[tuple[list[str], list[str], np.ndarray]], window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y and the family number of each resolved residue's chain."""
    xs, ys, groups = [], [], []
    for family, (residues, states, resolved) in zip(families(chains), chains):
        xs.append(windows(residues, window)[resolved])
        ys.append(np.array([STATES.index(s) for s in states], dtype=np.int64)[resolved])
        groups.append(np.full(int(resolved.sum()), family, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(groups)


def prepare(source: Path, out: Path, window: int) -> dict[str, np.ndarray]:
    require(window >= 0, f"--window must be >= 0, not {window}")
    arrays: dict[str, np.ndarray] = {}
    for split, name in FILES.items():
        chains = read_chains(source / name)
        x, y, groups = examples(chains, window)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
        counts = Counter(STATES[i] for i in y.tolist())
        print(
            f"{split} ({name}): {len(chains)} chains, {sum(len(c[0]) for c in chains):,} residues, "
            f"{len(y):,} resolved: " + ", ".join(f"{s} {counts[s]:,}" for s in STATES)
        )
        if split == "train":
            arrays["groups_train"] = groups
            print(
                f"  {len(np.unique(groups))} families (chains sharing an identical stretch of {FAMILY_STRETCH} "
                "residues): the validation split keeps each whole"
            )
    arrays["classes"] = np.array(STATES)
    arrays["class_groups"] = np.array(STATE_GROUPS)
    out.parent.mkdir(parents=True, exist_ok=True)
    savez_atomic(out, arrays)
    print(
        f"wrote {out}: x_train {arrays['x_train'].shape}, x_test {arrays['x_test'].shape} "
        f"([N, {CHANNELS} channels, {2 * window + 1} positions])"
    )
    return arrays


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the folder with CB513_HHblits.csv and TS115_HHblits.csv")
    parser.add_argument("out", type=Path, help="the .npz file to write (e.g. data/ss8.npz)")
    parser.add_argument("--window", type=int, default=7, help="residues on either side of the centre (default 7)")
    args = parser.parse_args(argv)
    return script_exit(lambda: prepare(args.source, args.out, args.window), args.out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
