"""Configuration: defaults that don't leak, every option of every group composes and instantiates, presets."""

from __future__ import annotations

from importlib import resources

import pytest
import torch
import yaml
from conftest import make_cfg
from omegaconf import OmegaConf

from lossbench.components import group_options
from lossbench.config import prepare, validate
from lossbench.data.classes import CIFAR10_CLASSES, CIFAR100_CLASSES, DOGS20_CLASSES
from lossbench.data.sources import Source, build_source
from lossbench.errors import LossbenchError
from lossbench.launch import DEMO
from lossbench.losses import LOSSES, build_loss_from_config, candidate_losses, loss_parameters
from lossbench.models import build_model
from lossbench.optim import build_optimizer, build_scheduler
from lossbench.scores import build_scores

GROUPS = ("data", "scores", "loss", "model", "optim", "schedule", "experiment")


def group_file(group: str, option: str) -> dict:
    return yaml.safe_load((resources.files("lossbench.configs") / group / f"{option}.yaml").read_text())


def test_groups_mirror_modules():
    for group in GROUPS:
        assert group_options(group), group
    assert group_options("loss") == sorted(LOSSES)
    assert {"quick", "cifar10", "cifar100", "synthetic100", "dogs20", "ss8", "solubility"} <= set(
        group_options("experiment")
    )
    assert {"small_cnn", "resnet18", "mlp", "cnn1d", "custom"} <= set(group_options("model"))


def test_no_experiment_composes_exactly_the_defaults():
    cfg = make_cfg()
    assert cfg.name == "run" and cfg.train.epochs == 10
    for group, option in (("data", "synthetic"), ("model", "small_cnn"), ("optim", "sgd"), ("loss", "ce")):
        assert OmegaConf.to_container(cfg[group]) == group_file(group, option), group


def test_a_data_override_takes_nothing_from_the_demo():
    """The issue's case: data=cifar10 must not inherit the quick demo's subset, noise, narrow network, epochs."""
    cfg = make_cfg("data=cifar10")
    assert OmegaConf.to_container(cfg.data) == group_file("data", "cifar10")
    assert cfg.data.train_size is None and "noise" not in cfg.data
    assert list(cfg.model.widths) == [32, 64, 128] and cfg.train.epochs == 10 and cfg.name == "run"
    assert cfg.model.stem_stride == 1


def test_compare_without_arguments_is_the_offline_demo():
    cfg = make_cfg(DEMO)
    assert cfg.name == "quick" and cfg.data.name == "synthetic" and list(cfg.model.widths) == [16, 32, 64]
    assert cfg.model.stem_stride == 2 and cfg.train.epochs == 5  # sized for a first try on an AVX2-only CPU
    assert prepare(cfg).matrix.shape == (10, 10)
    # every loss a user could train with, in the registry's order; a diagnostic is run by name
    assert list(cfg.losses) == candidate_losses() and set(candidate_losses()) < set(LOSSES)


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = make_cfg(f"experiment={experiment}")
    assert cfg.name == experiment
    validate(cfg)


@pytest.mark.parametrize("loss", group_options("loss"))
def test_loss_configs_carry_the_registered_parameters_at_their_defaults(loss):
    """A loss's defaults live in its class's signature (what `LOSSES[name](S)` in plain Python gets); its config
    file names each parameter, so that `loss.tau=...` overrides it, at exactly that value and type."""
    cfg = make_cfg(f"loss={loss}")
    assert cfg.loss.name == loss
    config = {k: v for k, v in OmegaConf.to_container(cfg.loss).items() if k not in ("name", "_target_")}
    defaults = loss_parameters(loss)
    assert config == defaults
    assert {k: type(v) for k, v in config.items()} == {k: type(v) for k, v in defaults.items()}
    built = build_loss_from_config(cfg.loss, torch.eye(3))
    assert isinstance(built, LOSSES[loss])
    assert {k: getattr(built, k) for k in defaults} == {k: getattr(LOSSES[loss](torch.eye(3)), k) for k in defaults}


def test_every_data_source_instantiates(tmp_path):
    paths = {"imagefolder": [f"data.root={tmp_path}"], "arrays": [f"data.path={tmp_path}/x.npz"]}
    for option in group_options("data"):
        source = build_source(make_cfg(f"data={option}", *paths.get(option, [])).data)
        assert isinstance(source, Source) and source.name == option


@pytest.mark.parametrize("option", group_options("scores"))
def test_every_score_table_instantiates(tmp_path, option):
    classes = {"cifar100_superclass": CIFAR100_CLASSES, "dogs20_groups": DOGS20_CLASSES}.get(option, CIFAR10_CLASSES)
    table = tmp_path / "s.csv"  # a bare numeric square, taken in the dataset's class order
    table.write_text(
        "\n".join(",".join("2" if i == j else "0" for j in range(len(classes))) for i in range(len(classes)))
    )
    cfg = make_cfg(f"scores={option}", *([f"scores.path={table}"] if option == "file" else []))
    scores = build_scores(cfg.scores, classes, warn=False)
    assert scores.matrix.shape == (len(classes), len(classes)) and scores.classes == list(classes)


@pytest.mark.parametrize("model", [m for m in group_options("model") if m != "custom"])
def test_every_model_optimiser_and_schedule_instantiates(model):
    shape = {"mlp": (12,), "cnn1d": (22, 15)}.get(model, (3, 32, 32))
    net = build_model(make_cfg(f"model={model}").model, 5, shape)
    assert net.eval()(torch.zeros(2, *shape)).shape == (2, 5)
    for optim in group_options("optim"):
        optimizer = build_optimizer(make_cfg(f"optim={optim}").optim, net)
        for schedule in group_options("schedule"):
            scheduler = build_scheduler(make_cfg(f"schedule={schedule}").schedule, optimizer, 10, 2)
            assert scheduler.get_last_lr()[0] >= 0


def test_a_custom_model_without_target_is_one_clear_error():
    with pytest.raises(LossbenchError, match=r"model._target_ is not set"):
        build_model(make_cfg("model=custom").model, 5, (3, 32, 32))
    with pytest.raises(LossbenchError, match=r"model._target_=nopkg.Net: cannot import it"):
        build_model(make_cfg("model=custom", "model._target_=nopkg.Net").model, 5, (3, 32, 32))


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
