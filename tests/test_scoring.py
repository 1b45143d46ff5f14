"""Train == decode: the cached step-by-step decoder reproduces one training forward, for every schedule."""

import torch
from helpers import tiny_model

from orderlab.decoding.decode import make_plans
from orderlab.decoding.scoring import token_logprobs

H, W = 4, 5


def test_logprobs_agree_and_are_normalised():
    model = tiny_model()
    tokens = torch.randint(0, 7, (2, H, W), generator=torch.Generator().manual_seed(0))
    plans, _ = make_plans("locality", H, W, 6, 2, seed=0)
    fwd = token_logprobs(model, torch.tensor([0, 1]), tokens, plans, "forward")
    step = token_logprobs(model, torch.tensor([0, 1]), tokens, plans, "stepwise")
    torch.testing.assert_close(fwd, step, rtol=0, atol=1e-6)
    assert fwd.shape == (2, H * W) and (fwd <= 0).all()
