"""plots.py: one stable colour per loss, atomic saving, the Pareto front, and figures drawn from hand-made tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib import pyplot as plt
from matplotlib.colors import to_rgba
from PIL import Image

from lossbench import plots
from lossbench.losses import LOSSES


def picture(path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = np.asarray(Image.open(path).convert("L"))
    assert min(image.shape) > 200 and image.std() > 5  # not an empty canvas
    return image


def test_every_registered_loss_has_its_own_fixed_colour():
    names = [*LOSSES, "label_smoothing"]
    colours = [to_rgba(plots.loss_colour(n)) for n in names]
    assert len(set(colours)) == len(set(names))
    assert plots.loss_colour("ce") == "tab:blue" and plots.loss_colour("label_smoothing") == "tab:pink"
    assert plots.loss_colour("my_own_loss") == plots.loss_colour("my_own_loss")  # stable for unknown names too
    # a loss lossbench ships has a fixed colour, a user's own a spare one: never one a shipped loss wears
    assert set(LOSSES) <= set(plots.COLOURS) and plots.loss_colour("my_own_loss") in plots.SPARE


def test_save_figure_is_atomic_and_closes_the_figure(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    plots.save_figure(fig, tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob("*.tmp")) and not plt.fignum_exists(fig.number)


@pytest.mark.parametrize(
    "x, y, lower_x_better, front",
    [
        ([1.0, 2.0, 0.5, 3.0], [0.5, 0.9, 0.4, 0.8], True, [2, 0, 1]),  # 3 is beaten by 1 on both axes
        ([1.0, 2.0, 0.5, 3.0], [0.5, 0.9, 0.4, 0.8], False, [1, 3]),  # higher x better: 1 and 3 trade off
        ([1.0, np.nan, 1.0], [0.5, 0.9, 0.5], True, [0, 2]),  # ties both stay, NaN is ignored
    ],
)
def test_pareto_front(x, y, lower_x_better, front):
    assert plots.pareto_front(x, y, lower_x_better) == front


def setting_table(n: int) -> pd.DataFrame:
    rows = []
    for i, loss in enumerate(["ce", "expected_score", "label_smoothing"]):
        row = {"loss": loss, "label": loss, "runs": n}
        for measure, value in (
            ("final_test_acc", 0.8 - 0.1 * i),
            ("final_test_mistake_severity", 1 + 0.2 * i),
            ("final_test_score", 1.5 - 0.2 * i),
            ("epochs_to_target_score", 3 + i),
        ):
            row.update({f"{measure}_mean": value, f"{measure}_ci95": 0.05 if n > 1 else np.nan, f"{measure}_n": n})
        rows.append(row)
    rows[2]["epochs_to_target_score_mean"], rows[2]["epochs_to_target_score_n"] = np.nan, 0
    return pd.DataFrame(rows)


@pytest.mark.parametrize("n", [1, 3])
def test_pareto_and_target_figures(tmp_path, n):
    table = setting_table(n)
    panels = [("final_test_mistake_severity", "mistake severity", True), ("final_test_score", "test_score", False)]
    plots.save_figure(plots.pareto_figure(table, panels), tmp_path / "pareto.png")
    plots.save_figure(plots.target_figure(table, [("epochs_to_target_score", "to score")]), tmp_path / "t.png")
    picture(tmp_path / "pareto.png")
    picture(tmp_path / "t.png")


def test_sweep_figure_with_and_without_error_bars(tmp_path):
    table = pd.concat([setting_table(3).assign(**{"optim.lr": lr}) for lr in (0.01, 0.1)], ignore_index=True)
    plots.save_figure(plots.sweep_figure(table, "optim.lr", "final_test_score", "final test_score"), tmp_path / "s.png")
    picture(tmp_path / "s.png")


@pytest.mark.parametrize("classes", [3, 20])
def test_confusion_figure_row_normalised(tmp_path, classes):
    names = [f"c{i}" for i in range(classes)]
    counts = pd.DataFrame(np.eye(classes) * 30 + 1, index=names, columns=names)
    counts.iloc[0] = 0  # a class with no test examples must not divide by zero
    plots.save_figure(
        plots.confusion_figure([("ce", "ce", counts), ("es", "expected_score", counts)]), tmp_path / "c.png"
    )
    picture(tmp_path / "c.png")


def test_a_confusion_figure_of_many_classes_stays_a_picture_a_viewer_opens(tmp_path):
    """100 classes, 7 losses (results/synthetic100): the figure grew with the classes until Pillow took it for a
    decompression bomb (129 megapixels) and the report embedding it passed 3 MB."""
    names = [f"class{i:03d}" for i in range(100)]
    counts = pd.DataFrame(
        np.eye(100) * 30 + np.random.default_rng(0).integers(0, 3, (100, 100)), index=names, columns=names
    )
    plots.save_figure(plots.confusion_figure([(f"loss{i}", "ce", counts) for i in range(7)]), tmp_path / "c.png")
    with Image.open(tmp_path / "c.png") as image:
        assert image.width * image.height < Image.MAX_IMAGE_PIXELS / 4
    picture(tmp_path / "c.png")


def test_tuning_figure_marks_the_choice_and_the_failed_trials(tmp_path):
    trials = pd.DataFrame(
        [
            {"loss": "ce", "lr": 0.01, "param": None, "value": np.nan, "log": False, "val_score": 1.2, "chosen": False},
            {"loss": "ce", "lr": 0.1, "param": None, "value": np.nan, "log": False, "val_score": 1.5, "chosen": True},
            {
                "loss": "ce",
                "lr": 1.0,
                "param": None,
                "value": np.nan,
                "log": False,
                "val_score": np.nan,
                "chosen": False,
            },
            {
                "loss": "soft_label_ce",
                "lr": 0.05,
                "param": "loss.tau",
                "value": 0.1,
                "log": True,
                "val_score": 1.4,
                "chosen": True,
            },
            {
                "loss": "soft_label_ce",
                "lr": 0.2,
                "param": "loss.tau",
                "value": 0.5,
                "log": True,
                "val_score": 1.1,
                "chosen": False,
            },
        ]
    )
    fig = plots.tuning_figure(trials, "val_score")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [
        "ce (2 of 3 trials finished)",
        "soft_label_ce (2 of 2 trials finished)",
    ]
    assert any(ax.get_ylabel() == "tau" for ax in fig.axes)  # the colour bar names the loss's parameter
    plots.save_figure(fig, tmp_path / "tuning.png")
    picture(tmp_path / "tuning.png")


@pytest.mark.parametrize(
    "lrs, labels",
    [
        ([0.0018, 0.003, 0.0055], ["0.002", "0.005"]),  # within a decade: its 1-2-5 steps
        ([0.0021, 0.0032, 0.0054], ["0.0021", "0.0054"]),  # one step only: the data's two ends instead
        ([0.0031, 0.0032, 0.0034], ["0.0031", "0.0034"]),
        ([0.04, 0.08, 0.16], ["0.05", "0.1"]),  # one power of ten inside: the steps across both decades
        ([0.08, 0.16, 0.32], ["0.1", "0.2"]),
        ([0.001, 0.003, 0.2], ["$\\mathdefault{10^{-3}}$", "$\\mathdefault{10^{-2}}$", "$\\mathdefault{10^{-1}}$"]),
    ],
)
def test_a_learning_rate_axis_is_labelled_however_narrow_the_trials_lie(lrs, labels):
    trials = pd.DataFrame(
        {"loss": "ce", "lr": lrs, "param": None, "value": np.nan, "log": False, "val_score": [1.0, 1.1, 1.2]}
    ).assign(chosen=[False, False, True])
    fig = plots.tuning_figure(trials, "val_score")
    fig.canvas.draw()
    ax = next(ax for ax in fig.axes if ax.get_title())
    low, high = ax.get_xlim()
    shown = [t.get_text() for t in ax.get_xticklabels() if t.get_text() and low <= t.get_position()[0] <= high]
    plt.close(fig)
    assert shown == labels
