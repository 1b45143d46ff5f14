"""``orderlab study``: config validation names the key, a tiny study end to end, and a killed study resumes without
redoing finished cells or models."""

import csv
import json
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# a tiny backbone and two training steps, appended to the fit config of a study
TINY_FIT = ["--data.num_workers=0", "--data.batch_size=8", "--trainer.max_steps=2", "--trainer.limit_val_batches=1",
            "--trainer.val_check_interval=1", "--trainer.accelerator=cpu", "--trainer.devices=1",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.callbacks=[]",
            "--model.backbone.preset=null", "--model.backbone.depth=1", "--model.backbone.dim=16",
            "--model.backbone.heads=2", "--model.warmup_steps=1"]


def tiny_spec(tmp_path, **over):
    cfg = {
        "name": "tiny", "out": str(tmp_path / "study"),
        "data": {"dataset": "digits", "root": str(tmp_path / "digits"), "prepare": {"limit": 120}},
        "fit": {"config": str(ROOT / "experiments" / "digits" / "base.yaml"),
                "args": TINY_FIT + ["--model.budgets=[8, 4]"]},
        "seeds": [0, 1],
        "arms": {"random": {}, "loc": {"model.train_schedule": "locality", "model.budgets": [8]}},
        "rows": ["random:8", "locality:8"],
        "metrics": ["fcd", "nll_bits_per_token"],
        "evaluate": {"num_samples": 12, "nll_samples": 6, "n_boot": 20, "seed": 0},
        "compare": [{"name": "self", "a": "random:8", "b": "random:8"},
                    {"name": "order", "a": "locality:8", "b": "random:8"},
                    {"name": "recipe", "a": "loc/locality:8", "b": "random/locality:8"},
                    {"name": "did", "a": "locality:8", "b": "random:8", "c": "locality T=8", "d": "random T=8"}],
        "findings": [{"claim": "locality is no worse", "compare": "order", "metric": "fcd", "expect": "no_worse"},
                     {"claim": "with locality training", "compare": "order", "metric": "nll_bits_per_token",
                      "expect": "better", "arm": "loc"}],
    }
    cfg.update(over)
    return cfg


def _spec(cfg):
    from orderlab.study.spec import parse_spec

    return parse_spec(cfg)


@pytest.mark.parametrize("change, key", [
    ({"arm": {}}, "arm: unknown key"),
    ({"seeds": [0, 0]}, "seeds:"),
    ({"rows": ["random:8", "nope:8"]}, "rows[1]:"),
    ({"metrics": ["fdc"]}, "metrics: 'fdc'"),
    ({"evaluate": {"num_samples": 0}}, "evaluate.num_samples"),
    ({"evaluate": {"n_samples": 5}}, "evaluate.n_samples: unknown key"),
    ({"compare": [{"a": "random:8", "b": "random:64"}]}, "compare[0].b: row 'random:64' is not in rows"),
    ({"compare": [{"a": "zz/random:8", "b": "random/random:8"}]}, "compare[0].a: arm 'zz'"),
    ({"findings": [{"claim": "x", "compare": "nope", "expect": "better"}]}, "findings[0].compare"),
    ({"findings": [{"claim": "x", "compare": "self", "expect": "smaller"}]}, "findings[0].expect"),
    ({"findings": [{"claim": "x", "compare": "self", "expect": "same", "arm": "rnd"}]}, "findings[0].arm"),
    ({"data": {"dataset": "digitz", "root": "x"}}, "data.dataset: 'digitz'"),
    ({"data": {"dataset": "digits", "root": "x", "prepare": {"limt": 3}}}, "data.prepare.limt"),
    ({"fit": {"config": "nope.yaml"}}, "fit.config"),
])
def test_config_mistakes_name_the_key(tmp_path, change, key):
    with pytest.raises(ValueError) as err:
        _spec(tiny_spec(tmp_path, **change))
    assert key in str(err.value)
    assert "\n" not in str(err.value)


