"""The bridge to Hydra: every command line lossbench builds reads back, through Hydra's override grammar, as the
values it was built from (paths with quotes, commas, spaces), and it is the one place that calls hydra.main."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import QuotedString
from omegaconf import OmegaConf

from lossbench import hydra_bridge
from lossbench.tune import Range, final_command, grid_command, trial_command

AWKWARD = Path("/tmp/it's a, folder\\ with ünïcode")


def parsed(command: list[str]) -> dict[str, object]:
    """key -> value (a sweep's list of values) of a command line, as Hydra reads it."""
    words = [w for w in command if w != "-m"]
    result = {}
    for override in OverridesParser.create().parse_overrides(words):
        value = override.value()
        if override.is_sweep_override():
            value = [v.text if isinstance(v, QuotedString) else v for v in value.list]
        result[override.key_or_group] = value.text if isinstance(value, QuotedString) else value
    return result


def test_a_sweep_into_an_awkward_folder_reads_back():
    command = hydra_bridge.sweep_command(
        ["train.epochs=2"], AWKWARD, ["seed=0,1"], subdir="trial_${hydra.job.num}", name_by=["resume", "train.epochs"]
    )
    assert command[0] == "-m"
    values = parsed(command)
    assert values["hydra.sweep.dir"] == str(AWKWARD) and values["seed"] == [0, 1]
    assert values["hydra.sweep.subdir"] == "trial_${hydra.job.num}"
    assert values["hydra.job.config.override_dirname.exclude_keys"] == ["resume", "train.epochs"]
    assert parsed(hydra_bridge.run_command([], AWKWARD))["hydra.run.dir"] == str(AWKWARD)


def test_tunes_command_lines_carry_exact_values():
    lr = 0.08025955666793813
    trial = trial_command(
        "soft_label_ce",
        {"optim.lr": lr, "loss.tau": 0.2},
        {"LOSSBENCH_TUNE_STORAGE": str(AWKWARD)},
        ["train.epochs=4"],
        AWKWARD / "trial_3",
    )
    values = parsed(trial)
    assert values["optim.lr"] == lr and values["loss.tau"] == 0.2 and values["loss"] == "soft_label_ce"
    assert values["++hydra.job.env_set.LOSSBENCH_TUNE_STORAGE".lstrip("+")] == str(AWKWARD)
    assert values["hydra.sweep.dir"] == str(AWKWARD) and values["hydra.sweep.subdir"] == "trial_3"
    final = parsed(final_command("ce", {"optim.lr": lr}, [0, 1], ["train.epochs=4"], AWKWARD))
    assert final["seed"] == [0, 1] and final["optim.lr"] == lr and final["hydra.sweep.dir"] == str(AWKWARD)
    assert final["hydra.job.config.override_dirname.exclude_keys"] == ["resume", "train.epochs", "optim.lr"]
    points = parsed(grid_command("ce", {"optim.lr": Range(0.01, 0.1, True)}, 2, [], AWKWARD))
    assert points["optim.lr"] == [0.0178, 0.0562] and points["hydra.sweep.dir"] == str(AWKWARD)


@pytest.mark.parametrize("text", ["plain", "it's", "a,b c", "trailing\\", "${oc.env:HOME}", "back\\'slash"])
def test_hydra_quote_reads_back_exactly(text):
    """Through Hydra's grammar, then OmegaConf (which would interpolate an unescaped ${...})."""
    value = OverridesParser.create().parse_override(f"key={hydra_bridge.hydra_quote(text)}").value()
    assert OmegaConf.create({"key": value}).key == text


def test_hydra_main_is_called_in_one_place_only():
    sources = Path(hydra_bridge.__file__).parent.rglob("*.py")
    callers = sorted(p.name for p in sources if "hydra.main(" in p.read_text(encoding="utf-8"))
    assert callers == ["hydra_bridge.py"]
