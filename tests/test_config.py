import pytest
import torch
from helpers import tiny_model

from orderlab.decoding.decode import make_plans
from orderlab.decoding.scoring import training_logits
from orderlab.model.config import PRESETS, ModelConfig, drop_labels
from orderlab.model.masks import training_mask
from orderlab.model.probe import probe_attention
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


def test_attention_probe_is_off_by_default_and_records_when_on():
    model = tiny_model()
    tokens = torch.randint(0, 7, (2, H, W))
    plans, _ = make_plans("random", H, W, 5, 2, seed=0)
    labels = torch.tensor([0, 1])
    assert all(m.probe is None for m in model.attention_modules())
    base = training_logits(model, labels, tokens, plans)
    with probe_attention(model, layers=[0, 2]) as probe:
        probed = training_logits(model, labels, tokens, plans)
    assert all(m.probe is None for m in model.attention_modules())
    torch.testing.assert_close(base, probed)
    assert sorted(probe.weights) == [0, 2] and len(probe.weights[0]) == 1
    w = probe.weights[2][0]
    n_rows = 1 + (H * W - plans[0].sizes[-1]) + H * W
    assert w.shape == (2, 2, n_rows, n_rows)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, n_rows))
    with pytest.raises(ValueError, match="do not exist"):
        with probe_attention(model, layers=[7]):
            pass


def test_decoupled_cache_is_smaller():
    flex, dec = tiny_model("stream", depth=4), tiny_model("decoupled", mutual=False, depth=4)
    for m in (flex, dec):
        m.setup_cache(2)
    # 2 content layers + 1 shared K/V against 4 layers
    assert dec.cache_nbytes() * 4 == flex.cache_nbytes() * 3
