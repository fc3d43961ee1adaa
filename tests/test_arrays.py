"""Feature vectors (data=arrays, model=mlp): validation of the .npz file, and compare, report, explain and resume
end to end, with every loss."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import NPZ_DAMAGES, lossbench, make_cfg

from lossbench.data.loading import load_dataset
from lossbench.data.sources import dataset_classes
from lossbench.errors import LossbenchError

CLASSES = ["alkane", "alkene", "ketone", "ester"]
VECTOR_ARGS = [
    "data=arrays",
    "model=mlp",
    "model.hidden=[32]",
    "train.epochs=2",
    "train.batch_size=32",
    "train.progress=false",
    "scores=file",
]


def make_npz(path, n_train=240, n_test=80, features=(12,), names=True, **replace):
    """Four classes of Gaussian blobs; the two 'alk' classes overlap (a near miss)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, *features)) * 2
    centres[1] = centres[0] + 0.5

    def split(n):
        y = np.arange(n) % 4
        return (centres[y] + rng.normal(size=(n, *features))).astype(np.float32), y

    (x_train, y_train), (x_test, y_test) = split(n_train), split(n_test)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    if names:
        arrays["classes"] = np.array(CLASSES)
    arrays.update(replace)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def score_csv(path):
    path.write_text(
        "true\\pred," + ",".join(CLASSES) + "\nalkane,2,1,-1,-1\nalkene,1,2,-1,-1\nketone,-1,-1,2,0\nester,-1,-1,0,2\n"
    )
    return path


def test_arrays_load_with_names_features_and_a_validation_split(tmp_path):
    cfg = make_cfg("data=arrays", f"data.path={make_npz(tmp_path / 'd.npz', features=(3, 4))}").data
    classes = dataset_classes(cfg)
    assert classes == CLASSES
    data = load_dataset(cfg, classes, torch.eye(4))
    assert data.train_x.dtype == torch.float32 and data.train_x.shape[1:] == (3, 4) and not data.is_image
    assert len(data.val_y) == 24 and len(data.train_y) == 216 and len(data.test_y) == 80
    assert torch.bincount(data.val_y).tolist() == [6] * 4  # stratified


def test_arrays_without_names_get_numbered_classes(tmp_path):
    cfg = make_cfg("data=arrays", f"data.path={make_npz(tmp_path / 'd.npz', names=False)}").data
    assert dataset_classes(cfg) == ["class_0", "class_1", "class_2", "class_3"]


@pytest.mark.parametrize(
    "replace, message",
    [
        ({"y_test": None}, r"missing array\(s\) \['y_test'\]"),
        ({"y_train": np.arange(10)}, "y_train must be \\[N\\] with N = len\\(x_train\\) = 240"),
        ({"y_train": np.full(240, 7)}, r"label 7 is outside 0..3"),
        ({"y_train": np.full(240, -1)}, r"label -1 is outside"),
        ({"y_train": np.zeros(240, dtype=np.float32)}, "y_train must hold integer labels"),
        ({"x_test": np.zeros((80, 5), dtype=np.float32)}, "feature shape \\(12,\\) differs from x_test's \\(5,\\)"),
        ({"x_train": np.full((240, 12), np.nan, dtype=np.float32)}, "x_train has NaN or infinite values"),
        ({"classes": np.array(["a", "a", "b", "c"])}, "classes must be distinct"),
        ({"x_train": np.zeros(240, dtype=np.float32)}, r"x_train must be \[N, ...\]"),
    ],
)
def test_bad_arrays_are_one_clear_error(tmp_path, replace, message):
    cfg = make_cfg("data=arrays", f"data.path={make_npz(tmp_path / 'd.npz', **replace)}").data
    with pytest.raises(LossbenchError, match=message):
        load_dataset(cfg, dataset_classes(cfg), torch.eye(4))


