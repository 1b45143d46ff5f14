"""The benchmarks write their JSON and Markdown with one row per (arch, grid, batch, budget); structure only, no
timing asserts."""

import json
import math

import pytest
import torch
from orderlab.schedules.locality import natural_locality_steps

from orderlab.analysis.bench_grid import loglog_slope
from orderlab.analysis.bench_train import CAUSAL, GOALS, CausalLM
from orderlab.commands.bench_cmd import BENCHMARKS, bench
from orderlab.model.config import ModelConfig
from orderlab.model.registry import build_model

TINY = dict(depth=2, dim=16, heads=2, vocab=11, repeats=1)


@pytest.mark.slow
def test_bench_decode_writes_rows(tmp_path):
    bench("decode", out=str(tmp_path), grid=4, depth=4, dim=16, heads=2, vocab=11, batches=(1, 3), repeats=1,
          archs=("stream", "decoupled"))
    data = json.loads((tmp_path / "bench.json").read_text())
    rows = data["rows"]
    assert len(rows) == 2 * 2 * 4  # 2 archs x 2 batches x (T = N, N/4, N/8, N/16)
    assert [r["steps"] for r in rows[:4]] == [16, 4, 2, 1]
    assert all(r["passes"] == r["steps"] for r in rows)
    assert all(r["seconds"] > 0 and r["kv_cache_MiB"] > 0 for r in rows)
    stream = next(r for r in rows if r["arch"] == "stream" and r["batch"] == 3)
    dec = next(r for r in rows if r["arch"] == "decoupled" and r["batch"] == 3)
    assert dec["kv_cache_MiB"] < stream["kv_cache_MiB"]  # ARPG's shared K/V is the memory-lean variant
    md = (tmp_path / "bench.md").read_text()
    assert md.count("\n| stream |") == 8 and "speedup_vs_T_N" in md
    # the ratios are computed from this run's rows, and the table shows them
    q = {(r["what"], r["arch"], r["batch"]): r for r in data["ratios"]}
    base = {(r["arch"], r["batch"]): r["seconds"] for r in rows if r["steps"] == 16}
    for (arch, batch), t_n in base.items():
        t8 = next(r["seconds"] for r in rows if (r["arch"], r["batch"], r["steps"]) == (arch, batch, 2))
        got = q[("time(T=N)/time(T=N/8)", arch, batch)]
        assert got["value"] == round(t_n / t8, 2) and got["ideal"] == 8
    kv = q[("KV cache decoupled/stream", "decoupled", 3)]["value"]
    assert kv == round(dec["kv_cache_MiB"] / stream["kv_cache_MiB"], 3) and kv < 1
    assert "| time(T=N)/time(T=N/8) | stream | 1 |" in md and "KV cache decoupled/stream" in md


@pytest.mark.slow
def test_peak_memory_is_measured():
    """Each row's peak covers at least its own KV cache (about 134 MiB here), and a tiny row's stays far below."""
    import orderlab.commands.bench_cmd as bc
    from orderlab.model.config import ModelConfig
    from orderlab.model.registry import build_model

    big = build_model(ModelConfig(vocab_size=16, height=16, width=16, num_classes=1, depth=4, dim=256, heads=4))
    row = bc._isolated(big, "random", 4, 64, 1, "cpu", None, "fp32")
    assert row["kv_cache_MiB"] > 120 and row["peak_MiB"] >= 0.9 * row["kv_cache_MiB"], row
    small = build_model(ModelConfig(vocab_size=16, height=4, width=4, num_classes=1, depth=1, dim=16, heads=2))
    tiny = bc._isolated(small, "random", 4, 2, 1, "cpu", None, "fp32")
    assert tiny["peak_MiB"] < 0.25 * row["peak_MiB"], (tiny, row)


def test_a_parent_with_a_busy_thread_pool_does_not_hang_the_rows(tiny_ckpt):
    """Regression: rows forked from a process that had used OpenMP threads deadlocked in their first matmul."""
    import orderlab.commands.bench_cmd as bc
    from orderlab.train.checkpoint import load_checkpoint

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = load_checkpoint(tiny_ckpt).model
        torch.ones(512, 512) @ torch.ones(512, 512)  # the parent's pool is up
        row = bc._isolated(model, "raster", 64, 1, 1, "cpu", None, "fp32")
    finally:
        torch.set_num_threads(before)
    assert row["passes"] == 64


@pytest.mark.slow
def test_bench_checkpoint_adds_jacobi_rows(tiny_ckpt, tmp_path):
    bench("decode", out=str(tmp_path), ckpt=tiny_ckpt, batches=(1,), repeats=1)
    data = json.loads((tmp_path / "bench.json").read_text())
    jac = [r for r in data["rows"] if r["decoder"] != "plan"]
    assert [r["decoder"] for r in jac] == ["sjd", "pjd"]
    assert all(1 <= r["passes"] <= 64 and r["accepted_per_pass"] >= 1 for r in jac)
    whats = [q["what"] for q in data["ratios"]]
    assert "time(raster)/time(sjd)" in whats and "time(raster)/time(pjd)" in whats


