"""orderlab convert: tiny checkpoints in each official key layout and file format -> orderlab checkpoints whose
teacher-forced logits equal the independent reference forwards of tests/official_refs.py (written from the
official code), which decode, and bad files that are refused with nothing written."""

import argparse

import pytest
import torch
from official_refs import (
    ARPGConfig,
    LPDConfig,
    RandARConfig,
    arpg_logits,
    arpg_state,
    lpd_logits,
    lpd_state,
    randar_logits,
    randar_state,
    write_arpg_ckpt,
    write_lpd_ckpt,
    write_randar_ckpt,
)

from orderlab.published.convert import convert_checkpoint
from orderlab.train.checkpoint import load_checkpoint

# vocab 17, an 8x8 grid and 10 classes: the digits' data shape, so the converted models run every command here
ARPG = ARPGConfig(vocab_size=17, num_classes=10, grid=8, dim=32, n_head=2, n_layer=4)
LPD = LPDConfig(vocab_size=17, num_classes=10, img_size=128, vqgan_stride=16, dim=32, depth=2, n_head=2)
RANDAR = RandARConfig(vocab_size=17, num_classes=10, grid=8, dim=32, n_head=2, n_layer=2)
B = 3


def _inputs(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 17, (B, n), generator=g)
    order = torch.stack([torch.randperm(n, generator=g) for _ in range(B)])
    return torch.tensor([0, 4, 9]), tokens, order


def _ours(path, labels, tokens, order, sizes):
    model = load_checkpoint(str(path)).model.double()
    return model.plan_logits(labels, tokens.gather(1, order), order, sizes)


def _convert(tmp_path, source, write, state, name="in.pt", **kw):
    src = tmp_path / name
    write(src, state)
    out = tmp_path / "out.ckpt"
    res = convert_checkpoint(source, str(src), str(out), heads=2, **kw)
    return out, res


@pytest.mark.parametrize("layout", ["train", "state_dict", "module", "bare"])
def test_arpg_converts_to_the_official_forward(tmp_path, layout):
    state = arpg_state(ARPG, seed=3)
    out, res = _convert(tmp_path, "arpg", lambda p, s: write_arpg_ckpt(p, s, layout=layout), state, grid=8)
    labels, tokens, order = _inputs(64)
    ref = arpg_logits(state, ARPG, labels, tokens, order)
    ours = _ours(out, labels, tokens, order, [1] * 64)
    assert torch.allclose(ours, ref, rtol=1e-9, atol=1e-9), (ours - ref).abs().max()
    assert res["config"].arch == "decoupled" and res["config"].cond_rope == "zero"


def test_arpg_prefers_ema_and_says_so(tmp_path):
    raw, ema = arpg_state(ARPG, seed=3), arpg_state(ARPG, seed=4)
    out, res = _convert(tmp_path, "arpg", lambda p, s: write_arpg_ckpt(p, s, layout="train", ema=ema), raw, grid=8)
    assert res["entry"] == "ema" and any("EMA" in n for n in res["notes"])
    labels, tokens, order = _inputs(64)
    assert torch.allclose(_ours(out, labels, tokens, order, [1] * 64), arpg_logits(ema, ARPG, labels, tokens, order),
                          rtol=1e-9, atol=1e-9)
    out2 = tmp_path / "raw.ckpt"
    res2 = convert_checkpoint("arpg", str(tmp_path / "in.pt"), str(out2), heads=2, grid=8, weights="model")
    assert res2["entry"] == "model"
    # the training layout pickles argparse.Namespace: still read weights-only
    assert any("weights_only=True" in n for n in res["notes"]) and not any("full pickle" in n for n in res["notes"])


def test_arpg_class_token_rope_matters(tmp_path):
    """Converted with the identity RoPE on the class token instead of ARPG's zero table, the logits move: the knob
    is what makes the port exact."""
    state = arpg_state(ARPG, seed=3)
    out, _ = _convert(tmp_path, "arpg", lambda p, s: write_arpg_ckpt(p, s, layout="bare"), state, grid=8)
    loaded = load_checkpoint(str(out))
    loaded.config.cond_rope = "identity"
    labels, tokens, order = _inputs(64)
    moved = loaded.model.double().plan_logits(labels, tokens.gather(1, order), order, [1] * 64)
    ref = arpg_logits(state, ARPG, labels, tokens, order)
    assert (moved - ref).abs().max() > 1e-3


