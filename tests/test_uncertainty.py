"""Issue 17's evaluation protocol: every metric of evaluate_row with its interval, paired comparisons of rows, the
real-vs-real floor, the i.i.d. reference, the digits split, and `evaluate --compare`."""

import json

import numpy as np
import pytest
import torch
from helpers import UNKNOWN
from test_cli import fails

from orderlab.analysis.evaluation import evaluate_row, parse_row, write_table
from orderlab.analysis.uncertainty import compare_rows, real_vs_real_floor
from orderlab.commands.evaluate_cmd import parse_compare
from orderlab.metrics import RealImages, classifier_features
from orderlab.metrics.kid_intervals import bootstrap_kid, kid_unbiased, paired_kid_difference

N = 16  # generated = reference images per row: small, the tests check structure, not statistics


@pytest.fixture(scope="module")
def rows(tiny_ckpt, digits_root):
    """Two rows of the tiny model with their items (N images, 20 held-out images for the NLL)."""
    from orderlab.analysis.evaluation import load_eval_data
    from orderlab.train.checkpoint import load_checkpoint

    loaded = load_checkpoint(tiny_ckpt)
    tokens, labels = load_eval_data(digits_root, "val", 20)
    kw = dict(num_samples=N, real=RealImages(digits_root), extractor=classifier_features("digits"), val_tokens=tokens,
              val_labels=labels, seed=3, n_boot=40, keep_items=True)
    return [evaluate_row(loaded, parse_row(r), **kw) for r in ("random:8", "raster:64")]


def test_every_metric_of_a_row_has_its_interval(rows):
    r = rows[0]
    assert r["fcd_low"] <= r["fcd_high"] and r["fcd_low"] >= 0
    assert r["fcd_corrected"] == pytest.approx(r["fcd"] - r["fcd_bias"])  # the interval is around the corrected FCD
    assert r["fcd_low"] <= r["fcd_corrected"] + 1e-9 or r["fcd_low"] == 0
    assert r["kcd_low"] <= r["kcd"] <= r["kcd_high"]
    assert r["nll_low"] <= r["nll_bits_per_token"] <= r["nll_high"] and r["nll_images"] == 20
    assert "B=40" in r["fd_interval_method"] and "precision, recall: no interval" in r["interval_method"]
    items = r["items"]
    assert items["features"].shape == items["real_features"].shape == (N, 64)
    assert items["features"].dtype == items["real_features"].dtype == np.float64
    assert items["nll_bits"].shape == (20,)
    assert items["nll_bits"].mean() == pytest.approx(r["nll_bits_per_token"])
    from orderlab.metrics.intervals import fd_from_features

    assert fd_from_features(items["real_features"], items["features"]) == pytest.approx(r["fcd"], rel=1e-6)
    assert np.array_equal(rows[1]["items"]["real_features"], items["real_features"])  # one reference for all rows


def test_compare_rows_is_paired(rows):
    a, b = rows
    same = compare_rows(a, a, n_boot=30, seed=1)  # a row against itself: exactly 0, and nothing detectable
    for key in ("fcd", "kcd", "nll"):
        assert (same[f"{key}_diff"], same[f"{key}_diff_low"], same[f"{key}_diff_high"]) == (0.0, 0.0, 0.0)
        assert same[f"{key}_verdict"] == "no detectable difference"
    assert (same["n"], same["n_real"], same["a"], same["b"]) == (N, N, "random T=8", "random T=8")
    diff = compare_rows(a, b, n_boot=30, seed=1)
    assert diff["fcd_diff"] == pytest.approx(a["fcd"] - b["fcd"], rel=1e-6, abs=1e-6)
    assert diff["kcd_diff"] == pytest.approx(a["kcd"] - b["kcd"])
    assert diff["nll_diff"] == pytest.approx(a["nll_bits_per_token"] - b["nll_bits_per_token"])
    assert diff["nll_diff_low"] <= diff["nll_diff"] <= diff["nll_diff_high"]
    assert {diff[f"{k}_verdict"] for k in ("fcd", "kcd", "nll")} <= {"better", "worse", "no detectable difference"}
    with pytest.raises(ValueError, match="keep_items=True"):
        compare_rows({k: v for k, v in a.items() if k != "items"}, b)
    other = {**b, "items": {**b["items"], "real_features": b["items"]["real_features"] + 1}}
    with pytest.raises(ValueError, match="different reference sets"):
        compare_rows(a, other)
    with pytest.raises(ValueError, match="not paired"):
        compare_rows(a, {**b, "seed": 4})


