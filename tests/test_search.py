"""`orderlab search`: YAML search spaces, resumable studies, failed trials, worker processes, training search with
pruning, and a real PostgreSQL server."""

import json
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import tiny_fit_args

from orderlab.cli import main
from orderlab.search import make_spec, run_search
from orderlab.search.space import inference_setting
from orderlab.search.study import _storage, storage_url

ROOT = Path(__file__).resolve().parents[1]


_ARGS = dict(kind="inference", directions=None, fixed=None, fit=None, study_name="t", sampler={"name": "random"},
             pruner=None, seed=0, timeout=None)


def spec_for(tmp_path, ckpt, space, objectives=("fcd", "steps"), **kw):
    args = dict(_ARGS, space=space, objectives=list(objectives), out=str(tmp_path / "search"),
                evaluate={"ckpt": ckpt, "num_samples": 8, "nll_samples": 8})
    args.update(kw)
    return make_spec(**args)


SPACE = {"schedule": {"type": "categorical", "choices": ["random", "locality", "diagonal"]},
         "steps": {"type": "int", "low": 2, "high": 16, "log": True},
         "sizes": {"type": "categorical", "choices": ["cosine", "power"], "when": {"schedule": ["random", "locality"]}},
         "power": {"type": "float", "low": -1.0, "high": 2.0, "when": {"sizes": "power"}},
         "temperature": {"type": "float", "low": 0.8, "high": 1.2}}


def load(out):
    return json.loads((Path(out) / "trials.json").read_text())["rows"]


@pytest.mark.slow
def test_inference_search_writes_pareto_and_resumes(tiny_ckpt, tmp_path, capsys):
    spec = spec_for(tmp_path, tiny_ckpt, SPACE)
    summary = run_search(spec, None, n_trials=3)
    rows = load(spec.out)
    assert [r["trial"] for r in rows] == [0, 1, 2] and all(r["state"] == "COMPLETE" for r in rows)
    for r in rows:  # the objective values are the evaluate code path's numbers for the trial's own setting
        assert r["forward_passes"] == r["steps"] and r["fcd"] >= 0 and r["num_samples"] == 8
        if r["schedule"] != "diagonal":
            assert 2 <= r["steps"] <= 16
        assert ("sizes" in r) == (r["schedule"] in ("random", "locality"))  # conditional parameter
        assert ("power" in r) == (r.get("sizes") == "power")
    assert summary["pareto"], "a non-empty Pareto front"
    for f in ("pareto.md", "pareto.png", "trials.md", "trials.csv", "summary.json", "study.db"):
        assert (Path(spec.out) / f).is_file(), f
    assert list((Path(spec.out) / "tensorboard" / "hparams").rglob("events.out.tfevents*"))
    assert len(list((Path(spec.out) / "trials").glob("trial_*.png"))) == 3
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{spec.out}/study.db")
    assert study.trials[0].user_attrs["metrics"]["fcd"] == rows[0]["fcd"]
    assert all(r["fcd_low"] <= r["fcd_high"] and r["nll_low"] <= r["nll_high"] for r in rows)  # their intervals
    md = (Path(spec.out) / "trials.md").read_text()
    assert "| fcd | fcd_corrected [95% interval] |" in md and "- fcd interval: 95 %" in md
    # a second invocation continues the same study: the count grows, the first three trials are untouched
    run_search(spec, None, n_trials=2)
    again = load(spec.out)
    assert [r["trial"] for r in again] == [0, 1, 2, 3, 4]
    assert again[:3] == rows
    assert "5 trials stored" not in capsys.readouterr().out  # the second run started from 3
    new_params = [{k: r[k] for k in SPACE if k in r} for r in again]
    assert new_params[3] != new_params[0], "a rerun draws fresh parameters instead of repeating the first ones"