@pytest.mark.parametrize("sizes", [[1] * 64, [1, 3, 12, 16, 32], [1, 63]])
@pytest.mark.parametrize("layout", ["train", "model"])
def test_lpd_converts_to_the_official_forward(tmp_path, sizes, layout):
    state = lpd_state(LPD, seed=5)
    out, res = _convert(tmp_path, "lpd", lambda p, s: write_lpd_ckpt(p, s, layout=layout), state, name="c.pth")
    labels, tokens, order = _inputs(64)
    ref = lpd_logits(state, LPD, labels, tokens, order, sizes)
    ours = _ours(out, labels, tokens, order, sizes)
    assert torch.allclose(ours, ref, rtol=1e-9, atol=1e-9), (ours - ref).abs().max()
    assert res["config"].height == 8 and res["config"].block_style == "vit"  # the grid read off pos_embed


def test_lpd_null_class_is_fake_latent(tmp_path):
    state = lpd_state(LPD, seed=5)
    out, _ = _convert(tmp_path, "lpd", lambda p, s: write_lpd_ckpt(p, s), state, name="c.pth")
    _, tokens, order = _inputs(64)
    ref = lpd_logits(state, LPD, torch.zeros(B, dtype=torch.long), tokens, order, [4] * 16, drop_label=True)
    ours = _ours(out, torch.full((B,), 10), tokens, order, [4] * 16)
    assert torch.allclose(ours, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_randar_safetensors_converts_to_the_official_forward(tmp_path, prefix):
    state = randar_state(RANDAR, seed=7)
    out, res = _convert(tmp_path, "randar", lambda p, s: write_randar_ckpt(p, s, prefix=prefix), state,
                        name="m.safetensors", grid=8)
    labels, tokens, order = _inputs(64)
    ref = randar_logits(state, RANDAR, labels, tokens, order)
    for sizes in ([1] * 64, [8] * 8):  # causal mode: training is causal whatever the groups
        ours = _ours(out, labels, tokens, order, sizes)
        assert torch.allclose(ours, ref, rtol=1e-9, atol=1e-9), (ours - ref).abs().max()
    assert res["config"].options == {"mode": "causal"} and any("safetensors" in n for n in res["notes"])


@pytest.mark.parametrize("source, write, state, name", [
    ("arpg", write_arpg_ckpt, arpg_state(ARPG), "a.pt"),
    ("lpd", write_lpd_ckpt, lpd_state(LPD), "l.pth"),
    ("randar", write_randar_ckpt, randar_state(RANDAR), "r.safetensors"),
])
def test_a_converted_model_decodes_natively_and_under_any_schedule(tmp_path, source, write, state, name):
    from orderlab.decoding.decode import generate
    from orderlab.published.native import native_row
    from orderlab.schedule import get_schedule

    out, _ = _convert(tmp_path, source, write, state, name=name, grid=8)
    loaded = load_checkpoint(str(out))
    row = native_row(loaded)
    labels = torch.tensor([1, 2])
    for schedule, steps in ((get_schedule(row["schedule"], **row["knobs"]), 8), ("locality", 8), ("raster", None)):
        tokens = generate(loaded.model, schedule, steps, labels, seed=0)
        assert tokens.shape == (2, 8, 8) and int(tokens.min()) >= 0 and int(tokens.max()) < 17


# --------------------------------------------------------------------------------------------- refused files
def _refused(tmp_path, source, path, *words, **kw):
    out = tmp_path / "refused" / "out.ckpt"
    with pytest.raises(ValueError) as err:
        convert_checkpoint(source, str(path), str(out), heads=2, **kw)
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    assert not (tmp_path / "refused").exists()
    return msg


def test_unknown_missing_and_misshapen_keys_are_listed(tmp_path):
    state = arpg_state(ARPG)
    state["layers.extra.weight"] = torch.zeros(3)
    del state["layers.cross_dec.1.ffn.w2.weight"]
    state["norm.weight"] = torch.zeros(5)
    write_arpg_ckpt(tmp_path / "bad.pt", state, layout="bare")
    _refused(tmp_path, "arpg", tmp_path / "bad.pt", "layers.extra.weight", "layers.cross_dec.1.ffn.w2.weight",
             "norm.weight: (5,)", "nothing was written", grid=8)


def test_wrong_source_and_bad_files(tmp_path):
    write_lpd_ckpt(tmp_path / "l.pth", lpd_state(LPD))
    _refused(tmp_path, "arpg", tmp_path / "l.pth", "missing key", "unknown key", "blocks.0.attn.proj.bias", "arpg key layout")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    _refused(tmp_path, "lpd", tmp_path / "text.pt", "text.pt")
    (tmp_path / "trunc.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    _refused(tmp_path, "randar", tmp_path / "trunc.safetensors", "trunc.safetensors")
    torch.save({"optimizer": {}, "epoch": 3}, tmp_path / "noweights.pt")
    _refused(tmp_path, "lpd", tmp_path / "noweights.pt", "no weights entry", "epoch")
    _refused(tmp_path, "arpg", tmp_path / "nope.pt", "does not exist")
    _refused(tmp_path, "arpgg", tmp_path / "l.pth", "unknown converter 'arpgg'", "did you mean 'arpg'")
    write_arpg_ckpt(tmp_path / "a.pt", arpg_state(ARPG), layout="bare")
    _refused(tmp_path, "arpg", tmp_path / "a.pt", "--preset 'lpd-L'", preset="lpd-L")
    _refused(tmp_path, "arpg", tmp_path / "a.pt", "not hold the arpg-L model", "depth", preset="arpg-L")
    _refused(tmp_path, "arpg", tmp_path / "a.pt", "no EMA entry", weights="ema")


def test_an_untrusted_pickle_is_loaded_only_with_a_warning(tmp_path):
    """A pickle weights_only=True refuses (an object of another class) still converts, and the notes say so."""
    state = arpg_state(ARPG)
    torch.save({"model": state, "args": argparse.ArgumentParser}, tmp_path / "odd.pt")  # a class: not allowed
    res = convert_checkpoint("arpg", str(tmp_path / "odd.pt"), str(tmp_path / "o.ckpt"), heads=2, grid=8)
    assert any("full pickle" in n and "trust" in n for n in res["notes"])


@pytest.mark.slow
def test_convert_cli_then_sample_and_evaluate_native(tmp_path, digits_root, capsys):
    from orderlab.cli import main

    write_randar_ckpt(tmp_path / "r.safetensors", randar_state(RANDAR))
    out = tmp_path / "r.ckpt"
    main(["convert", "--from", "randar", "--ckpt", str(tmp_path / "r.safetensors"), "--out", str(out), "--heads", "2",
          "--grid", "8"])
    text = capsys.readouterr().out
    assert "wrote" in text and "'native'" in text
    main(["sample", "--ckpt", str(out), "--schedule", "native", "--steps", "8", "--num", "4",
          "--out", str(tmp_path / "s.png")])
    main(["evaluate", "--ckpt", str(out), "--rows", "[native:8, random:8]", "--num_samples", "8", "--nll_samples",
          "8", "--data", digits_root, "--out", str(tmp_path / "eval")])
    import json

    rows = json.loads((tmp_path / "eval" / "results.json").read_text())["rows"]
    assert [r["steps"] for r in rows] == [8, 8]
    assert "sizes='randar'" in rows[0]["schedule_repr"] and "sizes='randar'" not in rows[1]["schedule_repr"]


def test_dashed_flags_of_the_issue_are_accepted(tmp_path, capsys):
    """`--from` (a Python keyword) and `--ref-stats` reach their parameters (--source, --ref_stats)."""
    from orderlab.cli import main

    with pytest.raises(SystemExit) as err:
        main(["evaluate", "--ckpt", str(tmp_path / "x.ckpt"), "--rows", "[native]", "--ref-stats",
              str(tmp_path / "none.npz"), "--out", str(tmp_path / "out")])
    assert err.value.code == 2 and "reference statistics" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["convert", "--from=lpd", "--ckpt", str(tmp_path / "none.pth"), "--out", str(tmp_path / "o.ckpt")])
    assert err.value.code == 2 and "none.pth' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
