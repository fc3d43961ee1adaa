"""Every experiment and config-group option composes; the quick experiment is offline and valid."""

from __future__ import annotations

from importlib import resources

import pytest

from conftest import make_cfg
from lossbench.errors import LossbenchError
from lossbench.losses import LOSSES, loss_parameters
from lossbench.train import prepare, validate


def options(group: str) -> list[str]:
    folder = resources.files("lossbench.configs") / group
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def test_groups_mirror_modules():
    for group in ("data", "scores", "loss", "model", "optim", "experiment"):
        assert options(group), group
    assert options("loss") == sorted(LOSSES)
    assert {"quick", "cifar10", "cifar100", "synthetic100"} <= set(options("experiment"))


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = make_cfg(f"experiment={experiment}")
    assert cfg.name == experiment
    for key in ("seed", "device", "train.epochs", "train.batch_size", "optim.lr", "data.train_size",
                "data.test_size", "data.classes"):  # fmt: skip
        node, *path = key.split(".")
        value = cfg[node]
        for part in path:
            assert part in value, key
            value = value[part]
    validate(cfg)


@pytest.mark.parametrize("loss", options("loss"))
def test_loss_configs_carry_the_registered_parameters(loss):
    cfg = make_cfg(f"loss={loss}")
    assert {k for k in cfg.loss if k != "name"} == set(loss_parameters(loss))


@pytest.mark.parametrize("group", ["data", "scores", "model", "optim"])
def test_every_group_option_composes(group):
    for option in options(group):
        make_cfg(f"{group}={option}")


def test_quick_is_the_default_and_offline():
    cfg = make_cfg()
    assert cfg.name == "quick" and cfg.data.name == "synthetic"
    assert prepare(cfg).matrix.shape == (10, 10)
    assert list(cfg.losses) == list(LOSSES)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=0", "train.epochs must be > 0"),
        ("train.batch_size=-1", "train.batch_size must be > 0"),
        ("optim.lr=0", "optim.lr must be > 0"),
        ("data.train_size=0", "data.train_size must be > 0"),
        ("device=tpu", "device must be auto, cpu or cuda"),
    ],
)
def test_nonsense_numbers_are_rejected(override, message):
    with pytest.raises(LossbenchError, match=message):
        validate(make_cfg(override))
