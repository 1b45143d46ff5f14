"""The decode benchmark writes its JSON and Markdown with one row per (arch, batch, budget); no timing asserts."""

import json

import pytest

from orderlab.commands.bench_cmd import bench


def test_bench_decode_writes_rows(tmp_path):
    bench("decode", out=str(tmp_path), grid=4, depth=4, dim=16, heads=2, vocab=11, batches=(1, 3), repeats=1)
    data = json.loads((tmp_path / "bench.json").read_text())
    rows = data["rows"]
    assert len(rows) == 2 * 2 * 4  # 2 archs x 2 batches x (T = N, N/4, N/8, N/16)
    assert [r["steps"] for r in rows[:4]] == [16, 4, 2, 1]
    assert all(r["passes"] == r["steps"] for r in rows)
    assert all(r["seconds"] > 0 and r["kv_cache_MiB"] > 0 and r["peak_MiB"] >= 0 for r in rows)
    flex = next(r for r in rows if r["arch"] == "flex" and r["batch"] == 3)
    dec = next(r for r in rows if r["arch"] == "decoupled" and r["batch"] == 3)
    assert dec["kv_cache_MiB"] < flex["kv_cache_MiB"]  # ARPG's shared K/V is the memory-lean variant
    md = (tmp_path / "bench.md").read_text()
    assert md.count("\n| flex |") == 8 and "speedup_vs_T_N" in md


def test_bench_unknown_benchmark(tmp_path):
    with pytest.raises(ValueError, match="'encode'"):
        bench("encode", out=str(tmp_path))
