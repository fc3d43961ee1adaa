"""Score tables: built-ins, CSV parsing (named and bare), reordering by name, validation errors, warnings."""

from __future__ import annotations

import os
import re
import warnings

import pytest
import torch

from lossbench.data.classes import CIFAR10_CLASSES, CIFAR100_CLASSES
from lossbench.errors import EnvironmentFailure, LossbenchError
from lossbench.scores import diagonal_warnings, load_scores, normalise_scores


def write(tmp_path, text: str, name: str = "scores.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_cifar10_groups():
    s = load_scores("cifar10_groups", CIFAR10_CLASSES).matrix
    cat, dog, truck = (CIFAR10_CLASSES.index(c) for c in ("cat", "dog", "truck"))
    assert s[cat, cat] == 2 and s[cat, dog] == 1 and s[cat, truck] == -1
    assert torch.equal(s, s.T)


def test_cifar100_superclass_has_20_groups_of_5():
    s = load_scores("cifar100_superclass", CIFAR100_CLASSES).matrix
    assert s.shape == (100, 100)
    assert ((s == 1).sum(1) == 4).all() and (s.diagonal() == 2).all()


def test_builtin_restricted_and_reordered_to_dataset_classes():
    s = load_scores("cifar10_groups", ["truck", "cat", "airplane"]).matrix
    assert s.tolist() == [[2, -1, 1], [-1, 2, -1], [1, -1, 2]]


def test_identity_uses_exact_and_far():
    s = load_scores("identity", ["a", "b"], exact=1.0, far=0.0).matrix
    assert s.tolist() == [[1, 0], [0, 1]]


def test_named_csv_is_reordered_to_the_dataset_order(tmp_path):
    # Rows and columns in different orders: values follow the names, not the positions.
    path = write(tmp_path, "true\\pred,b,a,c\nc,0,1,5\na,1,3,0\nb,4,1,0\n")
    s = load_scores("file", ["a", "b", "c"], path).matrix
    assert s.tolist() == [[3, 1, 0], [1, 4, 0], [1, 0, 5]]


def test_bare_numeric_csv_uses_dataset_order(tmp_path):
    path = write(tmp_path, "2,1\n0,2\n")
    assert load_scores("file", ["x", "y"], path).matrix.tolist() == [[2, 1], [0, 2]]


def test_off_diagonal_maximum_is_warned_with_row_and_column(tmp_path):
    path = write(tmp_path, ",a,b,c\na,2,0,0\nb,0,1,3\nc,0,0,2\n")
    with pytest.warns(UserWarning, match="true class 'b': the row maximum is on 'c'"):
        load_scores("file", ["a", "b", "c"], path)


def test_flat_row_is_named():
    s = load_scores("identity", ["a", "b"], warn=False)
    s.matrix[1] = 1.0
    assert diagonal_warnings(s) == ["true class 'b': all scores equal, so this row carries no training signal"]


def test_no_warning_for_a_good_table():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_scores("cifar10_groups", CIFAR10_CLASSES)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("1,2\n3\n", "row 2 has 1 values, expected 2"),
        ("1,x\n0,1\n", "row 1, column 2: 'x' is not a number"),
        ("1,nan\n0,1\n", "nan is not finite"),
        ("1,inf\n0,1\n", "inf is not finite"),
        ("1,2,3\n4,5,6\n", "has 3 values, expected 2"),
        (",a,a\na,1,0\nb,0,1\n", "duplicate column name 'a'"),
        (",a,b\na,1,0\na,0,1\n", "duplicate row name 'a'"),
        (",a,b\na,1,0\nc,0,1\n", "row names and column names differ"),
        (",a,b,c\na,1,0,0\nb,0,1,0\n", "not square"),
        (",a\n", "header row but no data rows"),
    ],
)
def test_malformed_csv_errors_name_the_culprit(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(LossbenchError, match=message) as err:
        load_scores("file", ["a", "b"], path)
    assert path in str(err.value)


def test_names_not_matching_the_dataset(tmp_path):
    path = write(tmp_path, ",a,b\na,1,0\nb,0,1\n")
    with pytest.raises(LossbenchError, match=r"no scores for dataset class\(es\) \['cat'\]"):
        load_scores("file", ["a", "cat"], path)


def test_wrong_size_for_the_dataset(tmp_path):
    path = write(tmp_path, "1,0\n0,1\n")
    with pytest.raises(LossbenchError, match="2x2 matrix but the dataset has 3 classes"):
        load_scores("file", ["a", "b", "c"], path)


def test_missing_file_and_missing_path(tmp_path):
    with pytest.raises(LossbenchError, match="nope.csv: not found"):
        load_scores("file", ["a", "b"], str(tmp_path / "nope.csv"))
    with pytest.raises(LossbenchError, match="scores.path"):
        load_scores("file", ["a", "b"], None)


def test_normalise_scores_shifts_rows_and_divides_by_one_global_span():
    s = torch.tensor([[2.0, 1.0, -1.0], [3.0, 3.0, 3.0], [0.0, 1.0, 0.5]])
    # row minima -1, 3, 0; row spans 3, 0, 1; global span 3
    expected = torch.tensor([[1.0, 2 / 3, 0.0], [0.0, 0.0, 0.0], [0.0, 1 / 3, 1 / 6]])
    torch.testing.assert_close(normalise_scores(s), expected)
    torch.testing.assert_close(normalise_scores(5 * s - 2), expected)
    assert torch.equal(normalise_scores(torch.full((3, 3), 4.0)), torch.zeros(3, 3))


def test_expected_score_decision_is_unchanged_by_normalising():
    """argmax_k sum_i q_i S[i,k] over a belief q: a per-row constant adds sum_i q_i c_i to every k, and the
    global span divides every k by the same number, so Ŝ keeps the user's decision (per-row scaling would not)."""
    generator = torch.Generator().manual_seed(0)
    s = torch.randn(6, 6, generator=generator) + 2 * torch.eye(6)
    s = s * torch.linspace(0.5, 4, 6)[:, None]  # rows of different spans
    shifted = s + 10 * torch.randn(6, 1, generator=generator)
    beliefs = torch.rand(500, 6, generator=generator).softmax(dim=1)
    decision = (beliefs @ s).argmax(dim=1)
    assert torch.equal((beliefs @ normalise_scores(s)).argmax(dim=1), decision)
    assert torch.equal((beliefs @ normalise_scores(shifted)).argmax(dim=1), decision)
    per_row = (s - s.min(1, keepdim=True).values) / (s.max(1, keepdim=True).values - s.min(1, keepdim=True).values)
    assert not torch.equal((beliefs @ per_row).argmax(dim=1), decision)  # the old per-row Ŝ changed it


@pytest.mark.parametrize(
    "cell, fragment",
    [
        ("1_0", "'1_0' is not a number"),
        ("0x10", "'0x10' is not a number"),
        ("nan", "nan is not finite"),
        ("-inf", "-inf is not finite"),
        ("1e39", "does not fit float32"),
        ("", "'' is not a number"),
    ],
)
def test_score_cells_must_be_plain_float32_numbers(tmp_path, cell, fragment):
    path = write(tmp_path, f",a,b\na,2,{cell}\nb,0,2\n")
    with pytest.raises(LossbenchError, match=rf"{path}, row 'a', column 'b': .*{re.escape(fragment)}"):
        load_scores("file", ["a", "b"], path)
    if cell == "":
        return  # an empty first cell is a named table's corner
    bare = write(tmp_path, f"{cell},0\n0,2\n", "bare.csv")
    with pytest.raises(LossbenchError, match=rf"{bare}, row 1, column 1: .*{re.escape(fragment)}"):
        load_scores("file", ["a", "b"], bare)


@pytest.mark.parametrize("key", ["exact", "near", "far"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e39])
def test_score_parameters_must_be_finite_float32(key, value):
    with pytest.raises(LossbenchError, match=f"scores.{key}: "):
        load_scores("cifar10_groups", CIFAR10_CLASSES, **{key: value})


def test_score_parameters_whose_difference_overflows(tmp_path):
    with pytest.raises(LossbenchError, match="overflow float32"):
        load_scores("identity", ["a", "b"], exact=3e38, far=-3e38)


def test_non_utf8_and_unreadable_score_files(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes(",caf\xe9,b\ncaf\xe9,2,0\nb,0,2\n".encode("latin-1"))
    with pytest.raises(LossbenchError, match=rf"{latin}: not UTF-8 text"):
        load_scores("file", ["a", "b"], str(latin))
    locked = write(tmp_path, "2,0\n0,2\n", "locked.csv")
    os.chmod(locked, 0)
    if os.access(locked, os.R_OK):
        pytest.skip("running as root: permissions do not apply")
    with pytest.raises(EnvironmentFailure, match=rf"{locked}: cannot be read \(Permission denied\)"):
        load_scores("file", ["a", "b"], locked)
