import pytest
import torch
from helpers import tiny_model

from orderlab.decoding.decode import make_plans
from orderlab.decoding.scoring import training_logits
from orderlab.model.config import PRESETS, ModelConfig, drop_labels
from orderlab.model.masks import training_mask
from orderlab.model.registry import build_model

H, W = 4, 5


def _query_logits(model, labels, seq_tok, seq_pos, sizes):
    mask = training_mask(sizes, 1, model.config.mutual, model.config.block)
    return model(labels, seq_tok, seq_pos, mask, num_logits=H * W)  # (B, N, V) in plan order


def test_label_and_config_errors():
    model = tiny_model()
    plans, _ = make_plans("raster", H, W, None, 1, seed=0)
    with pytest.raises(ValueError, match="label 4 is out of range 0..3"):
        training_logits(model, torch.tensor([4]), torch.zeros(1, H, W, dtype=torch.long), plans)
    with pytest.raises(ValueError, match="model.preset='huge'"):
        ModelConfig(preset="huge")
    with pytest.raises(ValueError, match="null_class"):
        ModelConfig(num_classes=0, null_class=False)
    with pytest.raises(ValueError, match="mutual=false"):
        training_logits(tiny_model("decoupled", mutual=True), torch.tensor([0]),
                        torch.zeros(1, H, W, dtype=torch.long), make_plans("random", H, W, 4, 1, 0)[0])


def test_presets_build_with_llamagen_widths():
    assert PRESETS["L"] == dict(depth=24, dim=1024, heads=16)
    cfg = ModelConfig(preset="small", vocab_size=17)
    assert (cfg.depth, cfg.dim, cfg.heads) == (4, 128, 4)
    assert sum(p.numel() for p in build_model(cfg).parameters()) > 100_000


def test_drop_labels_is_seeded():
    labels = torch.arange(100) % 10
    a = drop_labels(labels, 0.3, 10, torch.Generator().manual_seed(0))
    b = drop_labels(labels, 0.3, 10, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and 10 < (a == 10).sum() < 50