def test_items_never_reach_the_tables(rows, tmp_path):
    paths = write_table(rows, str(tmp_path))
    assert all("items" in r for r in rows)  # the caller's dicts keep them
    for path in paths.values():
        assert "items" not in open(path).read() and "real_features" not in open(path).read()
    saved = json.loads(open(paths["json"]).read())["rows"][0]
    assert {"fcd_low", "fcd_high", "fcd_bias", "kcd_low", "kcd_high", "nll_low", "nll_high"} <= set(saved)
    md = open(paths["md"]).read()
    assert "| fcd | fcd_corrected [95% interval] | kcd [95% interval] |" in md


def test_write_table_shows_value_and_interval(tmp_path):
    rows = [dict(row="x", fcd=12.3456, fcd_corrected=10.0, fcd_low=8.0, fcd_high=12.5, nll_bits_per_token=1.95312,
                 nll_low=1.9402, nll_high=1.9671)]
    md = open(write_table(rows, str(tmp_path))["md"]).read()
    assert "| x | 12.35 | 10.00 [8.00, 12.50] | 1.953 [1.940, 1.967] |" in md  # 3 decimals: the interval is narrow


def test_kid_bootstrap_matches_torchmetrics_and_is_paired():
    from torchmetrics.image.kid import poly_mmd

    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(60, 5)), rng.normal(size=(60, 5)) * 1.3
    want = float(poly_mmd(torch.from_numpy(real / 2), torch.from_numpy(fake / 2)))
    assert kid_unbiased(real, fake, kid_scale=2.0) == pytest.approx(want, rel=1e-10)
    iv = bootstrap_kid(real, fake, kid_scale=2.0, n_boot=50, seed=0)
    assert iv.low <= iv.estimate <= iv.high and iv.estimate == pytest.approx(want) and iv.n_boot == 50
    assert bootstrap_kid(real, fake, kid_scale=2.0, estimate=0.5, n_boot=50, seed=0).estimate == 0.5
    same = paired_kid_difference(real, fake, fake, n_boot=50, seed=0)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    d = paired_kid_difference(real, fake, real[::-1].copy(), n_boot=50, seed=0)
    assert d.estimate == pytest.approx(kid_unbiased(real, fake) - kid_unbiased(real, real[::-1].copy()))


def test_the_reference_is_a_seeded_uniform_sample(digits_root):
    val = RealImages(digits_root, "val")
    assert list(val.indices(898)) == list(range(898))  # the whole split
    few = val.indices(100)
    assert len(set(few.tolist())) == 100 and few.max() > 800  # spread over the split, not its first 100
    assert set(few.tolist()) <= set(val.indices(300).tolist())  # nested: a smaller N takes a subset
    assert "uniform" in val.key()["sample"]


def test_real_vs_real_floor(digits_root):
    floor = real_vs_real_floor(digits_root, "val", classifier_features("digits"), 100, n_pairs=10)
    assert (floor["n"], floor["pool"], floor["other_split"], floor["n_pairs"]) == (100, 200, "train", 10)
    assert floor["fd"] > 0 and 0 < floor["low"] <= floor["mean"] <= floor["high"]
    assert real_vs_real_floor(digits_root, "train", classifier_features("digits"), 899) is None  # val has 898


def test_digits_split_holds_out_half():
    from orderlab.data.datasets import DATASETS, PrepareOptions

    prep = DATASETS.get("digits")(PrepareOptions(progress=False), "")
    assert {s: len(t) for s, (t, _) in prep.splits.items()} == {"train": 899, "val": 898}
    assert prep.source["split"].startswith("seeded random split, val_fraction=0.5, seed=0")
    other = DATASETS.get("digits")(PrepareOptions(val_fraction=0.2, progress=False), "")
    assert {s: len(t) for s, (t, _) in other.splits.items()} == {"train": 1438, "val": 359}


