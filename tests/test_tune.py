"""`lossbench tune`: the search space, the grid, the choice on val, and end to end on tiny synthetic data (Hydra's
Optuna sweeper, and the grid used without it)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import TINY, lossbench, make_cfg
from lossbench import tune
from lossbench.errors import LossbenchError
from lossbench.rundir import find_runs
from lossbench.losses import LOSSES
from lossbench.tune import Range, best_trial, check_range_ends, grid, load_settings, search_method, search_space

QUICK = [*TINY, "train.epochs=1", "seeds=[0]"]


def test_grid_takes_cell_centres_within_the_budget():
    space = {"optim.lr": Range(0.01, 1.0, log=True), "loss.eps": Range(0.0, 0.3, log=False)}
    points = grid(space, trials=5)  # floor(sqrt(5)) = 2 points per key: 4 runs <= 5
    assert points["optim.lr"] == [pytest.approx(0.01 * 100**0.25, rel=1e-2), pytest.approx(0.01 * 100**0.75, rel=1e-2)]
    assert points["loss.eps"] == [0.075, 0.225]
    assert grid({"optim.lr": Range(0.01, 1.0, log=True)}, trials=3)["optim.lr"] == [0.0215, 0.1, 0.464]


def test_search_space_scales_the_configured_lr_and_reads_the_loss_range():
    cfg = make_cfg("loss=soft_label_ce", "optim.lr=0.02")
    space = search_space(cfg.loss, 0.02, load_settings([]))
    assert space["optim.lr"] == Range(pytest.approx(0.002), pytest.approx(0.2), True)
    assert space["loss.tau"] == Range(0.03, 1.0, True)
    assert list(search_space(make_cfg("loss=ce").loss, 0.02, load_settings([]))) == ["optim.lr"]
    custom = search_space(cfg.loss, 0.02, load_settings(["tune.lr=[0.001,0.1]",
                                                         "tune.params.soft_label_ce.tau.high=0.5"]))  # fmt: skip
    assert custom == {"optim.lr": Range(0.001, 0.1, True), "loss.tau": Range(0.03, 0.5, True)}


@pytest.mark.parametrize("loss", LOSSES)
def test_every_default_range_is_accepted_by_its_loss(loss):
    cfg = make_cfg(f"loss={loss}")
    space = search_space(cfg.loss, float(cfg.optim.lr), load_settings([]))
    check_range_ends(cfg, space)  # raises on a range end the loss or the optimiser rejects
    assert len(space) == (1 if loss in ("ce", "expected_score", "log_expected_score") else 2)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["tune.lr=[0.1,0.01]"], "tune.lr: low 0.1 must be below high 0.01"),
        (["tune.params.soft_label_ce.tau.low=0"], "needs low > 0"),
        (["tune.params.soft_label_ce.beta={low: 1, high: 2, log: false}"], "has no parameter 'beta'"),
        (["tune.lr=0.1"], "tune.lr must be [low, high]"),
    ],
)
def test_bad_ranges_are_named(overrides, fragment):
    with pytest.raises(LossbenchError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        search_space(make_cfg("loss=soft_label_ce").loss, 0.05, load_settings(overrides))


def test_unknown_tune_setting_is_refused():
    with pytest.raises(LossbenchError, match="tune settings"):
        load_settings(["tune.sampler=tpe"])


def test_grid_when_the_optuna_plugin_is_absent(monkeypatch):
    monkeypatch.setattr(tune, "optuna_installed", lambda: True)
    assert search_method("auto") == "tpe"
    monkeypatch.setattr(tune, "optuna_installed", lambda: False)
    assert search_method("auto") == "grid"
    with pytest.raises(LossbenchError, match="needs hydra-optuna-sweeper"):
        search_method("tpe")


def test_best_trial_ignores_failed_and_diverged_trials():
    trials = [
        {"trial": 0, "status": "diverged", "val_score": None},
        {"trial": 1, "status": "finished", "val_score": 0.5},
        {"trial": 2, "status": "failed", "val_score": None},
        {"trial": 3, "status": "finished", "val_score": 0.5},
    ]
    assert best_trial(trials)["trial"] == 1  # the first of equals
    assert best_trial(trials[::2]) is None


def test_report_leaves_out_the_tuning_trials(tmp_path):
    for run in ["loss=ce,seed=0", "tuning/ce/trial_0"]:
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / "status.json").write_text("{}")
        (tmp_path / run / "config.yaml").write_text("seed: 0\n")
    assert find_runs(tmp_path) == [tmp_path / "loss=ce,seed=0"]
    assert find_runs(tmp_path / "tuning" / "ce") == [tmp_path / "tuning" / "ce" / "trial_0"]


def final_val_score(run_dir: str) -> float:
    return float(pd.read_csv(f"{run_dir}/metrics.csv")["val_score"].iloc[-1])


def test_tune_end_to_end_with_optuna(tmp_path):
    """2 losses x 2 TPE trials on val, then the seed at each loss's best setting, then the report."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    result = lossbench("tune", "losses=[ce,soft_label_ce]", *QUICK, "--trials", "2", "--out", "t", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "t"
    record = json.loads((out / "tune.json").read_text())
    assert record["search"] == "tpe" and list(record["losses"]) == ["ce", "soft_label_ce"]
    for loss, keys in [("ce", ["optim.lr"]), ("soft_label_ce", ["optim.lr", "loss.tau"])]:
        entry = record["losses"][loss]
        assert (out / "tuning" / loss / "optimization_results.yaml").exists()  # written by the Optuna sweeper
        assert [t["trial"] for t in entry["trials"]] == [0, 1]
        for trial in entry["trials"]:
            assert list(trial["setting"]) == keys
            assert trial["val_score"] == pytest.approx(final_val_score(str(tmp_path / trial["run_dir"])))
            for key, value in trial["setting"].items():
                assert entry["space"][key]["low"] <= value <= entry["space"][key]["high"]
        best = max(entry["trials"], key=lambda t: t["val_score"])
        assert entry["chosen"] == {"trial": best["trial"], "setting": best["setting"], "val_score": best["val_score"]}
        final = OmegaConf.load(out / f"loss={loss},seed=0" / "config.yaml")
        assert {key: OmegaConf.select(final, key) for key in keys} == best["setting"]
    curves = pd.read_csv(out / "curves.csv")
    assert sorted(curves["loss"]) == ["ce", "soft_label_ce"]  # the final runs only, not the trials
    summary = (out / "summary.md").read_text()
    assert ("## Tuned settings" in summary
            and f"optim.lr={record['losses']['ce']['chosen']['setting']['optim.lr']:.4g}" in summary)  # fmt: skip
    assert "## Tuned settings" in result.stdout