def test_trials_table_shows_the_fd_interval_where_trials_have_one():
    from types import SimpleNamespace

    from orderlab.search.report import _keys

    spec = SimpleNamespace(params=[SimpleNamespace(name="steps")], objectives=["fcd", "steps", "nll_bits_per_token"])
    with_iv = [{"fcd": 3.0, "fcd_corrected": 1.0, "fcd_low": 0.5, "fcd_high": 1.5}]
    assert _keys(spec, with_iv) == ["trial", "state", "steps", "fcd", "fcd_corrected", "nll_bits_per_token",
                                    "seconds", "fail_reason"]
    assert "fcd_corrected" not in _keys(spec, [{"fcd": 3.0}])  # e.g. trials evaluated with n_boot=0


@pytest.mark.slow
def test_failed_trial_is_recorded_with_its_reason_and_the_study_goes_on(tiny_ckpt, tmp_path):
    space = {"schedule": {"type": "categorical", "choices": ["random"]},
             "steps": {"type": "int", "low": 63, "high": 66}}  # N = 64: 65 and 66 are invalid budgets
    spec = spec_for(tmp_path, tiny_ckpt, space, objectives=["fcd"], seed=3)
    summary = run_search(spec, None, n_trials=6)
    rows = load(spec.out)
    assert len(rows) == 6
    failed = [r for r in rows if r["state"] == "FAIL"]
    done = [r for r in rows if r["state"] == "COMPLETE"]
    assert failed and done, [(r["steps"], r["state"]) for r in rows]
    assert all(r["steps"] > 64 for r in failed) and all(r["steps"] <= 64 for r in done)
    assert all("outside 1..N=64" in r["fail_reason"] and f"steps={r['steps']}" in r["fail_reason"] for r in failed)
    assert summary["states"] == {"COMPLETE": len(done), "FAIL": len(failed)}
    assert "fail_reason" in (Path(spec.out) / "trials.md").read_text()


@pytest.mark.slow
def test_fixed_budget_single_objective(tiny_ckpt, tmp_path):
    space = {"schedule": {"type": "categorical", "choices": ["random", "locality"]},
             "knobs.repulsion": {"type": "int", "low": 0, "high": 2, "when": {"schedule": "locality"}}}
    spec = spec_for(tmp_path, tiny_ckpt, space, objectives=["fcd"], fixed={"steps": 8}, sampler="tpe")
    summary = run_search(spec, None, n_trials=3)
    rows = load(spec.out)
    assert all(r["steps"] == 8 and r["forward_passes"] == 8 for r in rows)
    # two trials may draw the same setting (the same seeds, so the same fcd): every trial at the minimum is best
    low = min(r["fcd"] for r in rows)
    assert sorted(r["trial"] for r in summary["best"]) == sorted(r["trial"] for r in rows if r["fcd"] == low)
    assert (Path(spec.out) / "best.png").is_file()


def test_power_profile_sets_group_sizes():
    row, sampling = inference_setting({"schedule": "random", "steps": 8, "sizes": "power", "power": 2.0,
                                       "temperature": 0.9, "knobs.fill": "group"})
    assert row == {"schedule": "random", "steps": 8, "knobs": {"sizes": "power:2", "fill": "group"}}
    assert sampling == {"temperature": 0.9}


BAD = [
    ({"steps": {"type": "int", "low": 0.5, "high": 8}}, "space.steps.low"),
    ({"steps": {"type": "integer", "low": 1, "high": 8}}, "space.steps.type"),
    ({"steps": {"type": "int", "low": 1, "high": 8, "logg": True}}, "space.steps.logg"),
    ({"spiral": {"type": "int", "low": 1, "high": 8}}, "space.spiral"),
    ({"schedule": {"type": "categorical", "choices": []}}, "space.schedule.choices"),
    ({"power": {"type": "float", "low": 0, "high": 1, "when": {"sizes": "power"}}}, "space.power.when.sizes"),
    ({"steps": {"type": "float", "low": 3.0, "high": 1.0}}, "space.steps"),
    ({"sizes": {"type": "categorical", "choices": ["cosine"], "when": {"schedule": "locality"}},
      "schedule": {"type": "categorical", "choices": ["random"]}}, "space.sizes.when.schedule"),
    ({"a.b": {"type": "categorical", "choices": [1]}}, "space.a.b"),
    ({"steps": {"type": "int", "low": 1, "high": 8}}, "space.schedule"),
    ({"schedule": {"type": "categorical", "choices": ["random"]}, "steps": {"type": "int", "low": 0, "high": 8}},
     "space.steps.low"),
]


