"""The decode benchmark writes its JSON and Markdown with one row per (arch, batch, budget); no timing asserts."""

import json

import pytest
import torch

from orderlab.commands.bench_cmd import bench


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