def test_tune_on_a_grid(tmp_path):
    result = lossbench("tune", "losses=[ce]", *QUICK, "tune.search=grid", "tune.lr=[0.01,0.1]", "--trials", "2",
                       "--out", "g", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "g" / "tune.json").read_text())
    assert record["search"] == "grid"
    assert [t["setting"]["optim.lr"] for t in record["losses"]["ce"]["trials"]] == [0.0178, 0.0562]
    assert not (tmp_path / "g" / "tuning" / "ce" / "optimization_results.yaml").exists()
    assert "searched by a grid" in (tmp_path / "g" / "summary.md").read_text()
    assert math.isfinite(record["losses"]["ce"]["chosen"]["val_score"])


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["losses=[ce,nope]"], "losses: unknown loss(es) ['nope']"),
        (["losses=[ce,ce]"], "losses: ['ce'] listed more than once"),
        (["seeds=[0.5]"], "seeds: each seed must be an integer"),
        (["--trials", "0"], "--trials must be >= 1, not 0"),
        (["tune.lr=[0.5,0.05]"], "tune.lr: low 0.5 must be below high 0.05"),
        (["tune.params.label_smoothing.eps.high=1.5", "losses=[label_smoothing]"], "tune range loss.eps"),
        (["data.val_size=null"], "tune selects on the validation split"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, args, fragment):
    result = lossbench("tune", *TINY, *args, "--out", "t", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and fragment in result.stderr, result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr
    assert not (tmp_path / "t").exists()


def test_from_runs_the_seeds_at_the_settings_an_earlier_tune_chose(tmp_path):
    """Search on one budget, then reuse its choices on another: no trials run, the record and the note say where
    the settings came from, and both reports draw the trials."""
    small = lossbench("tune", "losses=[ce,label_smoothing]", *QUICK, "tune.search=grid", "--trials", "2",
                      "--out", "small", cwd=tmp_path)  # fmt: skip
    assert small.returncode == 0, small.stderr
    chosen = {loss: e["chosen"]["setting"]
              for loss, e in json.loads((tmp_path / "small" / "tune.json").read_text())["losses"].items()}  # fmt: skip
    result = lossbench("tune", "--from", "small/tune.json", "losses=[ce,label_smoothing]", *TINY, "seeds=[0,1]",
                       "--out", "big", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    big = tmp_path / "big"
    assert not (big / "tuning").exists()
    for loss, setting in chosen.items():
        for seed in (0, 1):
            cfg = OmegaConf.load(big / f"loss={loss},seed={seed}" / "config.yaml")
            assert cfg.train.epochs == 2 and {key: OmegaConf.select(cfg, key) for key in setting} == setting
    record = json.loads((big / "tune.json").read_text())
    assert record["from"] == "small/tune.json" and "train.epochs=1" in record["source_args"]
    assert [t["trial"] for t in record["losses"]["ce"]["trials"]] == [0, 1]
    assert "are reused here" in (big / "summary.md").read_text()
    assert (tmp_path / "small" / "tuning.png").exists() and (big / "tuning.png").exists()


def edited_record(tmp_path, edit) -> str:
    """A tune.json of one loss (ce at lr 0.05) changed by edit, written to tmp_path; returns its name."""
    record = {"args": [], "search": "grid", "sampler_seed": 0, "trials_per_loss": 1, "losses": {"ce": {
        "space": {"optim.lr": {"low": 0.01, "high": 0.1, "log": True}},
        "trials": [{"trial": 0, "setting": {"optim.lr": 0.05}, "status": "finished", "val_score": 1.0}],
        "chosen": {"trial": 0, "setting": {"optim.lr": 0.05}, "val_score": 1.0}}}}  # fmt: skip
    (tmp_path / "rec.json").write_text(edit(record) if callable(edit) else edit)
    return "rec.json"


def setting(value):
    def edit(record):
        record["losses"]["ce"]["chosen"]["setting"] = value
        return json.dumps(record)
    return edit


@pytest.mark.parametrize(
    "edit, args, fragment",
    [
        (json.dumps, ["--trials", "3"], "it takes no --trials and no tune.* settings"),
        (json.dumps, ["tune.seed=2"], "it takes no --trials and no tune.* settings"),
        (json.dumps, ["losses=[ce,soft_label_ce]"], "no chosen setting for loss soft_label_ce (it has: ce)"),
        ("{not json", [], "not a readable tune.json"),
        ('{"losses": {}}', [], "not a tune.json written by lossbench tune"),
        (setting({"optim.lr": "abc"}), [], "ce optim.lr=abc: not a finite number"),
        (setting({"optim.lr": -1.0}), [], "ce optim.lr=-1.0"),
        (setting({"optim.momentum": 0.5}), [], "ce optim.momentum=0.5: not a searched key"),
        (setting({"loss.tau": 0.5}), [], "ce loss.tau=0.5: not a searched key"),
    ],
)
def test_bad_from_is_one_error_line(tmp_path, edit, args, fragment):
    name = edited_record(tmp_path, edit)
    result = lossbench("tune", *TINY, "losses=[ce]", "--from", name, *args, "--out", "t", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and fragment in result.stderr, result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr
    assert not (tmp_path / "t").exists()


def test_from_a_missing_file(tmp_path):
    result = lossbench("tune", *TINY, "losses=[ce]", "--from", "nope.json", "--out", "t", cwd=tmp_path)
    assert result.returncode == 2 and "--from nope.json: not a readable tune.json" in result.stderr


def test_from_into_a_users_folder_is_refused_and_the_folder_kept(tmp_path):
    name = edited_record(tmp_path, json.dumps)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "summary.md").write_text("my notes")
    result = lossbench("tune", *TINY, "losses=[ce]", "--from", name, "--out", "mine", cwd=tmp_path)
    assert result.returncode == 2 and "not empty and not made by lossbench (it holds summary.md)" in result.stderr
    assert (tmp_path / "mine" / "summary.md").read_text() == "my notes"
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["summary.md"]


def test_resume_of_a_tune_directory_names_the_way_out(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "tune.json").write_text("{}")
    result = lossbench("resume", "t", cwd=tmp_path)
    assert result.returncode == 2
    assert "t was made by `lossbench tune`, which cannot be resumed as a whole" in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr
