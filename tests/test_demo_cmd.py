"""The demo end to end with a tiny budget, and the evaluate/sample commands with their errors."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import UNKNOWN

from orderlab.analysis.evaluation import parse_row
from orderlab.cli import main
from orderlab.commands.report import findings
from orderlab.commands.sample_cmd import parse_region

ROOT = Path(__file__).resolve().parents[1]


def tiny_experiment(tmp_path) -> Path:
    """experiments/digits/base.yaml with a tiny backbone."""
    cfg = tmp_path / "tiny.yaml"
    base = (ROOT / "experiments" / "digits" / "base.yaml").read_text()
    cfg.write_text(base.replace("depth: 4", "depth: 1").replace("dim: 128", "dim: 16").replace("heads: 4", "heads: 2"))
    return cfg


def ckpt_step(path) -> int:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


@pytest.mark.slow
def test_demo_tiny_end_to_end(digits_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo"
    cfg = tiny_experiment(tmp_path)
    main(["demo", "--out", str(out), "--data", digits_root, "--experiment", str(cfg), "--max_steps", "3",
          "--rows", "[random:64, random:8, locality:8]", "--num_samples", "16", "--threads", "1"])
    text = (out / "report.md").read_text()
    for piece in ("FCD", "NOT comparable", "random T=8", "locality T=8", "fcd_vs_steps.png", "samples.png",
                  "Real-vs-real floor: FCD", "N/8 = 8 steps", "Training: **3 of 3 steps**", "with 1 torch thread(s)",
                  "**N = 16**", "two-sample bootstrap", "95 % paired bootstrap, N=16", "[95% interval]"):
        assert piece in text, piece
    for f in ("results.csv", "results.json", "fcd_vs_steps.png", "samples.png", "checkpoints/last.ckpt"):
        assert (out / f).is_file(), f
    events = list((out / "tensorboard").rglob("events.out.tfevents*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams"), "no HParams entry"
    assert "hp_metric" in acc.Tags()["scalars"] and acc.Scalars("hp_metric")[-1].value > 0  # val bits/token
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["forward_passes"] for r in rows] == [64, 8, 8]
    assert all(np.isfinite(r["fcd"]) and r["num_samples"] == 16 for r in rows)
    assert all(r["fcd_low"] <= r["fcd_high"] and "items" not in r for r in rows)
    # a second run resumes from last.ckpt instead of training again from zero
    main(["demo", "--out", str(out), "--data", digits_root, "--experiment", str(cfg), "--max_steps", "4",
          "--rows", "[random:8]", "--num_samples", "16"])
    assert "resuming from last.ckpt at step 3" in capsys.readouterr().out
    assert "Training: **4 of 4 steps**, resumed at step 3" in (out / "report.md").read_text()


@pytest.mark.slow
def test_demo_stopped_short_says_so_exits_1_and_a_rerun_finishes(digits_root, tmp_path, capsys):
    """A time limit that stops training early: the run says so, every verdict is 'not meaningful', the command exits
    1 after writing the report; the rerun continues from last.ckpt to max_steps."""
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--data", digits_root, "--experiment", str(tiny_experiment(tmp_path)),
            "--max_steps", "4", "--rows", "[random:64, random:8, locality:8]", "--num_samples", "16",
            "--callbacks", "false", "--threads", "1"]
    with pytest.raises(SystemExit) as err:
        main([*args, "--time_limit", "0"])  # the guard stops training after its first step
    assert err.value.code == 1
    io = capsys.readouterr()
    assert "TRAINING STOPPED SHORT: 1 of 4 steps" in io.err and "NOT FINISHED" in io.err
    text = (out / "report.md").read_text()  # written before the exit
    assert "WARNING: training stopped short: 1 of 4 steps" in text and "Training: **1 of 4 steps**" in text
    verdicts = [line for line in text.splitlines() if line.startswith("- ") and " -> " in line]
    assert len(verdicts) == 2, verdicts
    assert all(line.endswith("not meaningful (trained 1 of 4 steps).") for line in verdicts), verdicts
    assert not any("holds" in line or "does NOT hold" in line for line in verdicts)
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt_step(ckpt) == 1  # saved where the guard stopped, not at the last periodic checkpoint
    import torch

    states = torch.load(ckpt, map_location="cpu", weights_only=False).get("callbacks", {})
    assert not any("Timer" in k or "TimeLimit" in k for k in states), "no elapsed time is carried to the rerun"
    # the rerun: the guard is per run, so training continues from step 1 to max_steps and the verdicts stand
    main(args)
    assert "resuming from last.ckpt at step 1" in capsys.readouterr().out
    assert ckpt_step(ckpt) == 4
    text = (out / "report.md").read_text()
    assert "Training: **4 of 4 steps**, resumed at step 1" in text
    assert "not meaningful" not in text and "WARNING" not in text
    verdicts = [line for line in text.splitlines() if line.startswith("- ") and " -> " in line]
    assert len(verdicts) == 2 and all(any(w in line for w in ("-> better", "-> worse", "-> no detectable difference"))
                                      for line in verdicts), verdicts


def test_default_threads_follow_the_openmp_wait_policy(monkeypatch):
    from orderlab.commands.demo_cmd import default_threads

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert default_threads() == 1  # spinning idle threads: 2 threads collapse next to other CPU-bound work
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # what `make demo` sets
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_threads() == 2
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert default_threads() == 1


def test_fit_config_replaces_max_time_with_a_per_run_guard(tmp_path):
    import yaml

    from orderlab.commands.demo_cmd import fit_config

    cfg = tmp_path / "x.yaml"
    cfg.write_text(yaml.safe_dump({"trainer": {"max_steps": 9, "max_time": "00:00:05:30", "callbacks": [
        {"class_path": "orderlab.train.callbacks.TimeLimit", "init_args": {"minutes": 3}},
        {"class_path": "lightning.pytorch.callbacks.Timer", "init_args": {"duration": "00:00:01:00"}}]}}))
    for limit in (2.5, None):
        path = fit_config(str(cfg), str(tmp_path / "o"), "d", None, time_limit=limit)
        tr = yaml.safe_load(Path(path).read_text())["trainer"]
        guards = [c for c in tr["callbacks"] if c["class_path"].endswith(("TimeLimit", "Timer"))]
        assert "max_time" not in tr
        assert guards == ([{"class_path": "orderlab.train.callbacks.TimeLimit", "init_args": {"minutes": 2.5}}]
                          if limit else [])


def _row(schedule, passes, features, real):
    """A result of evaluate_row(keep_items=True) built from features: enough for findings()."""
    from orderlab.metrics.intervals import fd_from_features

    return dict(schedule=schedule, forward_passes=passes, row=f"{schedule} T={passes}",
                fcd=fd_from_features(real, features), items={"features": features, "real_features": real})


def test_findings_read_paired_differences_and_never_call_noise_a_refutation():
    rng = np.random.default_rng(0)
    real, same = rng.normal(size=(200, 4)), rng.normal(size=(200, 4))
    rows = [_row("random", 64, same, real), _row("random", 8, same, real),  # the same samples: difference 0
            _row("locality", 8, same + 1.5, real)]  # far off: worse beyond the noise
    lines = findings(rows, 64, n_boot=50)
    assert len(lines) == 2 and all(" -> " in line for line in lines)
    assert "difference 0.0000 [0.0000, 0.0000]" in lines[0] and "-> no detectable difference at this N" in lines[0]
    assert "consistent with the ARPG/LPD finding" in lines[0]
    assert "-> worse (the interval excludes 0)" in lines[1] and "does not hold here" in lines[1]
    assert not any("refuted" in line or "NOT" in line for line in lines)
    assert findings(rows, 64, trained=(400, 400), n_boot=50) == lines
    short = findings(rows, 64, trained=(67, 400), n_boot=50)  # an under-trained model: no verdict either way
    assert len(short) == 2 and all(line.endswith("not meaningful (trained 67 of 400 steps).") for line in short)
    assert not any(w in line for line in short for w in ("-> better", "-> worse", "no detectable", "hold"))
    rows[2] = _row("locality", 8, same, real)  # locality = random: no detectable difference, no verdict on LPD
    line = findings(rows, 64, n_boot=50)[1]
    assert "no detectable difference at this N: this run neither supports nor contradicts LPD's finding" in line
    rows[1] = _row("random", 8, same + 1.5, real)  # random T=8 far off: N/8 worse, locality better than it
    a, b = findings(rows, 64, n_boot=50)
    assert "-> worse at N/8" in a and "does not hold at this N" in a
    assert "-> better: consistent with LPD's finding" in b
    del rows[0]["items"]  # no per-sample features: the numbers, but no verdict
    assert "no paired interval" in findings(rows, 64, n_boot=50)[0] and "no verdict" in findings(rows, 64)[0]


def test_rows_parse_and_fail_clearly():
    assert parse_row("locality:8").steps == 8 and parse_row("diagonal").steps is None
    assert parse_row({"schedule": "locality", "steps": 4, "knobs": {"repulsion": 1}}).knobs == {"repulsion": 1}
    with pytest.raises(KeyError, match=UNKNOWN):
        parse_row(f"{UNKNOWN}:8")
    with pytest.raises(ValueError, match="locality:x"):
        parse_row("locality:x")
    with pytest.raises(ValueError, match="stepz"):
        parse_row({"schedule": "random", "stepz": 3})
    with pytest.raises(ValueError, match="bogus"):  # bad input like the rest: the CLI prints it in one line
        parse_row({"schedule": "random", "knobs": {"bogus": 1}})


def test_evaluate_and_sample_commands(tiny_ckpt, digits_root, tmp_path, capsys):
    main(["evaluate", "--ckpt", tiny_ckpt, "--rows", "[raster:64, random:8]", "--out", str(tmp_path / "ev"),
          "--num_samples", "12", "--nll_samples", "20"])
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert [r["forward_passes"] for r in res["rows"]] == [64, 8]
    assert res["meta"]["num_samples (real = generated)"] == 12
    assert all(r["nll_bits_per_token"] > 0 for r in res["rows"])
    assert all(r["fcd_low"] <= r["fcd_high"] and r["nll_low"] <= r["nll_bits_per_token"] <= r["nll_high"]
               for r in res["rows"])  # every number with its interval (more in tests/test_uncertainty.py)
    assert "B=500" in res["meta"]["fcd interval"] and "N=12" in res["meta"]["real-vs-real floor (FCD)"]
    md = (tmp_path / "ev" / "results.md").read_text()
    assert "| raster T=64 | 64 |" in md and len(list((tmp_path / "ev").glob("grid_*.png"))) == 2
    assert "| fcd_corrected [95% interval] |" in md and "(N=12 vs 12)" not in md
    # sampling, then inpainting the bottom half of each sample: its top half comes back unchanged
    main(["sample", "--ckpt", tiny_ckpt, "--schedule", "locality", "--steps", "8", "--num", "4",
          "--out", str(tmp_path / "s.png"), "--cfg", "2.0"])
    said = capsys.readouterr().out
    assert f"wrote {tmp_path / 's.npy'}: the sampled tokens" in said  # the .npy beside the PNG is announced
    first = np.load(tmp_path / "s.npy")
    main(["sample", "--ckpt", tiny_ckpt, "--known", str(tmp_path / "s.npy"), "--region", "rows=4:8",
          "--out", str(tmp_path / "inp.png")])
    inp = np.load(tmp_path / "inp.npy")
    assert inp.shape == (4, 8, 8) and (inp[:, :4] == first[:, :4]).all()  # more in tests/test_sample_cmd.py
    capsys.readouterr()
    # a raster model's Jacobi decoding from the command line, with its knobs; greedy SJD equals greedy raster
    main(["sample", "--ckpt", tiny_ckpt, "--schedule", "raster", "--num", "2", "--temperature", "0", "--out",
          str(tmp_path / "ar.png")])
    main(["sample", "--ckpt", tiny_ckpt, "--schedule", "raster", "--num", "2", "--temperature", "0", "--out",
          str(tmp_path / "sjd.png"), "--decoder", "sjd", "--decoder_args", "{window: 4}"])
    assert "decoder sjd" in capsys.readouterr().out
    assert (np.load(tmp_path / "sjd.npy") == np.load(tmp_path / "ar.npy")).all()
    for bad, word in ((["--region", "rows=4:9", "--known", str(tmp_path / "s.npy")], "rows=4:9"),
                      (["--schedule", UNKNOWN], UNKNOWN), (["--steps", "65"], "65"), (["--label", "10"], "10"),
                      (["--decoder_args", "{window: 4}"], "decoder_args"),
                      (["--decoder", "sjd", "--schedule", "raster", "--decoder_args", "{windw: 4}"], "windw")):
        with pytest.raises(SystemExit):
            main(["sample", "--ckpt", tiny_ckpt, "--out", str(tmp_path / "bad.png"), *bad])
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert word in line, line
    assert not (tmp_path / "bad.png").exists()


def test_parse_region():
    assert parse_region("rows=4:8", 8, 8)[4:].all() and not parse_region("rows=4:8", 8, 8)[:4].any()
    m = parse_region("outside=2:6,2:6", 8, 8)
    assert not m[2:6, 2:6].any() and m.sum() == 64 - 16
    with pytest.raises(ValueError, match="whole grid"):
        parse_region("rows=0:8", 8, 8)