def test_demo_re_prepares_a_folder_of_the_old_split(digits_root, tmp_path):
    import shutil

    from orderlab.commands.demo_cmd import DEMO_DATA_SEED, _dataset_ok
    from orderlab.data.datasets import PrepareOptions

    opts = PrepareOptions(seed=DEMO_DATA_SEED, progress=False)
    assert _dataset_ok(digits_root, opts)
    old = tmp_path / "digits"
    shutil.copytree(digits_root, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["source"]["split"] = "seeded random split, val_fraction=0.15, seed=0"  # what the 270-image split said
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert not _dataset_ok(str(old), opts)


def test_evaluate_cmd_default_n_boot_is_the_library_default():
    from orderlab.analysis import uncertainty
    from orderlab.commands import evaluate_cmd

    assert evaluate_cmd.DEFAULT_N_BOOT == uncertainty.DEFAULT_N_BOOT


def test_parse_compare():
    rows = [parse_row(r) for r in ("random:8", "locality:8", "diagonal")]
    assert parse_compare(["locality:8 vs random:8", "diagonal VS random T=8", ["random:8", "diagonal"]], rows) == \
        [(1, 0), (2, 0), (0, 2)]
    assert parse_compare(None, rows) == []
    for bad, word in (("locality:4 vs random:8", "'locality:4'"), ("random:8 vs", "ROW vs ROW"),
                      (f"{UNKNOWN}:8 vs random:8", f"'{UNKNOWN}:8'")):
        with pytest.raises(ValueError, match=word):
            parse_compare([bad], rows)


def test_evaluate_compare(tiny_ckpt, tmp_path, capsys):
    from orderlab.cli import main

    out = tmp_path / "ev"
    main(["evaluate", "--ckpt", tiny_ckpt, "--rows", "[random:8, locality:8]", "--out", str(out), "--num_samples",
          str(N), "--nll_samples", "20", "--n_boot", "30", "--compare", '["locality:8 vs random:8"]'])
    said = capsys.readouterr().out
    assert f"N={N} vs {N}" in said and "real-vs-real floor: FCD" in said and "locality T=8 vs random T=8: FCD" in said
    comp = json.loads((out / "comparisons.json").read_text())
    (c,) = comp["rows"]
    assert (c["a"], c["b"], c["n"]) == ("locality T=8", "random T=8", N)
    assert c["fcd_verdict"] in ("better", "worse", "no detectable difference") and "paired" in comp["meta"]["method"]
    assert "| locality T=8 | random T=8 |" in (out / "comparisons.md").read_text()
    assert "fcd_diff_low" in (out / "comparisons.csv").read_text().splitlines()[0]
    res = json.loads((out / "results.json").read_text())
    assert "B=30" in res["meta"]["fcd interval"] and all("items" not in r for r in res["rows"])
    # a compare entry naming no row fails before any sampling, naming it, and leaves no folder behind
    bad = tmp_path / "bad"
    fails(["evaluate", "--ckpt", tiny_ckpt, "--rows", "[random:8]", "--out", bad, "--compare",
           '["random:8 vs locality:8"]'], capsys, "'locality:8'", "compare entry")
    fails(["evaluate", "--ckpt", tiny_ckpt, "--rows", "[random:8]", "--out", bad, "--n_boot", "1"], capsys, "n_boot")
    assert not bad.exists()


def test_prepare_sees_an_old_split_folder_as_another_preparation(digits_root, tmp_path):
    """A folder prepared with the old 15 % split is not "the same preparation" as today's default."""
    from orderlab.data.datasets import PrepareOptions, existing_preparation, prepare_dataset

    old = str(tmp_path / "old")
    prepare_dataset("digits", old, PrepareOptions(val_fraction=0.15, progress=False))
    manifest, why = existing_preparation("digits", old, PrepareOptions())
    assert manifest is None and "val_fraction=0.15 there, 0.5 asked" in why
    assert existing_preparation("digits", old, PrepareOptions(val_fraction=0.15))[0] is not None
    assert existing_preparation("digits", digits_root, PrepareOptions(val_fraction=0.5))[0] is not None


def test_the_gap_to_an_exact_value_compares_as_the_metric_itself():
    """nll_gap (NLL - exact entropy) and energy_bias (energy - exact) are study metrics: a paired difference of
    either is the difference of NLL or energy, per held-out grid or sample (the constant cancels)."""
    from orderlab.analysis.uncertainty import METRIC_DIRECTION, metric_verdict, paired_metric

    rng = np.random.default_rng(0)
    base = rng.normal(0.6, 0.1, 200)
    ia, ib = {"nll_bits": base + 0.01, "energy": base}, {"nll_bits": base, "energy": base + 0.3}
    for gap, metric in (("nll_gap", "nll_bits_per_token"), ("energy_bias", "energy")):
        d, ref = paired_metric(ia, ib, gap), paired_metric(ia, ib, metric)
        assert d is not None and (d.estimate, d.low, d.high) == (ref.estimate, ref.low, ref.high)
        assert METRIC_DIRECTION[gap] == METRIC_DIRECTION[metric]
    assert metric_verdict(paired_metric(ia, ib, "nll_gap"), "nll_gap") == "worse"
    assert metric_verdict(paired_metric(ia, ib, "energy_bias"), "energy_bias") == "lower"
