"""Token shards and the DataModule: round trips, DDP-style splitting, and loud, file-naming errors."""

import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
import webdataset as wds

from orderlab.data.atomic import sha256_file
from orderlab.data.datamodule import OrderDataModule, plan_rank
from orderlab.data.datasets import Prepared, seeded_split, write_dataset
from orderlab.data.shards import MANIFEST, ShardError, load_split, read_manifest
from orderlab.data.sources import load_digits_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def digits(digits_root):
    """The session's prepared digits (tests/conftest.py); tests that damage files use a copy."""
    return digits_root


@pytest.fixture
def digits_copy(digits, tmp_path):
    """A private copy of the digits folder that a test may damage."""
    root = tmp_path / "digits"
    shutil.copytree(digits, root)
    return str(root)


def numbered(tmp_path, n_train=1003, n_val=101, num_shards=8):
    """A dataset whose (2, 2) token grid spells the sample's index in base 32 (train ids < 100000 <= val ids)."""

    def grids(ids):
        digits = [(ids // 32 ** p) % 32 for p in range(4)]
        return np.stack(digits, 1).reshape(-1, 2, 2)  # (N, 2, 2)

    tr, va = np.arange(n_train), 100_000 + np.arange(n_val)
    prep = Prepared(splits={"train": (grids(tr), tr % 10), "val": (grids(va), va % 10)}, vocab_size=32,
                    num_classes=10, tokenizer={"name": "pixel", "levels": 32, "height": 2, "width": 2},
                    source={"name": "test"})
    root = str(tmp_path / "numbered")
    write_dataset(root, prep, "numbered", num_shards=num_shards)
    return root


def ids(tokens):
    """(B, 2, 2) tokens -> (B,) sample indices."""
    flat = tokens.reshape(len(tokens), 4)
    return sum(flat[:, p] * 32 ** p for p in range(4))


def rewrite_shard(root, name, samples):
    """Replace one shard with ``samples`` and make the manifest agree, so only the sample checks can object."""
    path = os.path.join(root, name)
    with wds.TarWriter(path, mtime=0) as sink:
        for s in samples:
            sink.write(s)
    with open(os.path.join(root, MANIFEST)) as f:
        manifest = json.load(f)
    for split in manifest["splits"].values():
        for entry in split["shards"]:
            if entry["name"] == name:
                split["count"] += len(samples) - entry["count"]
                entry.update(count=len(samples), bytes=os.path.getsize(path), sha256=sha256_file(path))
    with open(os.path.join(root, MANIFEST), "w") as f:
        json.dump(manifest, f)
    return path


# ------------------------------------------------------------------------------------------------ round trips
def test_digits_shards_round_trip_to_source_pixels(digits):
    values, labels = load_digits_images()  # (N, 1, 8, 8) in 0..16
    tr, va = seeded_split(len(values), 0.5, 0)  # digits' own default: half held out
    for split, idx in (("train", tr), ("val", va)):
        tokens, y = load_split(digits, split)
        assert tokens.dtype == y.dtype == torch.int64 and tokens.shape == (len(idx), 8, 8)
        assert torch.equal(tokens, torch.from_numpy(values[idx, 0])) and torch.equal(y, torch.from_numpy(labels[idx]))
    m = read_manifest(digits)
    assert (m["grid"], m["vocab_size"], m["num_classes"], m["token_dtype"]) == ([8, 8], 17, 10, "int16")
    assert m["tokenizer"] == {"name": "pixel", "levels": 17, "height": 8, "width": 8, "channels": 1}
    assert {s: v["count"] for s, v in m["splits"].items()} == {"train": 899, "val": 898}


def test_datamodule_batches_equal_source_pixels(digits):
    dm = OrderDataModule(digits, batch_size=64, val_batch_size=50)
    assert (dm.grid, dm.vocab_size, dm.num_classes) == ((8, 8), 17, 10)
    tokens, labels = zip(*dm.val_dataloader())
    assert all(t.dtype == torch.int64 and t.shape[1:] == (8, 8) and lab.dtype == torch.int64
               for t, lab in zip(tokens, labels))
    want_t, want_y = dm.load_split("val")
    assert torch.equal(torch.cat(tokens), want_t) and torch.equal(torch.cat(labels), want_y)  # val keeps order
    batch_t, batch_y = next(iter(dm.train_dataloader()))
    assert batch_t.shape == (64, 8, 8) and batch_y.shape == (64,)
    pixels = dm.tokenizer().decode(batch_t)  # (B, 1, 8, 8) in [0, 1]
    assert torch.equal(dm.tokenizer().encode(pixels), batch_t)


def test_train_shuffle_changes_per_epoch_and_is_seeded(tmp_path):
    root = numbered(tmp_path)
    first = [torch.cat([ids(t) for t, _ in OrderDataModule(root, batch_size=20, seed=3).train_dataloader()])
             for _ in range(2)]
    assert torch.equal(first[0], first[1])  # same seed, same first epoch
    loader = OrderDataModule(root, batch_size=20, seed=3).train_dataloader()
    epochs = [torch.cat([ids(t) for t, _ in loader]) for _ in range(2)]
    assert torch.equal(epochs[0], first[0]) and not torch.equal(epochs[0], epochs[1])
    assert all(len(set(e.tolist())) == len(e) == 1000 for e in epochs)  # 1003 // 20 full batches


# ------------------------------------------------------------------------------------------------ DDP splitting
@pytest.mark.parametrize("split", ["train", "val"])
def test_two_ranks_two_workers_see_each_sample_once_per_epoch(tmp_path, split):
    root = numbered(tmp_path)
    per_rank, batches = [], []
    for rank in range(2):
        dm = OrderDataModule(root, batch_size=16, num_workers=2, rank=rank, world_size=2)
        loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
        epochs = [[ids(t) for t, _ in loader] for _ in range(2)]
        batches.append([len(e) for e in epochs] + [len(loader)])
        per_rank.append([torch.cat(e) for e in epochs])
    assert batches[0] == batches[1] and batches[0][0] == batches[0][2]  # DDP needs equal batch counts
    for epoch in range(2):
        seen = torch.cat([per_rank[r][epoch] for r in range(2)]).tolist()
        assert len(seen) == len(set(seen)), "a sample was read twice in one epoch"
        if split == "val":
            assert sorted(seen) == list(range(100_000, 100_101))  # every val sample exactly once
        else:
            assert len(seen) == 2 * batches[0][0] * 16 and max(seen) < 1003


def test_plan_rank_errors_name_the_problem():
    with pytest.raises(ShardError, match="4 shards cannot feed world_size 2 x 3"):
        plan_rank([5] * 4, 0, 2, 3, 2, True)
    with pytest.raises(ShardError, match="batch_size 64 is larger"):
        plan_rank([5] * 4, 0, 2, 2, 64, True)


# ------------------------------------------------------------------------------------------------ errors
def test_missing_folder_manifest_and_bad_json(tmp_path, digits_copy):
    with pytest.raises(ShardError, match="does not exist"):
        OrderDataModule(str(tmp_path / "nope"))
    os.remove(os.path.join(digits_copy, MANIFEST))
    with pytest.raises(ShardError, match="manifest.json is missing"):
        OrderDataModule(digits_copy)
    with open(os.path.join(digits_copy, MANIFEST), "w") as f:
        f.write("{not json")
    with pytest.raises(ShardError, match="manifest.json is not valid JSON"):
        load_split(digits_copy, "val")


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated"])
def test_damaged_shard_fails_at_setup_naming_the_file(digits_copy, damage):
    path = os.path.join(digits_copy, "val-000003.tar")
    if damage == "missing":
        os.remove(path)
    else:
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(b"" if damage == "empty" else data[: len(data) // 2])
    dm = OrderDataModule(digits_copy)
    message = {"missing": "is missing", "empty": "is empty", "truncated": "truncated"}[damage]
    with pytest.raises(ShardError, match=re.escape(path) + ".*" + message):
        dm.setup("fit")


def test_truncated_tar_read_fails_naming_the_file(digits_copy):
    """Even when size and checksum agree with the manifest (a bad prepare), reading names the shard."""
    path = os.path.join(digits_copy, "val-000002.tar")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:1000])
    m = json.load(open(os.path.join(digits_copy, MANIFEST)))
    entry = next(e for e in m["splits"]["val"]["shards"] if e["name"] == "val-000002.tar")
    entry.update(bytes=len(data[:1000]), sha256=sha256_file(path))
    json.dump(m, open(os.path.join(digits_copy, MANIFEST), "w"))
    with pytest.raises(ShardError, match=re.escape(path) + ".*(corrupt|truncated)"):
        load_split(digits_copy, "val")
    with pytest.raises(ShardError, match="val-000002.tar"):
        list(OrderDataModule(digits_copy).val_dataloader())


@pytest.mark.parametrize("tokens, message", [
    (np.zeros((8, 8), np.int64), "tokens have dtype int64, the manifest says int16"),
    (np.full((8, 8), -1, np.int16), "negative token value -1"),
    (np.full((8, 8), 17, np.int16), "token value 17 is out of vocabulary"),
    (np.zeros((7, 7), np.int16), r"tokens have shape \(7, 7\), the manifest grid is \(8, 8\)"),
])
def test_bad_tokens_fail_naming_shard_and_sample(digits_copy, tokens, message):
    good = np.zeros((8, 8), np.int16)
    path = rewrite_shard(digits_copy, "val-000005.tar", [
        {"__key__": "ok", "tokens.npy": good, "cls": 1}, {"__key__": "bad", "tokens.npy": tokens, "cls": 2}])
    with pytest.raises(ShardError, match=re.escape(f"shard {path}, sample 'bad': ") + message):
        load_split(digits_copy, "val")
    with pytest.raises(ShardError, match=message):
        list(OrderDataModule(digits_copy, batch_size=8).val_dataloader())


def test_bad_label_and_manifest_fields(digits_copy):
    rewrite_shard(digits_copy, "val-000001.tar", [{"__key__": "k", "tokens.npy": np.zeros((8, 8), np.int16),
                                                   "cls": 10}])
    with pytest.raises(ShardError, match=r"class label 10 outside \[0, 10\)"):
        load_split(digits_copy, "val")
    m = json.load(open(os.path.join(digits_copy, MANIFEST)))
    for key, value, message in (("grid", [8], "grid must be"), ("vocab_size", "17", "vocab_size='17' must be"),
                                ("token_dtype", "int8", "token_dtype .int8. does not fit vocab_size 17"),
                                ("format", "v0", "format 'v0'")):
        json.dump({**m, key: value}, open(os.path.join(digits_copy, MANIFEST), "w"))
        with pytest.raises(ShardError, match=f"manifest.json: {message}"):
            OrderDataModule(digits_copy)


def test_manifest_that_does_not_match_the_model_fails_loudly(digits):
    dm = OrderDataModule(digits)
    dm.check_compatible(grid=(8, 8), vocab_size=17, num_classes=10)
    with pytest.raises(ShardError, match=r"grid is \[8, 8\] in its manifest but the model expects \[7, 7\]"):
        dm.check_compatible(grid=(7, 7))
    with pytest.raises(ShardError, match="vocab_size is 17 in its manifest but the model expects 64"):
        dm.check_compatible(vocab_size=64)


def test_bad_datamodule_arguments_name_the_key(digits):
    with pytest.raises(ValueError, match="data.batch_size=0"):
        OrderDataModule(digits, batch_size=0)
    with pytest.raises(ValueError, match="data.rank=2"):
        OrderDataModule(digits, rank=2, world_size=2)
    with pytest.raises(ShardError, match="no split 'test2'"):
        OrderDataModule(digits).dataset("test2", train=False)


# ------------------------------------------------------------------------------------------------ Lightning
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # jsonargparse 4.5x deprecations inside Lightning
@pytest.mark.filterwarnings("ignore:.*args parameter is intended:UserWarning")  # pytest's own sys.argv
@pytest.mark.filterwarnings("ignore:No seed found:UserWarning")
@pytest.mark.filterwarnings("ignore:Your `IterableDataset` has `__len__`:UserWarning")  # pytest resets filters
def test_datamodule_from_yaml_through_lightning_cli_and_fit(digits, tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningCLI

    class Tiny(pl.LightningModule):
        def __init__(self, lr: float = 0.01) -> None:
            super().__init__()
            self.lr, self.seen = lr, []
            self.emb = torch.nn.Embedding(17, 4)

        def setup(self, stage):
            dm = self.trainer.datamodule
            assert (dm.grid, dm.vocab_size, dm.num_classes) == ((8, 8), 17, 10)

        def training_step(self, batch, _):
            tokens, labels = batch  # (B, H, W), (B,)
            self.seen.append(len(labels))
            return self.emb(tokens).mean()

        def validation_step(self, batch, _):
            self.log("val_loss", self.emb(batch[0]).mean(), batch_size=len(batch[1]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.lr)

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data:\n  root: {digits}\n  batch_size: 100\n  num_workers: 0\n  seed: 5\n  shuffle_buffer: 64\n"
                   f"trainer:\n  max_epochs: 2\n  logger: false\n  enable_checkpointing: false\n"
                   f"  enable_progress_bar: false\n  enable_model_summary: false\n  default_root_dir: {tmp_path}\n")
    cli = LightningCLI(Tiny, OrderDataModule, args=["--config", str(cfg)], run=False, save_config_callback=None)
    assert isinstance(cli.datamodule, OrderDataModule) and cli.datamodule.seed == 5
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.model.seen == [100] * 16  # 899 // 100 full batches per epoch (8 shards, one reader), two epochs
    assert "val_loss" in cli.trainer.callback_metrics