def test_a_bad_arm_override_fails_before_training(tmp_path):
    from orderlab.study.runner import run_study

    spec = _spec(tiny_spec(tmp_path, arms={"random": {"model.lrr": 0.1}}, compare=[], findings=[]))
    with pytest.raises(ValueError, match=r"arms.random: .*model.lrr"):
        run_study(spec, say=lambda m: None)
    assert not (tmp_path / "study" / "models").exists()


def test_compare_to_full_adds_each_row_against_its_order_at_t_n(tmp_path):
    spec = _spec(tiny_spec(tmp_path, rows=["random:64", "random:8", "locality:64", "locality:8"], compare=[],
                           findings=[], compare_to_full=True))
    assert [(c.row_a, c.row_b) for c in spec.compare] == [("random T=8", "random T=64"),
                                                          ("locality T=8", "locality T=64")]


def test_contrasts_and_rows_by_label(tmp_path):
    spec = _spec(tiny_spec(tmp_path, rows=["random:8", {"schedule": "locality", "steps": 8, "knobs": {"repulsion": 0}}],
                           compare=[{"name": "x", "a": "locality(repulsion=0) T=8", "b": "random:8",
                                     "c": "random:8", "d": "random:8"}], findings=[]))
    assert spec.compare[0].row_a == "locality(repulsion=0) T=8" and spec.compare[0].row_c == "random T=8"
    with pytest.raises(ValueError, match="compare.0.: give every row"):
        _spec(tiny_spec(tmp_path, compare=[{"a": "random:8", "b": "random:8", "c": "loc/random:8",
                                            "d": "loc/random:8"}], findings=[]))


@pytest.mark.parametrize("expect, verdict, reading", [
    ("better", "better", "supported"), ("better", "no detectable difference", "not decided at this N"),
    ("better", "worse", "contradicted at this N"), ("no_worse", "no detectable difference", "consistent"),
    ("no_worse", "worse", "contradicted at this N"), ("lower", "lower", "supported"),
    ("same", "higher", "contradicted at this N"), ("same", "no detectable difference", "consistent"),
])
def test_readings_are_never_stronger_than_the_interval(expect, verdict, reading):
    from orderlab.study.aggregate import reading as read

    assert read(expect, verdict).startswith(reading)


def test_parts_split_the_jobs():
    from orderlab.study.runner import parse_part

    assert parse_part("2/3") == (2, 3)
    for bad in ("0/2", "3/2", "a/b", "1"):
        with pytest.raises(ValueError, match="part="):
            parse_part(bad)


