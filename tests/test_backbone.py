import pytest
import torch
from helpers import KNOBS, tiny_model

from orderlab.decoding.decode import make_plans
from orderlab.decoding.scoring import training_logits
from orderlab.model.config import PRESETS, ModelConfig, drop_labels
from orderlab.model.masks import training_mask, training_sequence
from orderlab.model.probe import probe_attention
from orderlab.model.registry import build_model

H, W = 4, 5


def _query_logits(model, labels, seq_tok, seq_pos, sizes):
    mask = training_mask(sizes, 1, model.config.mutual, model.config.block)
    return model(labels, seq_tok, seq_pos, mask, num_logits=H * W)  # (B, N, V) in plan order


@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: "-".join(map(str, k)))
def test_no_leakage_from_later_or_same_group_tokens(knobs):
    model = tiny_model(*knobs, height=H, width=W)
    plans, _ = make_plans("random", H, W, 5, 1, seed=0)
    sizes = plans[0].sizes
    offsets = plans[0].offsets
    tokens = torch.randint(0, 7, (1, H * W), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1])
    base = training_logits(model, labels, tokens.view(1, H, W), plans)[0]  # (N, V) row-major
    step_of = plans[0].step_of
    for t in range(len(sizes)):
        pos = int(plans[0].order[offsets[t]])  # a token of group t
        changed = tokens.clone()
        changed[0, pos] = (changed[0, pos] + 1) % 7
        new = training_logits(model, labels, changed.view(1, H, W), plans)[0]
        diff = (new - base).abs().amax(-1)  # (N,)
        assert diff[step_of <= t].max() == 0, f"group {t} token leaked into groups <= {t}"
        if t < len(sizes) - 1:
            assert diff[step_of > t].max() > 0, "later groups must see the token"


@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: "-".join(map(str, k)))
def test_query_target_position_reaches_only_its_own_group(knobs):
    arch, mutual = knobs[0], knobs[1]
    model = tiny_model(*knobs, height=H, width=W)
    plans, _ = make_plans("random", H, W, 4, 1, seed=2)
    sizes, order = plans[0].sizes, plans[0].order.unsqueeze(0)
    tokens = torch.randint(0, 7, (1, H * W), generator=torch.Generator().manual_seed(1))
    seq_tok, seq_pos, _ = training_sequence(tokens, order, sizes, model.mask_id)
    labels = torch.tensor([0])
    base = _query_logits(model, labels, seq_tok, seq_pos, sizes)[0]  # (N, V) plan order
    group = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    nc = H * W - sizes[-1]
    j = sizes[0] + 1  # second query of group 1 (size >= 2)
    assert group[j] == 1 and sizes[1] >= 2
    moved = seq_pos.clone()
    moved[0, nc + j] = (moved[0, nc + j] + 7) % (H * W)
    diff = (_query_logits(model, labels, seq_tok, moved, sizes)[0] - base).abs().amax(-1)
    assert diff[group != 1].max() == 0
    assert diff[j] > 0
    same_group_others = (group == 1) & (torch.arange(H * W) != j)
    if mutual:
        assert diff[same_group_others].max() > 0, "mutual queries must see each other"
    else:
        assert diff[same_group_others].max() == 0


@pytest.mark.parametrize("arch", ["flex", "decoupled"])
def test_gradients_reach_every_parameter_and_no_nan(arch):
    model = tiny_model(arch, mutual=False, dtype=torch.float32).train()
    tokens = torch.randint(0, 7, (4, H, W))
    plans, _ = make_plans("random", H, W, H * W, 4, seed=0)  # group 0's query sees only the condition
    logits = training_logits(model, torch.tensor([0, 1, 2, 3]), tokens, plans)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), tokens.reshape(-1))
    loss.backward()
    assert torch.isfinite(logits).all()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


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
    flex, dec = tiny_model("flex", depth=4), tiny_model("decoupled", mutual=False, depth=4)
    for m in (flex, dec):
        m.setup_cache(2)
    # 2 content layers + 1 shared K/V against 4 layers
    assert dec.cache_nbytes() * 4 == flex.cache_nbytes() * 3