def test_bench_unknown_benchmark(tmp_path):
    with pytest.raises(ValueError, match="'encode'"):
        bench("encode", out=str(tmp_path))


def test_benchmark_kinds_are_a_table():
    assert set(BENCHMARKS) == {"decode", "train", "plan"}
    with pytest.raises(ValueError, match=r"'encode'.*\['decode', 'plan', 'train'\]"):
        bench("encode")


@pytest.mark.slow
def test_bench_decode_over_grids_fits_the_growth(tmp_path):
    bench("decode", out=str(tmp_path), grids=[4, 8], batches=(1, 2), archs=("stream", "decoupled"), **TINY)
    data = json.loads((tmp_path / "bench.json").read_text())
    rows, fits = data["rows"], data["fits"]
    assert len(rows) == 2 * 2 * 2 * 2  # 2 grids x 2 archs x 2 batches x (T = N, N/8)
    assert [(r["grid"], r["rule"], r["steps"]) for r in rows[:2]] == [(4, "N", 16), (4, "N/8", 2)]
    assert {(r["grid"], r["N"]) for r in rows} == {(4, 16), (8, 64)}
    assert data["meta"]["grids"] == [4, 8] and data["meta"]["memory_bandwidth"]["bytes_per_s"] > 0
    for r in rows:
        assert r["seconds_per_image"] > 0 and r["weight_MiB"] > 0 and 0 < r["kv_read_MiB"] <= r["kv_cache_MiB"]
        assert r["step_ms"] > 0 and r["bound_ms"] > 0
        # x_bound is rounded to 0.1, step_ms and bound_ms to 3 decimals and 4 significant digits
        assert r["x_bound"] == pytest.approx(r["step_ms"] / r["bound_ms"], rel=0.01, abs=0.051)
    # one fit per (arch, batch, T rule) and quantity, from this run's own rows
    assert len(fits) == 2 * 2 * 2 * 3
    for f in fits:
        rs = [r for r in rows if (r["arch"], r["batch"], r["rule"]) == (f["arch"], f["batch"], f["T"])]
        want = loglog_slope([r["N"] for r in rs], [r[f["field"]] for r in rs])
        assert f["N"] == [16, 64] and f["exponent"] == (None if want is None else round(want, 3))
        if f["field"] != "peak_MiB":  # a CPU peak this small may read 0 (then None)
            assert math.isfinite(f["exponent"])
        if f["field"] == "kv_cache_MiB":
            assert 0.7 < f["exponent"] < 1.3  # the cache holds C + N entries
    q = {(r["what"], r["arch"], r["batch"], r["grid"]) for r in data["ratios"]}
    assert ("time(T=N)/time(T=N/8)", "stream", 2, 8) in q and ("KV cache decoupled/stream", "decoupled", 1, 4) in q
    md = (tmp_path / "bench.md").read_text()
    assert "grids 4x4, 8x8" in md and "Memory-bandwidth bound" in md and "x_bound" in md
    assert "| exponent of N: time per image | KV cache | peak memory |" in md
    assert md.count("\n| stream | 1 | N/8 |") == 1  # the fit table's row


@pytest.mark.slow
def test_bench_train_rows_ratios_and_profile(tmp_path):
    bench("train", out=str(tmp_path), grids=[4], batches=(2,), archs=("stream", "decoupled"), **TINY)
    data = json.loads((tmp_path / "bench_train.json").read_text())
    rows = data["rows"]
    # the causal LM once; every backbone on each training schedule's plans (random first, then locality)
    assert [(r["arch"], r["schedule"]) for r in rows] == [(CAUSAL, None), ("stream", "random"),
                                                          ("stream", "locality"), ("decoupled", "random"),
                                                          ("decoupled", "locality")]
    assert all(r["grid"] == 4 and r["N"] == 16 and r["batch"] == 2 for r in rows)
    assert all(r["seconds"] > 0 and r["tokens_per_s"] > 0 and r["params"] > 0 for r in rows)
    causal, stream, stream_loc, dec, dec_loc = rows
    assert causal["steps"] is None and causal["rows"] == 16 and stream["steps"] == dec["steps"] == 4  # T = N/4
    assert stream["rows"] > 16  # content and query rows
    assert stream["params"] - causal["params"] == 16  # the [MASK] embedding: same blocks, same width
    # the ratios are the run's own rows: against the causal LM (random plans), with the goals ...
    q = {(r["what"], r["arch"]): r for r in data["ratios"]}
    for r in (stream, dec):
        got = q[(f"tokens/s {r['arch']}/{CAUSAL}", r["arch"])]
        assert got["value"] == round(r["tokens_per_s"] / causal["tokens_per_s"], 3)
        assert got["goal"] == GOALS[r["arch"]] and got["met"] == (got["value"] >= got["goal"])
    # ... and locality's step time against random's, planning included (goal <= 1.2)
    for r, loc in ((stream, stream_loc), (dec, dec_loc)):
        got = q[(f"step time {r['arch']} locality/random", r["arch"])]
        assert got["value"] == round(loc["seconds"] / r["seconds"], 3) and got["met"] == (got["value"] <= 1.2)
    assert len(data["ratios"]) == 4
    # the profile: the causal LM and the models with a goal, on the grid nearest 16x16
    profiles = data["profiles"]
    assert [p["arch"] for p in profiles] == [CAUSAL, "stream", "decoupled"]
    for p in profiles:
        assert p["grid"] == 4 and p["step_s"] > 0 and set(p["phases_s"]) >= {"forward", "backward", "optimizer"}
        names = [c["what"] for c in p["categories"]]
        assert "attention kernel (fwd)" in names and "linear layers (bwd)" in names and p["top_ops"]
        assert all(c["ms"] >= 0 for c in p["categories"])
    assert 0 < profiles[1]["mask_density"] < 1
    meta = data["meta"]
    assert meta["budget_divisor"] == 4 and meta["batches"] == [2] and meta["threads"] >= 1 and meta["torch"]
    md = (tmp_path / "bench_train.md").read_text()
    assert "| tokens/s stream/causal-lm | 4x4 | 2 |" in md and "| tokens/s ratio | goal | met |" in md
    assert "Where the time goes: stream at 4x4" in md and "| top op (self time) |" in md
    assert md.count(f"\n| {CAUSAL} |  | 4 | 2 |") == 1 and "| step time stream locality/random | 4x4 | 2 |" in md


