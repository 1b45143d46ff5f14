"""TensorBoard callbacks: a real 2-step Trainer writes the expected tags; nothing happens off rank 0 or without TB."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import UNKNOWN, tiny_model
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

import orderlab.train.callbacks as cb
from orderlab.analysis.evaluation import image_grid
from orderlab.decoding.decode import make_plans
from orderlab.decoding.scoring import training_logits
from orderlab.train.callbacks import AttentionLocality, OrderPictures, SampleGrids, upscale

H, W, V = 4, 5, 7


class TinyModule(L.LightningModule):
    """The two attributes the callbacks rely on (``model``, ``decode_tokens``) around a tiny backbone."""

    def __init__(self, arch: str = "stream", mutual: bool = True):
        super().__init__()
        self.model = tiny_model(arch=arch, mutual=mutual, height=H, width=W, vocab=V, dtype=torch.float32).train()

    def decode_tokens(self, tokens):
        return (tokens.float() / (V - 1)).unsqueeze(1)  # (B, 1, H, W) grey levels in [0, 1]

    def training_step(self, batch, batch_idx):
        tokens, labels = batch
        plans, _ = make_plans("random", H, W, 4, tokens.shape[0], seed=batch_idx)
        logits = training_logits(self.model, labels, tokens, plans)  # (B, N, V)
        return F.cross_entropy(logits.transpose(1, 2), tokens.reshape(tokens.shape[0], -1))

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader(n, seed):
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randint(0, V, (n, H, W), generator=g), torch.randint(0, 3, (n,), generator=g))
    return DataLoader(data, batch_size=4)


def _callbacks():
    return [SampleGrids(schedules=["random", "raster"], steps=[4], num=4),
            OrderPictures(schedules=["random", "diagonal"], steps=4),
            AttentionLocality(schedules=["random"], steps=4, radius=1, num=6)]


def _fit(tmp_path, callbacks, logger=None):
    logger = logger if logger is not None else TensorBoardLogger(str(tmp_path), name="tb")
    trainer = L.Trainer(max_steps=2, logger=logger, accelerator="cpu", devices=1, callbacks=callbacks,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        log_every_n_steps=1, limit_val_batches=2)
    trainer.fit(TinyModule(), _loader(8, 0), _loader(8, 1))  # 2 train batches: validation at the epoch end, step 2
    return trainer


def test_callbacks_write_the_expected_tags(tmp_path):
    trainer = _fit(tmp_path, _callbacks())
    acc = EventAccumulator(trainer.logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    images, scalars = set(acc.Tags()["images"]), set(acc.Tags()["scalars"])
    layers = range(3)  # tiny_model depth 3, flex: every layer holds queries
    want_images = {"samples/random/T4", "samples/raster/T4", "orders/random", "orders/diagonal",
                   *(f"locality/map/layer{i}/random" for i in layers)}
    assert want_images <= images
    want_scalars = {f"locality/{k}/layer{i}/random" for k in ("share_r1", "uniform_share_r1", "cond_mass")
                    for i in layers}
    assert want_scalars <= scalars
    # logged once, after training (the sanity check logs nothing), at the step validation ran
    grid = acc.Images("samples/random/T4")
    assert [e.step for e in grid] == [2]
    k = 16  # 4 x 5 tokens upscaled to a 64-px short side
    assert (grid[0].height, grid[0].width) == (2 * k * H + 3, 2 * k * W + 3)  # 2 x 2 grid, 1-px padding
    share = acc.Scalars("locality/share_r1/layer0/random")
    assert [e.step for e in share] == [2] and 0.0 <= share[0].value <= 1.0
    assert [e.step for e in acc.Images("orders/random")] == [0]
    loc = [c for c in trainer.callbacks if isinstance(c, AttentionLocality)][0]
    assert loc.cached == 6  # the first val batch (4) plus two samples of the second


@pytest.fixture
def spies(monkeypatch):
    """Count the heavy calls the callbacks make, while still running them."""
    calls = {"generate": 0, "attention_locality": 0, "plot_plan": 0}
    for name in calls:
        real = getattr(cb, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(cb, name, spy)
    return calls


def test_callbacks_do_nothing_off_rank_zero(tmp_path, monkeypatch, spies):
    monkeypatch.setattr(rank_zero_only, "rank", 1)  # what DDP sets on every other process
    callbacks = _callbacks()
    assert _fit(tmp_path, callbacks).global_step == 2  # the fit itself ran
    assert spies == {"generate": 0, "attention_locality": 0, "plot_plan": 0}
    assert callbacks[2].cached == 0
    tags = set()
    for path in tmp_path.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(path))
        acc.Reload()
        tags |= set(acc.Tags()["images"]) | set(acc.Tags()["scalars"])
    assert not {t for t in tags if t.split("/")[0] in ("samples", "orders", "locality")}


def test_callbacks_do_nothing_without_tensorboard(tmp_path, spies):
    callbacks = _callbacks()
    assert _fit(tmp_path, callbacks, logger=CSVLogger(str(tmp_path))).global_step == 2
    assert spies == {"generate": 0, "attention_locality": 0, "plot_plan": 0}
    assert callbacks[2].cached == 0


def test_locality_callback_on_decoupled_logs_only_query_layers(tmp_path):
    module = TinyModule(arch="decoupled", mutual=False)  # depth 3: pass 1 = layers 0, 1; pass 2 = layer 2
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = SimpleNamespace(loggers=[logger], sanity_checking=False, current_epoch=0, global_step=5)
    loc = AttentionLocality(schedules=["raster"], steps=20, num=3)
    loc.setup(trainer, module, "fit")
    tokens = torch.randint(0, V, (4, H, W), generator=torch.Generator().manual_seed(0))
    loc.on_validation_batch_end(trainer, module, None, (tokens, torch.tensor([0, 1, 2, 0])), 0)
    loc.on_validation_epoch_end(trainer, module)
    logger.experiment.flush()
    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    assert {t for t in acc.Tags()["scalars"] if t.startswith("locality/share")} == {"locality/share_r1/layer2/raster"}
    assert [e.step for e in acc.Scalars("locality/share_r1/layer2/raster")] == [5]
    assert loc.cached == 3
    with pytest.raises(ValueError, match="hold no position queries"):
        AttentionLocality(layers=[1]).setup(trainer, module, "fit")


def test_config_errors_name_the_problem():
    with pytest.raises(KeyError, match=f"unknown schedule '{UNKNOWN}'"):
        SampleGrids(schedules=[UNKNOWN])
    with pytest.raises(ValueError, match="every_n_epochs"):
        AttentionLocality(every_n_epochs=0)
    with pytest.raises(ValueError, match="radius"):
        AttentionLocality(radius=-1)
    module = TinyModule()
    with pytest.raises(ValueError, match="outside 1..N=20"):
        SampleGrids(schedules=["random"], steps=[21]).setup(None, module, "fit")


def test_callbacks_parse_from_yaml():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--callbacks", type=list[L.Callback])
    cfg = parser.parse_string("""
