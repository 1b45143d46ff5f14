"""The demo end to end with a tiny budget, and the evaluate/sample commands with their errors."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from orderlab.cli import main
from orderlab.commands.report import findings
from orderlab.commands.sample_cmd import parse_region
from orderlab.evaluation import parse_row

ROOT = Path(__file__).resolve().parents[1]


def test_demo_tiny_end_to_end(digits_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo"
    cfg = tmp_path / "tiny.yaml"
    base = (ROOT / "experiments" / "digits" / "base.yaml").read_text()
    cfg.write_text(base.replace("depth: 4", "depth: 1").replace("dim: 128", "dim: 16").replace("heads: 4", "heads: 2"))
    main(["demo", "--out", str(out), "--data", digits_root, "--config", str(cfg), "--max_steps", "3",
          "--rows", "[random:64, random:8, locality:8]", "--num_samples", "16"])
    text = (out / "report.md").read_text()
    for piece in ("FCD", "NOT comparable", "random T=8", "locality T=8", "fcd_vs_steps.png", "samples.png",
                  "Noise floor", "N/8 = 8 steps"):
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
    # a second run resumes from last.ckpt instead of training again from zero
    main(["demo", "--out", str(out), "--data", digits_root, "--config", str(cfg), "--max_steps", "4",
          "--rows", "[random:8]", "--num_samples", "16"])
    assert "resuming from last.ckpt" in capsys.readouterr().out


def test_findings_state_whether_the_anchor_claims_hold():
    rows = [dict(schedule="random", forward_passes=64, fcd=10.0), dict(schedule="random", forward_passes=8, fcd=11.0),
            dict(schedule="locality", forward_passes=8, fcd=12.0)]
    lines = findings(rows, 64)
    assert "finding holds" in lines[0] and "does NOT hold" in lines[1]
    rows[1]["fcd"] = 20.0
    rows[2]["fcd"] = 19.0
    lines = findings(rows, 64)
    assert "does NOT hold" in lines[0] and "holds here" in lines[1] and "NOT" not in lines[1]


def test_rows_parse_and_fail_clearly():
    assert parse_row("locality:8").steps == 8 and parse_row("diagonal").steps is None
    assert parse_row({"schedule": "locality", "steps": 4, "knobs": {"repulsion": 1}}).knobs == {"repulsion": 1}
    with pytest.raises(KeyError, match="spiral"):
        parse_row("spiral:8")
    with pytest.raises(ValueError, match="locality:x"):
        parse_row("locality:x")
    with pytest.raises(ValueError, match="stepz"):
        parse_row({"schedule": "random", "stepz": 3})
    with pytest.raises(TypeError, match="bogus"):
        parse_row({"schedule": "random", "knobs": {"bogus": 1}})


def test_evaluate_and_sample_commands(tiny_ckpt, digits_root, tmp_path, capsys):
    main(["evaluate", "--ckpt", tiny_ckpt, "--rows", "[raster:64, random:8]", "--out", str(tmp_path / "ev"),
          "--num_samples", "12", "--nll_samples", "20"])
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert [r["forward_passes"] for r in res["rows"]] == [64, 8]
    assert res["meta"]["num_samples (real = generated)"] == 12
    assert all(r["nll_bits_per_token"] > 0 for r in res["rows"])
    md = (tmp_path / "ev" / "results.md").read_text()
    assert "| raster T=64 | 64 |" in md and len(list((tmp_path / "ev").glob("grid_*.png"))) == 2
    # sampling, then inpainting the bottom half of the first sample: the top half comes back unchanged
    main(["sample", "--ckpt", tiny_ckpt, "--schedule", "locality", "--steps", "8", "--num", "4",
          "--out", str(tmp_path / "s.png"), "--cfg", "2.0"])
    first = np.load(tmp_path / "s.npy")
    main(["sample", "--ckpt", tiny_ckpt, "--known", str(tmp_path / "s.npy"), "--region", "rows=4:8", "--num", "3",
          "--out", str(tmp_path / "inp.png")])
    inp = np.load(tmp_path / "inp.npy")
    assert (inp[:, :4] == first[0, :4]).all()
    capsys.readouterr()
    # a raster model's Jacobi decoding from the command line, with its knobs; greedy SJD equals greedy raster
    main(["sample", "--ckpt", tiny_ckpt, "--schedule", "raster", "--num", "2", "--temperature", "0", "--out",
          str(tmp_path / "ar.png")])
    main(["sample", "--ckpt", tiny_ckpt, "--schedule", "raster", "--num", "2", "--temperature", "0", "--out",
          str(tmp_path / "sjd.png"), "--decoder", "sjd", "--decoder_args", "{window: 4}"])
    assert "decoder sjd" in capsys.readouterr().out
    assert (np.load(tmp_path / "sjd.npy") == np.load(tmp_path / "ar.npy")).all()
    for bad, word in ((["--region", "rows=4:9", "--known", str(tmp_path / "s.npy")], "rows=4:9"),
                      (["--schedule", "spiral"], "spiral"), (["--steps", "65"], "65"), (["--label", "10"], "10"),
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
