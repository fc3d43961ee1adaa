"""scripts/group_accuracy.py: Q3 beside Q8 (accuracy over groups of classes) and the recall of rare classes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_cfg
from omegaconf import OmegaConf

SCRIPT = Path(__file__).parents[1] / "scripts" / "group_accuracy.py"
spec = importlib.util.spec_from_file_location("group_accuracy", SCRIPT)
group_accuracy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(group_accuracy)

CLASSES = ["H", "G", "E", "C"]  # helix H/G, strand E, coil C
GROUPS = ["H", "H", "E", "C"]


def counts(table: list[list[int]]) -> pd.DataFrame:
    return pd.DataFrame(table, index=CLASSES, columns=CLASSES)


def fake_run(root: Path, loss: str, seed: int, table: list[list[int]], data: Path) -> None:
    run = root / f"loss={loss},seed={seed}"
    run.mkdir(parents=True)
    cfg = make_cfg("data=arrays", f"data.path={data}", f"loss={loss}", f"seed={seed}")
    OmegaConf.save(cfg, run / "config.yaml")
    (run / "status.json").write_text('{"status": "finished"}')
    counts(table).to_csv(run / "confusion.csv")


def data_file(path: Path, class_groups: list[str] | None = GROUPS) -> Path:
    arrays = {"classes": np.array(CLASSES)}
    if class_groups is not None:
        arrays["class_groups"] = np.array(class_groups)
    np.savez(path, **arrays)
    return path


def test_group_accuracy_counts_a_prediction_in_the_right_group_as_right():
    # 100 examples: 70 exact; of the 30 mistakes, 10 stay in their group (H<->G), 20 cross groups
    table = counts([[40, 8, 2, 0], [2, 5, 0, 3], [0, 0, 15, 10], [0, 0, 5, 10]])
    measures = group_accuracy.run_measures(table, dict(zip(CLASSES, GROUPS)), ["G"])
    assert measures["accuracy"] == pytest.approx(0.70) and measures["group_accuracy"] == pytest.approx(0.80)
    assert measures["recall_G"] == pytest.approx(0.5)


def test_rare_classes_are_those_under_5_percent_of_the_test_examples():
    table = counts([[500, 0, 0, 0], [0, 40, 0, 0], [0, 0, 300, 0], [0, 0, 0, 200]])
    assert group_accuracy.rare_classes(table) == ["G"]


def test_table_reads_the_groups_from_the_data_file_and_pairs_with_ce(tmp_path, capsys):
    data = data_file(tmp_path / "d.npz")
    for seed, near in enumerate([2, 4, 6]):  # soft_label_ce turns `near` cross-group E mistakes into exact ones
        fake_run(tmp_path / "cmp", "ce", seed, [[40, 8, 2, 0], [2, 5, 0, 3], [0, 0, 15, 10], [0, 0, 5, 10]], data)
        fake_run(
            tmp_path / "cmp",
            "soft_label_ce",
            seed,
            [[40, 8, 2, 0], [2, 5, 0, 3], [0, 0, 15 + near, 10 - near], [0, 0, 5, 10]],
            data,
        )
    assert group_accuracy.main([str(tmp_path / "cmp"), "--recall", "G,E"]) == 0
    out = capsys.readouterr().out
    assert "| loss | accuracy (Q8) | vs ce | group accuracy (Q3) | vs ce | recall G | recall E | seeds |" in out
    assert "| ce | 0.700 ± 0.000 | - | 0.800 ± 0.000 | - | 0.500 ± 0.000 | 0.600 ± 0.000 | 3 |" in out
    # +2, +4, +6 of 100: mean 0.04, SD 0.02, t(2) 4.303 -> half-width 0.050
    assert "| soft_label_ce | 0.740 ± 0.050 | +0.040 ± 0.050 (p = 0.074) | 0.840 ± 0.050 | +0.040 ± 0.050" in out


def test_groups_given_on_the_command_line_replace_the_files(tmp_path, capsys):
    fake_run(
        tmp_path,
        "ce",
        0,
        [[40, 8, 2, 0], [2, 5, 0, 3], [0, 0, 15, 10], [0, 0, 5, 10]],
        data_file(tmp_path / "d.npz", class_groups=None),
    )
    assert group_accuracy.main([str(tmp_path), "--groups", "helix=H,G", "other=E,C"]) == 0
    # H with G and E with C: 95 of 100 in the right group; no class under 5% of the examples, so no recall column
    assert "| ce | 0.700 | - | 0.950 | - | 1 |" in capsys.readouterr().out


def test_with_groups_given_a_run_of_other_data_than_arrays_counts_and_a_damaged_one_is_left_out(tmp_path, capsys):
    table = [[40, 8, 2, 0], [2, 5, 0, 3], [0, 0, 15, 10], [0, 0, 5, 10]]
    fake_run(tmp_path, "ce", 0, table, data_file(tmp_path / "d.npz"))
    other = tmp_path / "loss=ce,seed=1"
    other.mkdir()
    OmegaConf.save(make_cfg("loss=ce", "seed=1"), other / "config.yaml")  # data=quick: no data.path
    (other / "status.json").write_text('{"status": "finished"}')
    counts(table).to_csv(other / "confusion.csv")
    damaged = tmp_path / "loss=ce,seed=2"
    damaged.mkdir()
    (damaged / "config.yaml").write_text("loss: [unclosed")
    (damaged / "status.json").write_text('{"status": "finished"}')
    counts(table).to_csv(damaged / "confusion.csv")
    assert group_accuracy.main([str(tmp_path), "--groups", "helix=H,G", "other=E,C"]) == 0
    captured = capsys.readouterr()
    assert "| ce | 0.700 ± 0.000 | - | 0.950 ± 0.000 | - | 2 |" in captured.out
    left_out = [line for line in captured.err.splitlines() if "run left out" in line]
    assert len(left_out) == 1 and "loss=ce,seed=2" in left_out[0] and "config.yaml" in left_out[0]


def test_runs_left_out_before_an_error_are_still_named(tmp_path, capsys):
    table = [[40, 8, 2, 0], [2, 5, 0, 3], [0, 0, 15, 10], [0, 0, 5, 10]]
    damaged = tmp_path / "loss=ce,seed=0"  # found first: left out with a warning
    damaged.mkdir()
    (damaged / "config.yaml").write_text("loss: [unclosed")
    (damaged / "status.json").write_text('{"status": "finished"}')
    counts(table).to_csv(damaged / "confusion.csv")
    fake_run(tmp_path, "ce", 1, table, data_file(tmp_path / "d.npz", class_groups=None))  # then the error
    assert group_accuracy.main([str(tmp_path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "loss=ce,seed=0" in lines[0] and "run left out" in lines[0]
    assert lines[1].startswith("error: ") and "no class_groups" in lines[1]


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no class_groups (and classes) array; name the groups with --groups"),
        (["--groups", "helix=H,G", "strand=E"], "the grouping leaves out class(es) ['C']"),
        (["--groups", "helix"], "--groups: 'helix' is not GROUP=CLASS,CLASS,..."),
        (["--groups", "a=H,G", "b=G,E,C"], "--groups: class 'G' is in two groups"),
        (["--groups", "a=H,G", "b=E,C", "--recall", "Q"], "--recall: ['Q'] not among the classes"),
    ],
)
def test_bad_groupings_are_one_error_line(tmp_path, capsys, args, message):
    fake_run(
        tmp_path,
        "ce",
        0,
        [[40, 8, 2, 0], [2, 5, 0, 3], [0, 0, 15, 10], [0, 0, 5, 10]],
        data_file(tmp_path / "d.npz", class_groups=None),
    )
    assert group_accuracy.main([str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_a_damaged_data_file_is_one_error_line(tmp_path, capsys):
    data = data_file(tmp_path / "d.npz")
    data.write_bytes(data.read_bytes()[:40])  # a copy cut short
    fake_run(tmp_path / "cmp", "ce", 0, [[40, 8, 2, 0], [2, 5, 0, 3], [0, 0, 15, 10], [0, 0, 5, 10]], data)
    assert group_accuracy.main([str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {data}: not a readable .npz file") and err.count("\n") == 1


def test_no_runs_is_one_error_line(tmp_path, capsys):
    assert group_accuracy.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: no run under")


SCORES = np.array([[2, 1, 0, 0], [1, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 2]], dtype=float)  # 1 within the helix group
# A helix residue whose single likeliest state is E, though H or G (same group) together are likelier: argmax
# answers E (wrong in Q8 and Q3), the Bayes rule H (2 * 0.31 + 0.29 = 0.91 against E's 0.80). A strand residue
# that every rule gets right.
PROBS, LABELS = np.array([[0.31, 0.29, 0.40, 0.0], [0.0, 0.0, 1.0, 0.0]]), np.array([0, 2])
ARGMAX_TABLE = [[0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


def with_predictions(run: Path, temperature: float = float("nan")) -> None:
    np.savez(
        run / "predictions.npz",
        test_probs=PROBS.astype(np.float16),
        test_labels=LABELS,
        temperature=np.float32(temperature),
        classes=np.array(CLASSES),
        scores=SCORES,
    )


@pytest.mark.parametrize(
    "rule, source, q8_q3",
    [
        ("argmax", "argmax (each run's confusion.csv)", "0.500 | - | 0.500"),
        ("bayes", "Bayes (each run's predictions.npz)", "1.000 | - | 1.000"),
        ("bayes_cal", "calibrated Bayes (each run's predictions.npz)", "1.000 | - | 1.000"),  # at temperature 1
    ],
)
def test_a_rule_counts_the_answers_it_gives(tmp_path, capsys, rule, source, q8_q3):
    fake_run(tmp_path, "ce", 0, ARGMAX_TABLE, data_file(tmp_path / "d.npz"))
    with_predictions(tmp_path / "loss=ce,seed=0", temperature=1.0)
    assert group_accuracy.main([str(tmp_path), "--recall", "H", "--rule", rule]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Test answers decided by {source}.")
    assert f"| ce | {q8_q3} | " in out


def test_under_a_bayes_rule_a_run_without_usable_predictions_is_left_out_and_named(tmp_path, capsys):
    data = data_file(tmp_path / "d.npz")
    for seed in range(4):
        fake_run(tmp_path, "ce", seed, ARGMAX_TABLE, data)
    with_predictions(tmp_path / "loss=ce,seed=0", temperature=1.0)
    with_predictions(tmp_path / "loss=ce,seed=1")  # no validation split: no temperature
    (tmp_path / "loss=ce,seed=2" / "predictions.npz").write_bytes(b"PK\x03\x04 cut short")
    # seed 3 has none, as a run of an older lossbench
    assert group_accuracy.main([str(tmp_path), "--recall", "H", "--rule", "bayes_cal"]) == 0
    captured = capsys.readouterr()
    assert "| ce | 1.000 | - | 1.000 | - | 1.000 | 1 |" in captured.out
    left_out = captured.err.splitlines()
    assert len(left_out) == 3 and all(line.endswith("run left out") for line in left_out)
    assert "seed=1: no temperature for calibrated Bayes" in left_out[0]
    assert "seed=2/predictions.npz: unreadable" in left_out[1]
    assert "seed=3: no predictions.npz (made by an older lossbench)" in left_out[2]