def test_classes_absent_from_the_test_split_are_one_clear_error(tmp_path):
    only_esters = make_npz(tmp_path / "d.npz", y_test=np.full(80, 3))
    cfg = make_cfg("data=arrays", f"data.path={only_esters}", "data.classes=[alkane,alkene]").data
    with pytest.raises(LossbenchError, match=r"the test split has no examples of the classes \['alkane', 'alkene'\]"):
        load_dataset(cfg, dataset_classes(cfg), torch.eye(2))


@pytest.mark.parametrize("damage", NPZ_DAMAGES.values(), ids=NPZ_DAMAGES)
def test_not_an_npz_file(tmp_path, damage):
    make_npz(tmp_path / "d.npz")
    (tmp_path / "d.npz").write_bytes(damage((tmp_path / "d.npz").read_bytes()))
    result = lossbench(
        "run",
        *VECTOR_ARGS,
        f"data.path={tmp_path / 'd.npz'}",
        f"scores.path={score_csv(tmp_path / 's.csv')}",
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "not a readable .npz file" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_compare_report_explain_and_resume_on_feature_vectors(tmp_path):
    npz, scores = make_npz(tmp_path / "d.npz"), score_csv(tmp_path / "s.csv")
    args = [*VECTOR_ARGS, f"data.path={npz}", f"scores.path={scores}", "seeds=[0]"]
    result = lossbench("compare", *args, "--out", "cmp", cwd=tmp_path)  # every loss
    assert result.returncode == 0, result.stderr
    summary = pd.read_csv(tmp_path / "cmp" / "summary.csv")
    assert set(summary["loss"]) == set(make_cfg().losses)
    curves = pd.read_csv(tmp_path / "cmp" / "curves.csv")
    assert curves["test_acc"].notna().all() and (curves.groupby("loss")["test_acc"].max() > 0.25).any()
    confusion = pd.read_csv(tmp_path / "cmp" / "loss=ce,seed=0" / "confusion.csv", index_col=0)
    assert list(confusion.columns) == CLASSES
    assert lossbench("report", "cmp", cwd=tmp_path).returncode == 0
    assert lossbench("resume", "cmp", cwd=tmp_path).returncode == 0  # nothing left to do, report rewritten
    explained = lossbench("explain", "--scores", str(scores), "--out", "ex", cwd=tmp_path)
    assert explained.returncode == 0 and "alkane" in explained.stdout
    run = json.loads((tmp_path / "cmp" / "loss=ce,seed=0" / "run.json").read_text())
    assert run["precision"] in ("fp32", "bf16") and run["torch"] == torch.__version__


def test_a_users_own_model_class(tmp_path):
    (tmp_path / "mynets.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, num_classes, input_shape):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(input_shape[0], num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x)\n"
    )
    npz, scores = make_npz(tmp_path / "d.npz"), score_csv(tmp_path / "s.csv")
    args = [
        *VECTOR_ARGS[3:],
        "data=arrays",
        f"data.path={npz}",
        f"scores.path={scores}",
        "train.epochs=1",
        "hydra.run.dir=run",
    ]
    env = {"PYTHONPATH": str(tmp_path)}
    ok = lossbench("run", *args, "model=custom", "model._target_=mynets.Net", cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "mynets.Net" in (tmp_path / "run" / "config.yaml").read_text()
    missing = lossbench("run", *args, "model=custom", "model._target_=mynets.Nope", cwd=tmp_path, env=env)
    assert missing.returncode == 2 and "model._target_=mynets.Nope: cannot import it" in missing.stderr
    assert "Traceback" not in missing.stderr


def indexed_npz(path, groups, labels=None):
    """make_npz whose training example i has every feature equal to i, so a split's rows name their examples."""
    x_train = np.repeat(np.arange(240, dtype=np.float32)[:, None], 12, axis=1)
    extra = {} if labels is None else {"y_train": labels}
    return make_npz(path, x_train=x_train, groups_train=groups, **extra)


def split_groups(data, groups) -> tuple[set, set]:
    """The groups of the validation and the training examples."""
    return ({groups[int(i)] for i in data.val_x[:, 0]}, {groups[int(i)] for i in data.train_x[:, 0]})


def test_a_grouped_validation_split_keeps_every_group_whole_and_is_stratified_as_far_as_groups_allow(tmp_path):
    # 60 groups of 4 examples, each group of one class (as a protein chain's residues share their windows)
    groups, labels = np.repeat(np.arange(60), 4), np.repeat(np.arange(60) % 4, 4)
    cfg = make_cfg(
        "data=arrays", f"data.path={indexed_npz(tmp_path / 'd.npz', groups, labels)}", "data.val_size=0.2"
    ).data
    data = load_dataset(cfg, dataset_classes(cfg), torch.eye(4))
    val, train = split_groups(data, groups)
    assert not val & train and len(val | train) == 60  # no group on both sides
    assert len(data.val_y) == 48 and torch.bincount(data.val_y, minlength=4).tolist() == [12] * 4
    assert len(data.train_groups) == len(data.train_y) == 192


def test_a_grouped_split_near_stratified_when_groups_mix_classes(tmp_path):
    # 30 groups of 8 examples with mixed classes: whole groups cannot hit the target exactly, only near it
    groups = np.repeat(np.arange(30), 8)
    cfg = make_cfg("data=arrays", f"data.path={indexed_npz(tmp_path / 'd.npz', groups)}", "data.val_size=0.25").data
    data = load_dataset(cfg, dataset_classes(cfg), torch.eye(4))
    val, train = split_groups(data, groups)
    assert not val & train and len(data.val_y) % 8 == 0 and abs(len(data.val_y) - 60) <= 8
    shares = torch.bincount(data.val_y, minlength=4) / len(data.val_y)
    assert (shares - 0.25).abs().max() < 0.1


def test_a_grouped_split_is_seeded(tmp_path):
    npz = indexed_npz(tmp_path / "d.npz", np.repeat(np.arange(40), 6))
    load = lambda seed: load_dataset(  # noqa: E731
        make_cfg("data=arrays", f"data.path={npz}", f"data.subset_seed={seed}").data, CLASSES, torch.eye(4)
    )
    first = load(0).val_x.clone()
    assert not torch.equal(first, load(1).val_x) and torch.equal(first, load(0).val_x)


def test_without_groups_the_split_is_by_example(tmp_path):
    cfg = make_cfg("data=arrays", f"data.path={make_npz(tmp_path / 'd.npz')}").data
    assert load_dataset(cfg, CLASSES, torch.eye(4)).train_groups is None


def test_groups_follow_the_class_restriction_and_the_training_subset(tmp_path):
    groups = np.array([f"chain{i // 4}" for i in range(240)])  # names work as well as numbers
    cfg = make_cfg(
        "data=arrays",
        f"data.path={indexed_npz(tmp_path / 'd.npz', groups)}",
        "data.classes=[ketone,alkane]",
        "data.train_size=100",
    ).data
    data = load_dataset(cfg, dataset_classes(cfg), torch.eye(2))
    val, train = split_groups(data, groups)
    assert not val & train and len(data.train_groups) == len(data.train_y)
    assert len(data.train_y) + len(data.val_y) == 100


@pytest.mark.parametrize(
    "groups, message",
    [
        (np.zeros(10, dtype=np.int64), r"groups_train must be \[N\] with N = len\(x_train\) = 240"),
        (np.zeros(240, dtype=np.float32), "groups_train must hold integers or names"),
        (np.zeros(240, dtype=np.int64), "the training set has 1 group; a split that keeps groups whole needs at least"),
    ],
)
def test_bad_groups_are_one_clear_error(tmp_path, groups, message):
    cfg = make_cfg("data=arrays", f"data.path={make_npz(tmp_path / 'd.npz', groups_train=groups)}").data
    with pytest.raises(LossbenchError, match=message):
        load_dataset(cfg, dataset_classes(cfg), torch.eye(4))