def test_conditions_may_come_in_any_order(tiny_ckpt, tmp_path):
    space = dict(reversed(list(SPACE.items())))  # power before sizes before schedule
    spec = spec_for(tmp_path, tiny_ckpt, space)
    order = [p.name for p in spec.params]
    assert order.index("schedule") < order.index("sizes") < order.index("power")
    cyc = {"a": {"type": "categorical", "choices": [1], "when": {"b": 1}},
           "b": {"type": "categorical", "choices": [1], "when": {"a": 1}}}
    with pytest.raises(ValueError, match="cycle"):
        make_spec(**{**_ARGS, "kind": "train", "space": {f"model.{k}": {**v, "when": {f"model.{o}": 1 for o in
                  v["when"]}} for k, v in cyc.items()}, "fit": {"config": str(ROOT / "experiments/debug.yaml")},
                  "evaluate": None, "objectives": ["val/bits_per_token"], "out": str(tmp_path / "c")})


@pytest.mark.parametrize("space,key", BAD, ids=[k for _, k in BAD])
def test_bad_space_names_the_key(tiny_ckpt, tmp_path, space, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        spec_for(tmp_path, tiny_ckpt, space)


@pytest.mark.parametrize("override,key", [
    ({"objectives": ["fidd"]}, "objectives"), ({"sampler": "cmaes2"}, "sampler"),
    ({"evaluate": {"ckpt": "nope.ckpt"}}, "evaluate.ckpt"), ({"evaluate": {"ckpt": "x", "samples": 3}}, "evaluate.samples"),
    ({"pruner": "median"}, "pruner"), ({"directions": ["down", "minimize"]}, "directions"),
    ({"fixed": {"top_k": 8, "bogus": 1}}, "fixed.bogus"), ({"fixed": {"steps": 8}}, "fixed.steps")])
def test_bad_search_settings_name_the_key(tiny_ckpt, tmp_path, override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        spec_for(tmp_path, tiny_ckpt, SPACE, **override)


def test_cli_reports_a_bad_space_in_one_line(tiny_ckpt, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"space": {"steps": {"type": "int", "low": 4, "high": "lots"}},
                                   "evaluate": {"ckpt": tiny_ckpt}, "out": str(tmp_path / "s")}))
    with pytest.raises(SystemExit) as err:
        main(["search", "--config", str(cfg)])
    assert err.value.code == 2
    msg = capsys.readouterr().err.strip()
    assert msg.startswith("orderlab search: error: space.steps.high='lots'") and "\n" not in msg
    assert not (tmp_path / "s").exists(), "nothing is written before the config is valid"


def two_worker_search(tmp_path, ckpt, storage, n_trials=4):
    spec = spec_for(tmp_path, ckpt, SPACE, study_name="workers")
    run_search(spec, storage, n_trials=n_trials, workers=2)
    study = optuna.load_study(study_name="workers", storage=storage_url(storage, spec.out))
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(n_trials)), "no trial lost, none counted twice"
    assert len({t._trial_id for t in trials}) == n_trials
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    temps = [t.params["temperature"] for t in trials]
    assert len(set(temps)) == n_trials, "the two workers draw from different seeds"
    assert len(load(spec.out)) == n_trials
    return trials


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(tiny_ckpt, tmp_path):
    two_worker_search(tmp_path, tiny_ckpt, None)


