"""``orderlab sample --known``: each output completes its own known image (inpainting), a single image fills
``--num`` only with ``--broadcast``, ``--canvas`` outpaints around a smaller known image, ``--label`` edits under
another class, and bad shapes end in one ``error:`` line with exit code 2 and no output file."""

import numpy as np
import pytest
import torch

import orderlab.decoding.decode
from orderlab.cli import main
from orderlab.commands.sample_cmd import known_inputs, parse_canvas


@pytest.fixture
def first(tiny_ckpt, tmp_path):
    """Five sampled token grids (5, 8, 8) of the tiny checkpoint, saved as first.npy."""
    main(["sample", "--ckpt", tiny_ckpt, "--num", "5", "--out", str(tmp_path / "first.png")])
    grids = np.load(tmp_path / "first.npy")
    assert grids.shape == (5, 8, 8) and len({g.tobytes() for g in grids}) == 5  # five different images
    return grids


@pytest.fixture
def calls(monkeypatch):
    """Record the labels, known tokens/mask and DecodeInfo of every generate() call the command makes."""
    seen, real = [], orderlab.decoding.decode.generate

    def spy(model, schedule, steps, labels, **kw):
        tokens, info = real(model, schedule, steps, labels, **{**kw, "return_info": True})
        seen.append({"labels": labels.clone(), "known": kw.get("known"), "info": info})
        return (tokens, info) if kw.get("return_info") else tokens

    monkeypatch.setattr(orderlab.decoding.decode, "generate", spy)
    return seen


def _sample(ckpt, out, *args):
    main(["sample", "--ckpt", ckpt, "--out", str(out), *args])
    return np.load(out.with_suffix(".npy"))