callbacks:
  - class_path: orderlab.train.callbacks.AttentionLocality
    init_args: {layers: [0, 2], schedules: [random, raster], steps: 8, radius: 2}
  - class_path: orderlab.train.callbacks.SampleGrids
    init_args: {schedules: [random], steps: [4, 8], cfg_scale: 2.0}
  - class_path: orderlab.train.callbacks.OrderPictures
""")
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    loc, grids, pics = instantiate(cfg).callbacks
    assert (loc.layers, loc.schedules, loc.steps, loc.radius) == ([0, 2], ["random", "raster"], 8, 2)
    assert (grids.steps, grids.cfg_scale) == ([4, 8], 2.0)
    assert pics.schedules is None


def test_image_grid_tiles_in_row_major_order():
    images = torch.tensor([0.0, 0.25, 1.0]).view(3, 1, 1, 1).expand(3, 1, 2, 2)  # (B, C, h, w)
    grid = image_grid(images, nrow=2, pad=1)  # (Hg, Wg, 3) uint8, grey padding and empty cells
    assert grid.shape == (2 * 3 + 1, 2 * 3 + 1, 3)
    assert grid[1, 1, 0] == 0 and grid[1, 4, 0] == 64 and grid[4, 1, 0] == 255 and grid[4, 4, 0] == 128
    assert grid[0, 0, 0] == 128


def test_upscale_reaches_the_short_side_by_a_whole_factor():
    images = torch.rand(2, 3, 8, 10)  # (B, C, h, w)
    big = upscale(images, 64)
    assert big.shape == (2, 3, 64, 80)
    torch.testing.assert_close(big[:, :, ::8, ::8], images)
    assert upscale(images, 8) is images