@pytest.mark.slow
def test_two_workers_on_a_real_postgresql_server(tiny_ckpt, tmp_path, postgres_url):
    two_worker_search(tmp_path, tiny_ckpt, postgres_url)


@pytest.mark.slow
def test_training_search_prunes_and_resumes(digits_root, tmp_path):
    out = tmp_path / "train"
    args = [a for a in tiny_fit_args(digits_root, out, 4)]
    args += ["--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1", "--trainer.callbacks=[]",
             "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    space = {"model.lr": {"type": "float", "low": 0.0001, "high": 0.01, "log": True},
             "model.train_schedule": {"type": "categorical", "choices": ["random", "locality"]},
             "model.budgets": {"type": "categorical", "choices": [[8, 4], [64]]}}
    spec = make_spec(kind="train", space=space, objectives=["val/bits_per_token"], directions=None, fixed=None,
                     evaluate=None, fit={"config": str(ROOT / "experiments" / "debug.yaml"), "args": args},
                     study_name="train", out=str(out), sampler={"name": "random"},
                     pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0}, seed=0, timeout=None)
    run_search(spec, None, n_trials=2)
    rows = load(out)
    assert len(rows) == 2 and all(r["state"] in ("COMPLETE", "PRUNED") for r in rows)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    assert done and all(r["val/bits_per_token"] > 0 and r["global_step"] == 4 for r in done)
    study = optuna.load_study(study_name="train", storage=f"sqlite:///{out}/study.db")
    assert study.trials[0].intermediate_values, "the pruning callback reported validation values"
    assert list((out / "tensorboard" / "trial_0000").rglob("events.out.tfevents*"))
    run_search(spec, None, n_trials=1)
    assert len(load(out)) == 3


def test_training_search_bad_fit_key_fails_before_any_trial(digits_root, tmp_path):
    space = {"model.lrr": {"type": "float", "low": 0.001, "high": 0.01}}
    spec = make_spec(kind="train", space=space, objectives=["val/bits_per_token"], directions=None, fixed=None,
                     evaluate=None, fit={"config": str(ROOT / "experiments" / "debug.yaml"),
                                         "args": tiny_fit_args(digits_root, tmp_path / "x", 2)},
                     study_name="bad", out=str(tmp_path / "bad"), sampler=None, pruner=None, seed=0, timeout=None)
    with pytest.raises(ValueError, match="model.lrr"):
        run_search(spec, None, n_trials=2)
    assert not (tmp_path / "bad" / "study.db").exists()


