"""Train == decode: the cached step-by-step decoder reproduces one training forward, for every schedule."""

import pytest
import torch
from helpers import KNOBS, tiny_model

from orderlab import list_schedules
from orderlab.decoding.decode import make_plans
from orderlab.decoding.scoring import stepwise_logits, token_logprobs, training_logits
from orderlab.model.masks import training_mask

H, W = 4, 5


@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: "-".join(map(str, k)))
@pytest.mark.parametrize("schedule", list_schedules())
def test_train_equals_decode(schedule, knobs):
    model = tiny_model(*knobs, height=H, width=W)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 7, (3, H, W), generator=gen)
    labels = torch.tensor([0, 2, 3])  # 3 is the null class
    for steps in (1, 3, None, H * W):
        plans, _ = make_plans(schedule, H, W, steps, 3, seed=5)
        a = training_logits(model, labels, tokens, plans)
        b = stepwise_logits(model, labels, tokens, plans)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_logprobs_agree_and_are_normalised():
    model = tiny_model()
    tokens = torch.randint(0, 7, (2, H, W), generator=torch.Generator().manual_seed(0))
    plans, _ = make_plans("locality", H, W, 6, 2, seed=0)
    fwd = token_logprobs(model, torch.tensor([0, 1]), tokens, plans, "forward")
    step = token_logprobs(model, torch.tensor([0, 1]), tokens, plans, "stepwise")
    torch.testing.assert_close(fwd, step, rtol=0, atol=1e-6)
    assert fwd.shape == (2, H * W) and (fwd <= 0).all()


@pytest.mark.parametrize("arch", ["flex", "decoupled"])
def test_raster_one_token_per_step_is_a_plain_causal_transformer(arch):
    """Position p's logits equal a plain lower-triangular (causal) run over [cond, x_0..x_{p-1}, query_p]."""
    model = tiny_model(arch, mutual=False, height=3, width=3)
    n = 9
    tokens = torch.randint(0, 7, (2, 3, 3), generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([1, 2])
    plans, _ = make_plans("raster", 3, 3, n, 2, seed=0)
    ours = training_logits(model, labels, tokens, plans)  # (B, N, V)
    flat = tokens.reshape(2, n)
    for p in range(n):
        seq = torch.cat([flat[:, :p], torch.full((2, 1), model.mask_id)], dim=1)  # (B, p + 1)
        pos = torch.cat([torch.arange(p), torch.tensor([p])]).expand(2, -1)
        causal = torch.ones(p + 2, p + 2, dtype=torch.bool).tril()
        ref = model(labels, seq, pos, causal, num_logits=1)[:, 0]  # (B, V)
        torch.testing.assert_close(ours[:, p], ref, rtol=0, atol=1e-10)
    # and the raster training mask is exactly that pattern: content causal, each query sees its prefix and itself
    m = training_mask((1,) * n, 1, mutual=False, block=False)
    content = m[: 1 + n - 1, : 1 + n - 1]
    assert torch.equal(content, torch.ones_like(content).tril())