def _refused(capsys, ckpt, out, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--ckpt", ckpt, "--out", str(out), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("orderlab sample: error: "), err
    assert not out.exists() and not out.with_suffix(".npy").exists()
    return err


def test_each_output_keeps_its_own_known_image(tiny_ckpt, tmp_path, first, calls):
    np.save(tmp_path / "known.npy", first)
    out = _sample(tiny_ckpt, tmp_path / "inp.png", "--known", str(tmp_path / "known.npy"), "--region", "rows=4:8")
    assert out.shape == (5, 8, 8)  # one output per known image
    assert np.array_equal(out[:, :4], first[:, :4])  # image i's known rows, exactly, in output i
    out = _sample(tiny_ckpt, tmp_path / "box.png", "--known", str(tmp_path / "known.npy"), "--region",
                  "box=2:5,1:7", "--schedule", "locality", "--steps", "4")
    keep = np.ones((8, 8), bool)
    keep[2:5, 1:7] = False
    assert np.array_equal(out[:, keep], first[:, keep])
    assert all(p.num_known == 64 - 18 for p in calls[-1]["info"].plans)


def test_a_single_image_is_broadcast_only_when_asked(tiny_ckpt, tmp_path, first, capsys):
    np.save(tmp_path / "one.npy", first[2])  # (H, W): one image
    one = str(tmp_path / "one.npy")
    err = _refused(capsys, tiny_ckpt, tmp_path / "b.png", "--known", one, "--region", "rows=4:8", "--num", "4")
    assert "--num 4" in err and "--broadcast" in err
    out = _sample(tiny_ckpt, tmp_path / "b.png", "--known", one, "--region", "rows=4:8", "--num", "4",
                  "--broadcast", "true")
    assert out.shape == (4, 8, 8) and np.array_equal(out[:, :4], np.broadcast_to(first[2, :4], (4, 4, 8)))
    assert _sample(tiny_ckpt, tmp_path / "one.png", "--known", one, "--region", "rows=4:8").shape == (1, 8, 8)
    # B images, --num a multiple of B: outputs 2i and 2i+1 complete image i
    np.save(tmp_path / "five.npy", first)
    five = str(tmp_path / "five.npy")
    out = _sample(tiny_ckpt, tmp_path / "ten.png", "--known", five, "--region", "rows=4:8", "--num", "10",
                  "--broadcast", "true")
    assert np.array_equal(out[:, :4], np.repeat(first[:, :4], 2, axis=0))
    assert "multiple" in _refused(capsys, tiny_ckpt, tmp_path / "bad.png", "--known", five, "--region", "rows=4:8",
                                  "--num", "7", "--broadcast", "true")
    assert "give --num" in _refused(capsys, tiny_ckpt, tmp_path / "bad.png", "--known", five, "--region",
                                    "rows=4:8", "--broadcast", "true")


def test_outpainting_keeps_the_canvas(tiny_ckpt, tmp_path, first, calls, capsys):
    np.save(tmp_path / "centre.npy", first[:, 2:6, 2:6])  # (5, 4, 4): smaller than the 8x8 grid
    out = _sample(tiny_ckpt, tmp_path / "out.png", "--known", str(tmp_path / "centre.npy"), "--canvas",
                  "rows=2:6,cols=2:6")
    assert out.shape == (5, 8, 8) and np.array_equal(out[:, 2:6, 2:6], first[:, 2:6, 2:6])
    assert all(p.num_known == 16 for p in calls[-1]["info"].plans)
    # a whole grid with a canvas: only the canvas cells are kept; --region adds cells to generate inside it
    np.save(tmp_path / "full.npy", first)
    out = _sample(tiny_ckpt, tmp_path / "top.png", "--known", str(tmp_path / "full.npy"), "--canvas", "rows=0:5",
                  "--region", "box=0:2,0:2")
    keep = np.zeros((8, 8), bool)
    keep[0:5] = True
    keep[0:2, 0:2] = False
    assert np.array_equal(out[:, keep], first[:, keep]) and calls[-1]["info"].plans[0].num_known == keep.sum()
    centre = str(tmp_path / "centre.npy")
    assert "4x4" in _refused(capsys, tiny_ckpt, tmp_path / "bad.png", "--known", centre, "--canvas",
                             "rows=1:6,cols=2:6")
    assert "--canvas" in _refused(capsys, tiny_ckpt, tmp_path / "bad.png", "--known", centre, "--region", "rows=0:2")
    assert "nothing would be known" in _refused(capsys, tiny_ckpt, tmp_path / "bad.png", "--known", centre,
                                                "--canvas", "rows=2:6,cols=2:6", "--region", "box=2:6,2:6")


def test_class_editing_uses_the_new_label(tiny_ckpt, tmp_path, first, calls):
    np.save(tmp_path / "known.npy", first[:3])
    out = _sample(tiny_ckpt, tmp_path / "edit.png", "--known", str(tmp_path / "known.npy"), "--region", "rows=4:8",
                  "--label", "8", "--cfg", "2.0")
    assert calls[-1]["labels"].tolist() == [8, 8, 8]
    assert np.array_equal(out[:, :4], first[:3, :4]) and calls[-1]["info"].plans[0].num_known == 32
    _, mask = calls[-1]["known"]
    assert torch.equal(mask, torch.arange(8).view(8, 1).expand(8, 8) < 4)
    # without --label the known cells decide: unconditional (the null class of a model trained with one)
    _sample(tiny_ckpt, tmp_path / "uncond.png", "--known", str(tmp_path / "known.npy"), "--region", "rows=4:8")
    assert calls[-1]["labels"].tolist() == [10, 10, 10]


def test_bad_known_inputs_are_one_line_errors(tiny_ckpt, tmp_path, first, capsys):
    bad = tmp_path / "bad.png"
    cases = {"grid7.npy": np.zeros((2, 7, 7), np.int64), "four_d.npy": np.zeros((1, 2, 8, 8), np.int64),
             "float.npy": np.zeros((8, 8), np.float32), "vocab.npy": np.full((8, 8), 17, np.int64)}
    for name, arr in cases.items():
        np.save(tmp_path / name, arr)
    assert "7x7" in _refused(capsys, tiny_ckpt, bad, "--known", str(tmp_path / "grid7.npy"), "--region", "rows=4:8")
    assert "(B, H, W)" in _refused(capsys, tiny_ckpt, bad, "--known", str(tmp_path / "four_d.npy"), "--region",
                                   "rows=4:8")
    assert "integer" in _refused(capsys, tiny_ckpt, bad, "--known", str(tmp_path / "float.npy"), "--region",
                                 "rows=4:8")
    assert "0..16" in _refused(capsys, tiny_ckpt, bad, "--known", str(tmp_path / "vocab.npy"), "--region", "rows=4:8")
    np.save(tmp_path / "ok.npy", first)
    ok = str(tmp_path / "ok.npy")
    assert "need --known" in _refused(capsys, tiny_ckpt, bad, "--region", "rows=4:8")
    assert "need --known" in _refused(capsys, tiny_ckpt, bad, "--canvas", "rows=2:6")
    assert "nothing to generate" in _refused(capsys, tiny_ckpt, bad, "--known", ok)
    assert "--canvas 'rows=2:6,rows=1:3'" in _refused(capsys, tiny_ckpt, bad, "--known", ok, "--canvas",
                                                      "rows=2:6,rows=1:3")
    assert "--num=0" in _refused(capsys, tiny_ckpt, bad, "--known", ok, "--region", "rows=4:8", "--num", "0")


def test_parse_canvas_and_known_inputs():
    assert parse_canvas("rows=2:6,cols=1:3", 8, 8) == (slice(2, 6), slice(1, 3))
    assert parse_canvas("cols=4:", 8, 6) == (slice(0, 8), slice(4, 6))
    with pytest.raises(ValueError, match="outside 0..8"):
        parse_canvas("rows=2:9", 8, 8)
    tok = torch.arange(2 * 2 * 3).view(2, 2, 3)  # (B=2, 2, 3): placed at rows 1:3, cols 2:5 of a 4x6 grid
    full, keep = known_inputs(tok, 4, 6, canvas="rows=1:3,cols=2:5", num=4, broadcast=True)
    assert full.shape == (4, 4, 6) and keep.sum() == 6 and keep[1:3, 2:5].all()
    assert torch.equal(full[:, 1:3, 2:5], tok.repeat_interleave(2, 0))
