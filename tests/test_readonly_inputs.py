"""Inputs are read-only (design invariant 7): ``evaluate``, ``sample``, ``search`` and the demo's evaluation leave the
dataset folder and the checkpoint's folder exactly as they were; the real-feature cache goes to the cache folder."""

import os
import shutil
from pathlib import Path

import pytest
import yaml

from orderlab.cli import main
from orderlab.metrics import default_cache_dir

ROOT = Path(__file__).resolve().parents[1]


def snapshot(*folders) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file and folder under ``folders`` (a folder's mtime changes when an entry is added,
    removed or renamed in it, so a temporary file that came and went is seen too)."""
    out = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in [".", *dirnames, *filenames]:
                path = os.path.normpath(os.path.join(dirpath, name))
                st = os.stat(path)
                out[path] = (st.st_size, st.st_mtime_ns)
    return out


def changes(before: dict, after: dict) -> list[str]:
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache folder of this test's own, chosen the way a user would: $ORDERLAB_CACHE."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("ORDERLAB_CACHE", str(folder))
    return folder


def test_cache_folder_rule(monkeypatch, tmp_path):
    monkeypatch.setenv("ORDERLAB_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == str(tmp_path / "mine")
    monkeypatch.delenv("ORDERLAB_CACHE")
    assert default_cache_dir() == str(tmp_path / "xdg" / "orderlab")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the XDG rule: a relative path is ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == str(tmp_path / "home" / ".cache" / "orderlab")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == str(tmp_path / "home" / ".cache" / "orderlab")


@pytest.mark.slow
def test_evaluate_sample_search_and_demo_leave_inputs_untouched(tiny_ckpt, digits_root, tmp_path, cache,
                                                                 monkeypatch):
    ckpt_dir = os.path.dirname(tiny_ckpt)
    before = snapshot(digits_root, ckpt_dir)
    # evaluate, with the data folder taken from the checkpoint as a user would
    main(["evaluate", "--ckpt", tiny_ckpt, "--rows", "[random:8]", "--out", str(tmp_path / "ev"),
          "--num_samples", "8", "--nll_samples", "8"])
    assert len(list(cache.glob("digits-val-n8-fcd-*.pt"))) == 1, "the feature cache did not land in ORDERLAB_CACHE"
    # sample, and inpaint from the tokens it wrote
    main(["sample", "--ckpt", tiny_ckpt, "--schedule", "locality", "--steps", "8", "--num", "2",
          "--out", str(tmp_path / "s.png")])
    main(["sample", "--ckpt", tiny_ckpt, "--known", str(tmp_path / "s.npy"), "--region", "rows=4:8", "--num", "2",
          "--out", str(tmp_path / "inp.png")])
    # an inference search
    cfg = {"study_name": "ro", "out": str(tmp_path / "search"), "objectives": ["fcd"], "n_trials": 1,
           "sampler": "random", "evaluate": {"ckpt": tiny_ckpt, "num_samples": 12, "nll_samples": 8},
           "space": {"schedule": {"type": "categorical", "choices": ["random"]}, "steps": {"type": "int", "low": 4,
                                                                                            "high": 8}}}
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(cfg))
    main(["search", "--config", str(tmp_path / "search.yaml")])
    assert len(list(cache.glob("digits-val-n12-fcd-*.pt"))) == 1
    assert changes(before, snapshot(digits_root, ckpt_dir)) == []

    # the demo's evaluation phase: a demo folder whose checkpoint is there already (training is the one phase
    # allowed to write it, and is stubbed out here), then evaluation and the report
    out = tmp_path / "demo"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy2(tiny_ckpt, out / "checkpoints" / "last.ckpt")
    monkeypatch.setattr("orderlab.train.lightning_cli.run_lightning_cli", lambda args: None)
    demo_cache = tmp_path / "demo-cache"
    before = snapshot(digits_root, out / "checkpoints")
    main(["demo", "--out", str(out), "--data", digits_root, "--experiment", str(ROOT / "experiments/debug.yaml"),
          "--max_steps", "3", "--rows", "[random:8]", "--num_samples", "16", "--cache_dir", str(demo_cache)])
    assert (out / "report.md").is_file() and "Real-vs-real floor" in (out / "report.md").read_text()
    assert len(list(demo_cache.glob("digits-val-n16-fcd-*.pt"))) == 1  # --cache_dir wins over ORDERLAB_CACHE
    assert not list(cache.glob("*n16*"))
    assert changes(before, snapshot(digits_root, out / "checkpoints")) == []


def test_the_snapshot_sees_a_cache_written_into_a_data_folder(tiny_ckpt, digits_root, tmp_path, cache):
    """The check above can fail: pointing the cache at (a copy of) the data folder is caught."""
    data = tmp_path / "digits"
    shutil.copytree(digits_root, data)
    before = snapshot(data)
    main(["evaluate", "--ckpt", tiny_ckpt, "--data", str(data), "--rows", "[random:4]", "--out", str(tmp_path / "ev"),
          "--num_samples", "8", "--nll_samples", "8", "--cache_dir", str(data)])
    changed = changes(before, snapshot(data))
    assert str(data) in changed and any("digits-val-n8-fcd-" in p for p in changed), changed
    assert not cache.exists()  # --cache_dir was used instead of ORDERLAB_CACHE