@pytest.mark.slow
def test_tiny_study_end_to_end_and_resume_after_a_kill(tmp_path, monkeypatch):
    from orderlab.study import evaluate as study_eval
    from orderlab.study import runner
    from orderlab.study.runner import run_study

    spec = _spec(tiny_spec(tmp_path))
    calls = {"rows": 0, "fits": 0}
    real_row, real_fit = study_eval.StudyEvaluator.row, runner.build_cli_for_job

    def killed_row(self, row):  # the "kill": the third cell never finishes
        calls["rows"] += 1
        if calls["rows"] == 3:
            raise KeyboardInterrupt
        return real_row(self, row)

    def counted_fit(*a, **k):
        calls["fits"] += 1
        return real_fit(*a, **k)

    monkeypatch.setattr(study_eval.StudyEvaluator, "row", killed_row)
    monkeypatch.setattr(runner, "build_cli_for_job", counted_fit)
    with pytest.raises(KeyboardInterrupt):
        run_study(spec, say=lambda m: None)
    cells = sorted((tmp_path / "study" / "cells").rglob("*.json"))
    assert len(cells) == 2 and calls["fits"] == 2  # models random/0 and random/1 trained; 2 of 8 cells finished
    stamps = {p: p.stat().st_mtime_ns for p in cells}
    assert not list((tmp_path / "study" / "cells").rglob("*.tmp*"))  # nothing half-written

    calls.update(rows=0, fits=0)
    monkeypatch.setattr(study_eval.StudyEvaluator, "row", lambda self, row: (calls.__setitem__(
        "rows", calls["rows"] + 1), real_row(self, row))[1])
    done = run_study(spec, say=lambda m: None)
    assert done["cells"] == 6 and calls["rows"] == 6  # only the unfinished cells
    assert calls["fits"] == 2  # the two models of arm loc; random's were finished
    assert {p: p.stat().st_mtime_ns for p in cells} == stamps  # finished cells untouched

    out = tmp_path / "study"
    with open(out / "summary.csv") as fh:
        summary = list(csv.DictReader(fh))
    assert [(r["arm"], r["row"], r["K"]) for r in summary] == [
        ("random", "random T=8", "2"), ("random", "locality T=8", "2"), ("loc", "random T=8", "2"),
        ("loc", "locality T=8", "2")]
    for r in summary:
        assert float(r["fcd_low"]) <= float(r["fcd"]) <= float(r["fcd_high"])
    with open(out / "comparisons.csv") as fh:
        comps = list(csv.DictReader(fh))
    selfs = [c for c in comps if c["name"] == "self"]
    assert len(selfs) == 4  # 2 arms x 2 metrics
    for c in selfs:  # a row against itself: exactly 0, an interval holding 0, no verdict either way
        assert float(c["diff"]) == 0.0 and float(c["low"]) <= 0.0 <= float(c["high"])
        assert c["verdict"] == "no detectable difference"
    assert {c["arm"] for c in comps if c["name"] == "recipe"} == {""}
    did = {(c["arm"], c["metric"]): c for c in comps if c["name"] == "did"}  # (a - b) - (a - b): exactly 0
    assert float(did[("random", "nll_bits_per_token")]["diff"]) == 0.0
    assert did[("random", "fcd")]["verdict"] == "not available"  # no paired bootstrap of four FDs
    report = (out / "report.md").read_text()
    assert "locality is no worse" in report and "Incomplete" not in report
    assert report.count("locality is no worse") == 2 and report.count("with locality training** (arm loc)") == 1
    assert (out / "plots" / "fcd_vs_steps.png").is_file()
    assert any((out / "tensorboard" / "summary").rglob("events.out.tfevents.*"))
    assert (out / "tensorboard" / "random" / "seed0").is_dir()  # training curves per arm and seed

    # a third run has nothing left to do
    again = run_study(spec, say=lambda m: None)
    assert again["cells"] == 0 and again["trained"] == 0


@pytest.mark.slow
def test_a_changed_config_refuses_to_mix_results(tmp_path):
    from orderlab.study.runner import StaleResultError, run_study

    fit = tmp_path / "fit.yaml"
    fit.write_text((ROOT / "experiments" / "digits" / "base.yaml").read_text())
    cfg = tiny_spec(tmp_path, seeds=[0], arms={"random": {}}, rows=["random:8"], compare=[], findings=[])
    cfg["fit"]["config"] = str(fit)
    run_study(_spec(cfg), say=lambda m: None)
    fit.write_text(fit.read_text() + "# a comment changes no result\n")
    assert run_study(_spec(cfg), say=lambda m: None)["cells"] == 0
    fit.write_text(fit.read_text().replace("lr: 0.001", "lr: 0.002"))
    with pytest.raises(StaleResultError, match="fit_config_content"):
        run_study(_spec(cfg), say=lambda m: None)
    fit.write_text(fit.read_text().replace("lr: 0.002", "lr: 0.001"))
    cfg["arms"] = {"random": {"model.lr": 0.002}}
    with pytest.raises(StaleResultError, match="overrides"):
        run_study(_spec(cfg), say=lambda m: None)


def test_the_cli_names_a_bad_key(tmp_path, capsys):
    from orderlab.cli import main

    cfg = tiny_spec(tmp_path)
    cfg["armz"] = cfg.pop("arms")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as err:
        main(["study", "--config", str(path)])
    assert err.value.code == 2
    line = capsys.readouterr().err.strip()
    assert "armz" in line and len(line.splitlines()) == 1
    assert not os.path.exists(cfg["out"])


def test_every_study_yaml_is_valid(monkeypatch):
    from orderlab.study.spec import load_spec

    monkeypatch.chdir(ROOT)  # the YAMLs name their fit configs relative to the repository root
    for path in sorted((ROOT / "experiments" / "study").glob("*.yaml")):
        spec = load_spec(str(path))
        assert spec.findings, f"{path.name}: a study states the findings it checks"
        json.dumps(spec.evaluate)
