"""The attention probe: off by default and free when off; records the chosen layers when on."""

import pytest
import torch
from helpers import tiny_model

from orderlab.decoding.decode import make_plans
from orderlab.decoding.scoring import training_logits
from orderlab.model.probe import probe_attention

H, W = 4, 5


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