def _has_heartbeat(url, trial) -> bool:
    """Whether the trial's heartbeat thread has written its first beat (Optuna's ``trial_heartbeats`` table)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as con:
            return con.execute(sqlalchemy.text("SELECT count(*) FROM trial_heartbeats WHERE trial_id = :t"),
                               {"t": trial._trial_id}).scalar() > 0
    finally:
        engine.dispose()


@pytest.mark.slow
def test_a_trial_of_a_killed_search_is_failed_and_retried(tiny_ckpt, digits_root, tmp_path):
    """SIGKILL a search mid-trial: the next run marks that trial FAIL (no heartbeat) and runs its parameters again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    cfg = {"study_name": "killed", "out": str(out), "objectives": ["fcd"], "n_trials": 3, "heartbeat": 1,
           "sampler": "random", "evaluate": {"ckpt": tiny_ckpt, "data": digits_root, "num_samples": 200,
                                             "batch_size": 1},  # about 200 decodes: a slow trial to kill
           "space": {"schedule": {"type": "categorical", "choices": ["raster"]},
                     "temperature": {"type": "float", "low": 0.5, "high": 1.5}}}
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log = open(tmp_path / "search.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "orderlab.cli", "search", "--config", str(path)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = storage_url(None, str(out))
    # Optuna never fails a RUNNING trial that has no heartbeat row yet (its process may be starting it). The row is
    # written by a thread that starts just after the trial turns RUNNING, so a kill as soon as RUNNING is seen can
    # come first on a busy machine; wait for the heartbeat and the parameters themselves. Bounds are generous: no
    # machine speed is assumed.
    storage = None

    def ready(trial) -> bool:
        # RUNNING, beating, and holding every parameter: the retry can only repeat parameters that were stored
        # (a kill between the heartbeat and the last suggest left a trial with none, seen once under load)
        return (trial.state == optuna.trial.TrialState.RUNNING and set(trial.params) == set(cfg["space"])
                and _has_heartbeat(url, trial))

    try:
        deadline = time.monotonic() + 600
        trials = []
        while time.monotonic() < deadline and proc.poll() is None:
            # touch the storage only after the search has created it: a second process creating the same SQLite
            # schema at the same moment can make either one fail
            if storage is None and "trials stored" in (tmp_path / "search.log").read_text():
                storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
            if storage is not None:
                trials = optuna.load_study(study_name="killed", storage=storage).trials
                if trials and ready(trials[0]):
                    break
            time.sleep(0.2)
        if not (trials and ready(trials[0])):
            pytest.fail("the search never ran a trial with a heartbeat and its parameters: " +
                        (tmp_path / "search.log").read_text()[-2000:])
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:  # the test failed before its kill: leave no search running
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        log.close()
    killed = optuna.load_study(study_name="killed", storage=url).trials
    assert len(killed) == 1 and killed[0].state == optuna.trial.TrialState.RUNNING  # left behind by the kill
    # wait until the trial is stale by Optuna's own rule (more than 4 heartbeats of silence, by the database clock)
    watcher = _storage(url, 1)
    study_id = optuna.load_study(study_name="killed", storage=watcher)._study_id
    deadline = time.monotonic() + 120
    while killed[0]._trial_id not in watcher._get_stale_trial_ids(study_id):
        assert time.monotonic() < deadline, "the killed trial never went stale"
        time.sleep(0.5)
    spec = make_spec(**{**_ARGS, "space": cfg["space"], "objectives": ["fcd"], "out": str(out), "study_name": "killed",
                        "evaluate": {**cfg["evaluate"], "num_samples": 8, "batch_size": 8}, "heartbeat": 1})
    run_search(spec, None, n_trials=1)
    trials = optuna.load_study(study_name="killed", storage=url).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params == trials[0].params and trials[1].system_attrs.get("failed_trial") == 0


@pytest.mark.slow
def test_training_search_shows_lightning_banners_and_warnings_at_most_once(digits_root, tmp_path):
    """A 2-trial training search run as a user runs it (a fresh process, output to a pipe): one line per trial, not
    Lightning's "GPU available"/tip banners and the same warnings again in every trial."""
    import re
    import subprocess
    import sys

    args = [*tiny_fit_args(digits_root, tmp_path / "unused", 2), "--trainer.callbacks=[]",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    cfg = {"kind": "train", "study_name": "quiet", "out": str(tmp_path / "s"), "n_trials": 2, "sampler": "random",
           "objectives": ["val/bits_per_token"], "fit": {"config": str(ROOT / "experiments" / "debug.yaml"),
                                                        "args": args},
           "space": {"model.lr": {"type": "float", "low": 0.0001, "high": 0.01, "log": True}}}
    path = tmp_path / "quiet.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = subprocess.run([sys.executable, "-m", "orderlab.cli", "search", "--config", str(path)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert len(re.findall(r"^trial \d \[worker 0\] .* -> val/bits_per_token", res.stdout, flags=re.MULTILINE)) == 2, out
    for banner in ("GPU available", "TPU available", "Tip:", "Seed set to", "`Trainer.fit` stopped"):
        assert out.count(banner) <= 1, (banner, out[-3000:])
    warnings = [line for line in out.splitlines() if re.match(r"^\S+\.py:\d+: ", line)]
    assert len(warnings) == len(set(warnings)), warnings
    assert "\x1b[" not in out, "no progress bar or colours in a pipe"
