"""The shared atomic writers (orderlab.data.atomic): on success only the target is left in its folder; when writing
fails, the old file is untouched and no temporary file is left behind."""

import json

import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from orderlab.data.atomic import (
    atomic_open,
    atomic_savefig,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _figure() -> Figure:
    fig = Figure(figsize=(1, 1))
    FigureCanvasAgg(fig)
    fig.add_subplot().plot([0, 1], [1, 0])
    return fig


class _BrokenFigure:
    """savefig writes half a picture, then fails (a full disk, a bad artist)."""

    def savefig(self, fh, **kwargs):
        fh.write(PNG_MAGIC)
        raise RuntimeError("savefig broke half-way")


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


WRITERS = {  # name -> (write good content, write content that fails half-way, check the good content)
    "bytes": (lambda p: atomic_write_bytes(p, b"new"), None, lambda p: p.read_bytes() == b"new"),
    "text": (lambda p: atomic_write_text(p, "new ü\n"), lambda p: atomic_write_text(p, 123),
             lambda p: p.read_text(encoding="utf-8") == "new ü\n"),
    "json": (lambda p: atomic_write_json(str(p), {"a": 1}), lambda p: atomic_write_json(str(p), {"a": object()}),
             lambda p: json.loads(p.read_text()) == {"a": 1}),
    "torch": (lambda p: atomic_torch_save({"a": 1}, str(p)), lambda p: atomic_torch_save(_Unpicklable(), str(p)),
              lambda p: torch.load(p) == {"a": 1}),
    "savefig": (lambda p: atomic_savefig(_figure(), p), lambda p: atomic_savefig(_BrokenFigure(), p),
                lambda p: p.read_bytes().startswith(PNG_MAGIC)),
}


def _fail_half_way(path):
    with atomic_open(path, "wb") as fh:
        fh.write(b"half")
        raise RuntimeError("the writer died")


@pytest.mark.parametrize("kind", WRITERS)
def test_success_leaves_only_the_target(tmp_path, kind):
    write, _, check = WRITERS[kind]
    path = tmp_path / "sub" / f"out.{'png' if kind == 'savefig' else 'bin'}"  # the parent folder is created
    write(path)
    assert check(path)
    write(path)  # overwriting works the same way
    assert check(path)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "no temporary file is left behind"


@pytest.mark.parametrize("kind", WRITERS)
def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, kind):
    _, fail, _ = WRITERS[kind]
    fail = fail or _fail_half_way
    path = tmp_path / "out.png"
    path.write_bytes(b"old")
    with pytest.raises(Exception):  # noqa: B017 - each writer fails in its own way
        fail(path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"], "the temporary file is removed"


def test_failed_first_write_creates_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="died"):
        _fail_half_way(tmp_path / "new.bin")
    assert list(tmp_path.iterdir()) == []


def test_savefig_format_follows_the_extension(tmp_path):
    atomic_savefig(_figure(), tmp_path / "fig.svg")
    assert b"<svg" in (tmp_path / "fig.svg").read_bytes()[:500]
    assert atomic_savefig(_figure(), tmp_path / "noext") == str(tmp_path / "noext")
    assert (tmp_path / "noext").read_bytes().startswith(PNG_MAGIC)


def test_atomic_open_refuses_append_and_read_modes(tmp_path):
    for mode in ("a", "r", "rb", "w+"):
        with pytest.raises(ValueError, match="only 'wb' and 'w'"):
            with atomic_open(tmp_path / "x", mode):
                pass
    assert list(tmp_path.iterdir()) == []
