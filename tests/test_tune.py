"""`lossbench tune`: the search space, the grid, the choice on val, and end to end on tiny synthetic data (Hydra's
Optuna study asked and told by lossbench, its pruning and its workers, and the grid used without Optuna)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from conftest import TINY, lossbench, make_cfg
from omegaconf import OmegaConf

from lossbench import study, tune
from lossbench.errors import LossbenchError
from lossbench.losses import LOSSES
from lossbench.rundir import find_runs
from lossbench.tune import (
    Range,
    best_trial,
    check_range_ends,
    grid,
    load_settings,
    pruner_spec,
    resolve_prune_after,
    search_method,
    search_space,
)

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
    custom = search_space(
        cfg.loss, 0.02, load_settings(["tune.lr=[0.001,0.1]", "tune.params.soft_label_ce.tau.high=0.5"])
    )
    assert custom == {"optim.lr": Range(0.001, 0.1, True), "loss.tau": Range(0.03, 0.5, True)}


@pytest.mark.parametrize("loss", LOSSES)
def test_every_default_range_is_accepted_by_its_loss(loss):
    cfg = make_cfg(f"loss={loss}")
    space = search_space(cfg.loss, float(cfg.optim.lr), load_settings([]))
    check_range_ends(cfg, space)  # raises on a range end the loss or the optimiser rejects
    own = {"ce": 0, "expected_score": 0, "renormalised_expected_score": 0, "log_expected_score": 0}  # lr only
    assert len(space) == 1 + own.get(loss, 1)


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
    with pytest.raises(LossbenchError, match="needs optuna 4 or newer"):
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


def studies(journal) -> dict[str, list]:
    """Every study in a journal file: name -> its trials (the workers' counters left out)."""
    import optuna

    storage = study.open_storage(str(journal))
    return {
        s.study_name: optuna.load_study(study_name=s.study_name, storage=storage).trials
        for s in optuna.get_all_study_summaries(storage)
        if not s.study_name.endswith(":workers")
    }


def final_val_score(run_dir: str) -> float:
    return float(pd.read_csv(f"{run_dir}/metrics.csv")["val_score"].iloc[-1])


def test_tune_end_to_end_with_optuna(tmp_path):
    """2 losses x 2 TPE trials on val, then the seed at each loss's best setting, then the report."""
    pytest.importorskip("optuna", minversion="4")
    result = lossbench("tune", "losses=[ce,soft_label_ce]", *QUICK, "--trials", "2", "--out", "t", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "t"
    record = json.loads((out / "tune.json").read_text())
    assert record["search"] == "tpe" and list(record["losses"]) == ["ce", "soft_label_ce"]
    for loss, keys in [("ce", ["optim.lr"]), ("soft_label_ce", ["optim.lr", "loss.tau"])]:
        entry = record["losses"][loss]
        study = studies(out / "tuning" / "optuna.journal")[f"lossbench/{loss}"]  # the study asked and told
        assert [(t.number, t.params, t.value) for t in study] == [
            (t["trial"], t["setting"], t["val_score"]) for t in entry["trials"]
        ]
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
    assert (
        "## Tuned settings" in summary
        and f"optim.lr={record['losses']['ce']['chosen']['setting']['optim.lr']:.4g}" in summary
    )
    assert "## Tuned settings" in result.stdout


def test_tune_on_a_grid(tmp_path):
    result = lossbench(
        "tune",
        "losses=[ce]",
        *QUICK,
        "tune.search=grid",
        "tune.lr=[0.01,0.1]",
        "--trials",
        "2",
        "--out",
        "g",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "g" / "tune.json").read_text())
    assert record["search"] == "grid"
    assert [t["setting"]["optim.lr"] for t in record["losses"]["ce"]["trials"]] == [0.0178, 0.0562]
    assert not (tmp_path / "g" / "tuning" / "optuna.journal").exists()  # no study: the grid is one Hydra sweep
    assert "searched by a grid" in (tmp_path / "g" / "summary.md").read_text()
    assert math.isfinite(record["losses"]["ce"]["chosen"]["val_score"])


def test_a_pruned_reporter_stops_the_run_after_the_epoch_it_read(tmp_path):
    """The run calls the reporter back once each epoch's row is on disk; the first call that finds the trial pruned
    stops the run there, with that epoch's records written and nothing after (no signal, no thread: any OS)."""
    from lossbench.rundir import read_metrics
    from lossbench.train import train_run

    calls = []

    def after_epoch() -> None:
        rows, _ = read_metrics(tmp_path / "run")
        calls.append(len(rows["epoch"]))
        if len(calls) == 2:
            raise study.Pruned()

    with pytest.raises(study.Pruned):
        train_run(make_cfg(*TINY, "train.epochs=4"), tmp_path / "run", after_epoch=after_epoch)
    assert calls == [1, 2] and list(read_metrics(tmp_path / "run")[0]["epoch"]) == [1, 2]


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
    small = lossbench(
        "tune",
        "losses=[ce,label_smoothing]",
        *QUICK,
        "tune.search=grid",
        "--trials",
        "2",
        "--out",
        "small",
        cwd=tmp_path,
    )
    assert small.returncode == 0, small.stderr
    chosen = {
        loss: e["chosen"]["setting"]
        for loss, e in json.loads((tmp_path / "small" / "tune.json").read_text())["losses"].items()
    }
    result = lossbench(
        "tune",
        "--from",
        "small/tune.json",
        "losses=[ce,label_smoothing]",
        *TINY,
        "seeds=[0,1]",
        "--out",
        "big",
        cwd=tmp_path,
    )
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
    record = {
        "args": [],
        "search": "grid",
        "sampler_seed": 0,
        "trials_per_loss": 1,
        "losses": {
            "ce": {
                "space": {"optim.lr": {"low": 0.01, "high": 0.1, "log": True}},
                "trials": [{"trial": 0, "setting": {"optim.lr": 0.05}, "status": "finished", "val_score": 1.0}],
                "chosen": {"trial": 0, "setting": {"optim.lr": 0.05}, "val_score": 1.0},
            }
        },
    }
    (tmp_path / "rec.json").write_text(edit(record) if callable(edit) else edit)
    return "rec.json"


def setting(value):
    def edit(record):
        record["losses"]["ce"]["chosen"]["setting"] = value
        return json.dumps(record)

    return edit


def space(value):
    def edit(record):
        record["losses"]["ce"]["space"] = value
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
        (space({"optim.lr": {"low": 0.01}}), [], "ce's searched range optim.lr={'low': 0.01}: not a range"),
        (space({"optim.lr": 3}), [], "ce's searched range optim.lr=3: not a range"),
        (space({"optim.lr": {"low": "a", "high": 1, "log": True}}), [], "searched range optim.lr="),
    ],
)
def test_bad_from_is_one_error_line(tmp_path, edit, args, fragment):
    name = edited_record(tmp_path, edit)
    result = lossbench("tune", *TINY, "losses=[ce]", "--from", name, *args, "--out", "t", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and fragment in result.stderr, result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr
    assert not (tmp_path / "t").exists()


def test_from_with_a_shared_learning_rate_runs_every_loss_at_it(tmp_path):
    """The control pair's form: reuse each loss's chosen parameter, but one learning rate set on the command line
    for all. The user's value wins (it used to be lost under the choice) and the note says what was chosen."""

    def two_losses(record):
        record["losses"]["label_smoothing"] = {
            "space": {
                "optim.lr": {"low": 0.01, "high": 0.1, "log": True},
                "loss.eps": {"low": 0, "high": 0.3, "log": False},
            },
            "trials": [{"trial": 0, "setting": {"optim.lr": 0.08, "loss.eps": 0.16}, "status": "finished"}],
            "chosen": {"trial": 0, "setting": {"optim.lr": 0.08, "loss.eps": 0.16}, "val_score": 1.1},
        }
        return json.dumps(record)

    name = edited_record(tmp_path, two_losses)
    args = ["losses=[ce,label_smoothing]", "optim.lr=0.02", "--from", name, "--out", "t"]
    result = lossbench("tune", *QUICK, *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for loss, eps in (("ce", None), ("label_smoothing", 0.16)):
        cfg = OmegaConf.load(tmp_path / "t" / f"loss={loss},seed=0" / "config.yaml")
        assert cfg.optim.lr == 0.02 and OmegaConf.select(cfg, "loss.eps") == eps
    chosen = json.loads((tmp_path / "t" / "tune.json").read_text())["losses"]["label_smoothing"]["chosen"]
    assert chosen["setting"] == {"optim.lr": 0.02, "loss.eps": 0.16} and chosen["replaced"] == {"optim.lr": 0.08}
    summary = (tmp_path / "t" / "summary.md").read_text()
    assert "optim.lr=0.02 (chosen 0.08) loss.eps=0.16" in summary and "optim.lr=0.02 (chosen 0.05)" in summary


def test_a_value_set_on_the_command_line_shows_the_search_s_choice_only_where_it_differs():
    from lossbench.tune import setting_shown

    chosen = {"setting": {"optim.lr": 0.02, "loss.eps": 0.16}, "replaced": {"optim.lr": 0.08}}
    assert setting_shown(chosen, "optim.lr") == "optim.lr=0.02 (chosen 0.08)"
    assert setting_shown(chosen, "loss.eps") == "loss.eps=0.16"
    same = {"setting": {"optim.lr": 0.1347}, "replaced": {"optim.lr": 0.1347}}  # ce in the control pair
    assert setting_shown(same, "optim.lr") == "optim.lr=0.1347"


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


# ---------------------------------------------------------------- Optuna's study: pruning, workers, old records

PRUNING = [
    *TINY,
    "model.widths=[32,64,128]",
    "train.epochs=3",
    "data.val_size=128",
    "seeds=[0]",
    "tune.pruner_startup=1",
    "tune.prune_after=1",
]


@pytest.mark.parametrize("epochs, given, after", [(1, None, 1), (3, None, 2), (4, None, 2), (10, None, 5), (4, 0, 0)])
def test_prune_after_defaults_to_half_the_epochs_rounded_up(epochs, given, after):
    """A median taken after epoch 1 of 4 pruned a high learning rate that would have been chosen: by default a
    trial trains half its epochs first; a value given is kept."""
    settings = load_settings([] if given is None else [f"tune.prune_after={given}"])
    resolve_prune_after(settings, epochs)
    assert pruner_spec(settings)["after"] == after


def test_a_pruned_trial_is_recorded_as_pruned_and_its_run_says_so(tmp_path):
    """Each epoch's val_score reaches the median pruner from the trial's own job; a trial it stops is pruned in the
    study, in tune.json and in its run directory (status, epoch, message), never chosen, and the note counts it."""
    pytest.importorskip("optuna", minversion="4")
    result = lossbench("tune", "losses=[soft_label_ce]", *PRUNING, "--trials", "4", "--out", "t", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "t"
    entry = json.loads((out / "tune.json").read_text())["losses"]["soft_label_ce"]
    pruned = [t for t in entry["trials"] if t["status"] == "pruned"]
    assert pruned and entry["chosen"]["trial"] not in [t["trial"] for t in pruned]
    states = {t.number: t for t in studies(out / "tuning" / "optuna.journal")["lossbench/soft_label_ce"]}
    for trial in pruned:
        assert trial["val_score"] is None and 1 <= trial["pruned_at"] < 3
        assert states[trial["trial"]].state.name == "PRUNED"
        assert sorted(states[trial["trial"]].intermediate_values) == list(range(1, trial["pruned_at"] + 1))
        run_dir = tmp_path / trial["run_dir"]
        status = json.loads((run_dir / "status.json").read_text())
        rows = pd.read_csv(run_dir / "metrics.csv")
        assert status["status"] == "pruned" and status["epoch"] == len(rows) >= trial["pruned_at"]
        assert status["message"].startswith(f"pruned by the search after epoch {trial['pruned_at']} of 3")
        assert (len(rows) > trial["pruned_at"]) == ("it had trained to epoch" in status["message"])
        reported = states[trial["trial"]].intermediate_values
        assert [reported[e] for e in sorted(reported)] == list(rows["val_score"][: len(reported)])
    for trial in entry["trials"]:
        if trial["status"] == "finished":
            assert (
                states[trial["trial"]].state.name == "COMPLETE"
                and len(pd.read_csv(tmp_path / trial["run_dir"] / "metrics.csv")) == 3
            )
    assert f"/4 ({len(pruned)} pruned)" in (out / "summary.md").read_text()


def test_one_seed_and_a_new_storage_give_the_same_trials(tmp_path):
    pytest.importorskip("optuna", minversion="4")
    records = []
    for out in ("a", "b"):
        result = lossbench(
            "tune", "losses=[ce]", *PRUNING, "tune.search_only=true", "--trials", "3", "--out", out, cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
        assert not find_runs(tmp_path / out)  # search only: no seeds run
        record = json.loads((tmp_path / out / "tune.json").read_text())["losses"]["ce"]
        records.append([(t["trial"], t["setting"], t["status"], t["val_score"]) for t in record["trials"]])
    assert records[0] == records[1] and len(records[0]) == 3


def test_two_processes_share_one_study(tmp_path):
    """Two tune processes on one journal file: the study gets --trials trials in all, each run by one of them, each
    worker samples with its own seed, and both record the whole study and the same choice."""
    pytest.importorskip("optuna", minversion="4")
    import subprocess
    import sys

    args = ["tune", "losses=[ce]", *PRUNING, "tune.storage=shared.journal", "tune.search_only=true", "--trials", "4"]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "lossbench.cli", *args, "--out", out],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for out in ("w1", "w2")
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err
    records = [json.loads((tmp_path / out / "tune.json").read_text())["losses"]["ce"] for out in ("w1", "w2")]
    assert sorted(r["worker"] for r in records) == [0, 1]
    assert sorted(r["worker_sampler_seed"] for r in records) == [0, 1]
    assert records[0]["trials"] == records[1]["trials"] and records[0]["chosen"] == records[1]["chosen"]
    assert [t["trial"] for t in records[0]["trials"]] == [0, 1, 2, 3]
    assert all(t["status"] in ("finished", "pruned") for t in records[0]["trials"])
    for trial in records[0]["trials"]:
        ran_in = [
            out for out in ("w1", "w2") if (tmp_path / out / "tuning" / "ce" / f"trial_{trial['trial']}").is_dir()
        ]
        assert len(ran_in) == 1 and trial["run_dir"].startswith(ran_in[0])
    assert len(studies(tmp_path / "shared.journal")["lossbench/ce"]) >= 4  # plus at most one asked too late


def test_workers_number_themselves_in_an_sqlite_storage(tmp_path):
    pytest.importorskip("optuna", minversion="4")
    search = {
        "space": {"optim.lr": {"low": 0.01, "high": 0.1, "log": True}},
        "pruner": {"name": "median", "after": 1, "startup": 3},
    }
    storage = study.open_storage(f"sqlite:///{tmp_path / 'tune.db'}")
    joined = [study.join_study(storage, "s/ce", search, 7, 2) for _ in range(2)]
    assert [(worker, seed) for _, worker, seed in joined] == [(0, 7), (1, 8)]
    other = {**search, "pruner": {"name": "halving", "after": 1, "startup": 3}}
    with pytest.raises(LossbenchError, match="study s/ce in tune.storage was made by another search"):
        study.join_study(storage, "s/ce", other, 7, 2)


def test_the_reporter_prunes_on_the_rows_in_order(tmp_path):
    """The pruner sees every epoch once, in order, whenever the rows are read; never after the last epoch."""
    optuna = pytest.importorskip("optuna", minversion="4")
    from lossbench.rundir import append_metrics

    s = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    done = s.ask()
    for epoch, value in enumerate([0.5, 0.6, 0.7], start=1):
        done.report(value, epoch)
    s.tell(done, 0.7)
    row = {"elapsed_s": 1.0, "test_acc": 0.1, "test_score": 0.1}
    reporter = study.Reporter(s.ask(), tmp_path, epochs=3)
    assert not reporter.feed()  # no metrics.csv yet
    for epoch, value in enumerate([0.55, 0.58], start=1):
        append_metrics(tmp_path, {"epoch": epoch, **row, "val_score": value})
    assert reporter.feed() and reporter.pruned_at == 2 and reporter.value == 0.58  # 0.58 < median 0.6 at epoch 2
    assert reporter.message(3).endswith("it had trained to epoch 3 when it stopped, which the search does not use")
    last = study.Reporter(s.ask(), tmp_path / "x", epochs=1)
    (tmp_path / "x").mkdir()
    append_metrics(tmp_path / "x", {"epoch": 1, **row, "val_score": 0.0})
    assert not last.feed()  # the last epoch ends the trial: finished, never pruned


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["tune.pruner=sometimes"], "tune.pruner must be one of none, median, halving, not 'sometimes'"),
        (["tune.prune_after=-1"], "tune.prune_after must be an integer >= 0, not -1"),
        (["tune.search=grid", "tune.storage=s.journal"], "they need tune.search=tpe"),
        (["tune.study=a:b"], "tune.study must be a name without ':'"),
        (["hydra.sweeper.n_jobs=4"], "tune asks Optuna for its trials itself, through no Hydra sweeper"),
    ],
)
def test_bad_study_settings_are_one_error_line(tmp_path, args, fragment):
    pytest.importorskip("optuna", minversion="4")
    result = lossbench("tune", *TINY, "losses=[ce]", *args, "--out", "t", cwd=tmp_path)
    assert result.returncode == 2 and fragment in result.stderr, result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr
    assert not (tmp_path / "t").exists()


def test_from_reads_a_record_of_hydras_optuna_sweeper():
    """results/cifar10_tuning/tune.json was written through hydra-optuna-sweeper: --from and the note read it."""
    from pathlib import Path

    path = Path(__file__).parent.parent / "results" / "cifar10_tuning" / "tune.json"
    record = tune.read_source(path)
    entry = tune.reused_choice(path, record, make_cfg("loss=soft_label_ce"))
    assert entry["chosen"]["setting"] == {"optim.lr": 0.08025955666793813, "loss.tau": 0.202727317015276}
    assert "searched by Optuna's TPE (seed 0)." in tune.tuned_markdown(record)