def test_causal_lm_is_causal_and_as_big_as_the_backbone():
    cfg = ModelConfig(vocab_size=11, height=4, width=4, num_classes=10, depth=2, dim=16, heads=2)
    torch.manual_seed(0)
    lm = CausalLM(cfg).eval()
    n_stream = sum(p.numel() for p in build_model(cfg).parameters())
    assert n_stream - sum(p.numel() for p in lm.parameters()) == cfg.dim  # all but the [MASK] row
    tokens = torch.randint(11, (2, 16))
    labels = torch.tensor([1, 2])
    logits = lm(labels, tokens)
    assert logits.shape == (2, 16, 11)
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 11
    diff = (lm(labels, changed) - logits).abs().amax(dim=(0, 2))
    assert bool((diff[:6] == 0).all()) and bool((diff[6:] > 0).all())  # logit i sees tokens < i only


def test_loglog_slope():
    assert loglog_slope([16, 64, 256], [3 * n**2 for n in (16, 64, 256)]) == pytest.approx(2.0)
    assert loglog_slope([16, 16], [1.0, 2.0]) is None and loglog_slope([16, 64], [0.0, 1.0]) is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(what="decode", grids=[8, 0]), r"grids\[1\]=0"),
    (dict(what="train", grids=[8, -2]), r"grids\[1\]=-2"),
    (dict(what="train", budget_divisor=0), "budget_divisor=0"),
    (dict(what="train", grids=[4], budget_divisor=64), r"budget_divisor=64 .*4x4"),
    (dict(what="train", ckpt="some.ckpt"), "ckpt='some.ckpt'"),
    (dict(what="decode", grids=[8], ckpt="some.ckpt"), r"grids=\[8\]"),
    (dict(what="train", grids=[]), r"grids=\[\]"),
    (dict(what="train", archs=("stream", "nope")), "'nope'"),
    (dict(what="train", batches=(16, 0)), r"batches\[1\]=0"),
])
def test_bench_bad_input_names_the_value(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bench(out=str(tmp_path), **kwargs)
    assert not any(tmp_path.iterdir())  # nothing ran, nothing was written


@pytest.mark.slow
def test_bench_plan_times_planning_against_decoding(tmp_path):
    bench("plan", out=str(tmp_path), grids=[4], batches=(3,), archs=("stream", "decoupled"), **TINY)
    data = json.loads((tmp_path / "bench_plan.json").read_text())
    rows = data["rows"]
    assert [(r["what"], r["arch"]) for r in rows] == [("plan batched", None), ("plan reference", None),
                                                      ("decode", "stream"), ("decode", "decoupled")]
    steps = natural_locality_steps(16)
    assert all(r["grid"] == 4 and r["steps"] == steps and r["batch"] == 3 and r["seconds"] > 0 for r in rows)
    q = {r["what"]: r for r in data["ratios"]}
    for r in rows[2:]:  # the ratios are this run's rows
        got = q[f"planning/decoding ({r['arch']})"]
        assert got["value"] == round(rows[0]["seconds"] / r["seconds"], 4) and got["met"] == (got["value"] <= 0.05)
    assert q["reference/batched planning"]["value"] == round(rows[1]["seconds"] / rows[0]["seconds"], 2)
    assert data["meta"]["settings"] == [[4, steps]] and data["meta"]["goal"] == 0.05
    md = (tmp_path / "bench_plan.md").read_text()
    assert f"| planning/decoding (stream) | 4x4 | {steps} | 3 |" in md and "| plan reference |" in md

