"""Long work shows progress on stderr (and nothing off a terminal), one metric name, unique descriptive output names,
and normal file modes from every atomic writer."""

import os
import re
import stat
from pathlib import Path

import pytest
import yaml

from orderlab.analysis.evaluation import Row, parse_row
from orderlab.cli import main

ROOT = Path(__file__).resolve().parents[1]
SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


def test_row_slugs_are_unique_descriptive_and_filesystem_safe():
    rows = [parse_row(r) for r in yaml.safe_load((ROOT / "experiments/digits/orders.yaml").read_text())["rows"]]
    slugs = [r.slug for r in rows]
    assert len(set(slugs)) == len(slugs), slugs  # two locality T=8 rows differ by their knob
    assert all(SAFE.match(s) for s in slugs), slugs
    assert "locality_T8" in slugs and "locality_T8_fillgenerated" in slugs and "diagonal_Tnat" in slugs
    assert parse_row({"schedule": "locality", "steps": 8, "knobs": {"repulsion": 1}}).slug == "locality_T8_repulsion1"
    assert parse_row({"schedule": "random", "steps": 4, "knobs": {"sizes": "power:2"}}).slug == "random_T4_sizespower-2"
    assert Row("raster", None, decoder="sjd", decoder_args={"window": 4}).slug == "raster_Tnat_sjd_window4"
    assert SAFE.match(Row("random", 8, knobs={"sizes": "../../x y/"}).slug)


def _no_terminal(monkeypatch):
    for var in ("TTY_COMPATIBLE", "FORCE_COLOR", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)


def test_evaluate_progress_goes_to_stderr_and_only_on_a_terminal(tiny_ckpt, tmp_path, capsys, monkeypatch):
    rows = "[random:8, {schedule: locality, steps: 8, knobs: {repulsion: 1}}]"
    args = ["evaluate", "--ckpt", tiny_ckpt, "--rows", rows, "--num_samples", "8", "--nll_samples", "8"]
    # not a terminal (CI, a log file): no bar at all, the result lines on stdout, FCD as in the files
    _no_terminal(monkeypatch)
    main([*args, "--out", str(tmp_path / "plain")])
    io = capsys.readouterr()
    assert io.err == "", io.err
    lines = [line for line in io.out.splitlines() if line.startswith("  row ")]
    assert len(lines) == 2 and all(": FCD " in line and " FD " not in line for line in lines), lines
    assert sorted(p.name for p in (tmp_path / "plain").glob("grid_*.png")) == [
        "grid_00_random_T8.png", "grid_01_locality_T8_repulsion1.png"]
    # a terminal: the bar (rows, then samples within the row) is drawn on stderr; stdout keeps only the lines
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TERM", "xterm")
    main([*args, "--out", str(tmp_path / "tty")])
    io = capsys.readouterr()
    assert "row 2/2 locality(repulsion=1) T=8" in io.err and "8/8" in io.err, io.err[-2000:]
    assert "\x1b[" not in io.out and "━" not in io.out
    assert [line for line in io.out.splitlines() if line.startswith("  row ")][1].startswith("  row 2/2")


def test_progress_bar_is_disabled_off_a_terminal(monkeypatch):
    from orderlab.progress import progress_bar

    _no_terminal(monkeypatch)
    assert progress_bar().disable  # pytest's captured stderr is no terminal
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TERM", "xterm")
    assert not progress_bar().disable and progress_bar(enabled=False).disable
    assert progress_bar().console.stderr


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    before = os.umask(0o022)
    yield os.umask
    os.umask(before)


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


def test_atomic_writers_give_the_umask_mode_not_0600(tmp_path, umask, capsys):
    import torch
    from matplotlib.figure import Figure

    from orderlab.analysis.evaluation import save_grid
    from orderlab.analysis.pictures import save_figure
    from orderlab.data.atomic import atomic_torch_save, atomic_write_bytes, atomic_write_json

    for mask, want in ((0o022, 0o644), (0o027, 0o640)):
        umask(mask)
        out = tmp_path / f"m{mask:o}"
        atomic_write_bytes(str(out / "a.bin"), b"x")
        atomic_write_json(str(out / "a.json"), {"a": 1})
        atomic_torch_save({"a": 1}, str(out / "a.pt"))
        save_figure(Figure(figsize=(1, 1)), out / "fig.png")
        save_grid(torch.rand(2, 1, 8, 8), str(out / "grid.png"))
        main(["schedules", "--height", "4", "--width", "4", "--out", str(out / "schedules")])
        modes = _modes(out)
        assert {"a.bin", "a.json", "a.pt", "fig.png", "grid.png", "schedules.md", "schedules.json",
                "raster.png"} <= set(modes), sorted(modes)
        assert all(m == want for m in modes.values()), {k: oct(v) for k, v in modes.items()}
        assert not [p for p in out.rglob("*.tmp")], "no temporary file is left behind"
    capsys.readouterr()
