"""Jacobi decoding of raster models (SJD, PJD): greedy == raster greedy, the sampled joint == the AR joint
(chi-square against the exact joint from teacher-forced scoring), pass/KV invariants, knob errors, benchmark."""

import itertools

import pytest
import torch
from helpers import UNKNOWN, tiny_model
from scipy.stats import chisquare

from orderlab import PlanError
from orderlab.analysis.jacobi_bench import bench_jacobi, train_toy_raster_model
from orderlab.decoding import jacobi
from orderlab.decoding.decode import generate, make_plans
from orderlab.decoding.jacobi import pjd_decode, sjd_decode
from orderlab.decoding.scoring import token_logprobs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

H, W = 3, 4
SETTINGS = [
    ("sjd", dict(window=1)),
    ("sjd", dict(window=3)),
    ("sjd", dict(window=5, init="repeat_left")),
    ("sjd", dict(window=16)),
    ("pjd", dict(window=2, row_lag=1)),
    ("pjd", dict(window=3, row_lag=2, init="repeat_left")),
    ("pjd", dict(window=5, row_lag=1, init="repeat_left")),  # here a fully locked row also commits exactly
    ("pjd", dict(window=4, row_lag=W)),
    ("pjd", dict(window=3, row_lag=W, commit="rowwise")),  # one row at a time: row-wise commits are exact
]


def busy_model(arch="stream"):
    """A tiny float64 model re-initialised with large weights: its argmax depends on the context (the 0.02 init
    gives nearly constant greedy images), so drafts and locked tokens really get rejected."""
    model = tiny_model(arch, mutual=arch == "stream", height=H, width=W, vocab=6)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


@pytest.mark.parametrize("decoder,args", SETTINGS, ids=lambda x: str(x))
@pytest.mark.parametrize("arch,cfg", [("stream", 1.0), ("stream", 3.0), ("decoupled", 2.0)])
def test_greedy_equals_raster_greedy(decoder, args, arch, cfg):
    model = busy_model(arch)
    labels = torch.tensor([0, 1, 2, 3])
    ref = generate(model, "raster", H * W, labels, temperature=0, cfg_scale=cfg)
    for seed in (0, 7):
        out, info = generate(model, "raster", None, labels, temperature=0, cfg_scale=cfg, seed=seed,
                             decoder=decoder, decoder_args=args, return_info=True)
        assert torch.equal(out, ref)
        assert info.decoder == decoder and sum(info.accepted_per_pass) == 4 * H * W
        assert set(info.rows_per_pass) == {2 if cfg != 1.0 else 1}


def test_rowwise_pjd_top_row_is_exact():
    """Row-wise PJD commits lower rows on a partial context (approximate), but the first row is always exact."""
    model = busy_model()
    labels = torch.arange(4)
    ref = generate(model, "raster", None, labels, temperature=0)
    out = generate(model, "raster", None, labels, temperature=0, decoder="pjd",
                   decoder_args=dict(window=3, row_lag=1, commit="rowwise"))
    assert torch.equal(out[:, 0], ref[:, 0])
    assert not torch.equal(out, ref)  # the approximation is real on this model (commit="exact" matches, above)


def test_passes_commits_and_kv_cache():
    model = tiny_model(height=H, width=W, vocab=6)
    n, c = H * W, model.config.cond_tokens
    labels = torch.tensor([0, 1, 2])
    _, info = sjd_decode(model, labels, window=1, seed=0)
    assert info.passes_per_sample == [n] * 3 and info.accepted_per_pass == [1] * (3 * n)
    for window in (2, 4, 16):
        _, info = sjd_decode(model, labels, window=window, seed=1)
        assert min(info.accepted_per_pass) >= 1 and max(info.accepted_per_pass) <= window
        assert sum(info.passes_per_sample) == info.forward_passes == len(info.kv_lengths)
        # the cache holds cond + every committed token but the newest, which the next pass feeds first (SJD's x_a)
        assert info.kv_lengths == [c + k - 1 for k in info.committed_per_pass]
    for commit in ("exact", "rowwise"):
        _, info = pjd_decode(model, labels, window=3, row_lag=1, commit=commit, seed=2)
        assert min(info.accepted_per_pass) >= 1
        assert all(kv <= c + k for kv, k in zip(info.kv_lengths, info.committed_per_pass))


def test_batch_equals_items_and_seeds():
    model = tiny_model(height=H, width=W, vocab=6)
    labels = torch.tensor([0, 1, 2])
    kwargs = dict(cfg_scale=2.0, cfg_schedule="linear_token", top_k=4, decoder="pjd", decoder_args=dict(window=3))
    batch = generate(model, "raster", None, labels, seed=5, **kwargs)
    for i in range(3):
        assert torch.equal(generate(model, "raster", None, labels[i:i + 1], seed=5, first_index=i, **kwargs)[0], batch[i])
    assert not torch.equal(batch, generate(model, "raster", None, labels, seed=6, **kwargs))


def test_bad_knobs_fail_clearly():
    model = tiny_model(height=H, width=W, vocab=6)
    labels = torch.tensor([0])
    cases = [
        (dict(decoder=UNKNOWN), f"unknown decoder '{UNKNOWN}'"),
        (dict(decoder="sjd", decoder_args=dict(windw=3)), "decoder 'sjd' has no knob 'windw'"),
        (dict(decoder="sjd", decoder_args=dict(row_lag=1)), "decoder 'sjd' has no knob 'row_lag'"),
        (dict(decoder="sjd", decoder_args=dict(window=0)), r"decoder_args\['window'\]=0 must be an int >= 1"),
        (dict(decoder="sjd", decoder_args=dict(window=2.5)), r"decoder_args\['window'\]=2.5"),
        (dict(decoder="pjd", decoder_args=dict(init="zeros")), r"decoder_args\['init'\]='zeros' is not one of"),
        (dict(decoder="pjd", decoder_args=dict(row_lag=W + 1)), r"decoder_args\['row_lag'\]=5 must be an int in 1..4"),
        (dict(decoder="pjd", decoder_args=dict(commit="lazy")), r"decoder_args\['commit'\]='lazy'"),
        (dict(decoder="plan", decoder_args=dict(window=3)), "decoder 'plan' takes no decoder_args"),
        (dict(decoder="sjd", decoder_args=[3]), "decoder_args must be a dict"),
        (dict(decoder="sjd", temperature=-1.0), "temperature >= 0"),
        (dict(decoder="sjd", known=(torch.zeros(1, H, W, dtype=torch.long), torch.zeros(H, W, dtype=torch.bool))),
         "does not support known tokens"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            generate(model, "raster", None, labels, **kwargs)
    with pytest.raises(ValueError, match="decoder='sjd' needs a raster model decoded one token per step"):
        generate(model, "raster", 4, labels, decoder="sjd")
    with pytest.raises(ValueError, match="got 'random'"):
        generate(model, "random", H * W, labels, decoder="pjd")
    with pytest.raises(PlanError, match="steps=13"):
        generate(model, "raster", 13, labels, decoder="sjd")
    with pytest.raises(ValueError, match="null class"):
        sjd_decode(tiny_model(height=H, width=W, null_class=False), labels, cfg_scale=2.0)


# ------------------------------------------------------------------------------ distribution: chi-square
S = 1000  # samples per chi-square test (about 5 s each on one core)


@pytest.fixture(scope="module")
def toy():
    """A 3x2 grid, V = 4 model with a peaked but context-dependent joint (about 9 bits) and its exact AR joint.

    Three rows of two: PJD has several rows active, and fully locked rows below the top row get committed."""
    model = tiny_model(height=3, width=2, vocab=4, classes=2, depth=1, seed=0)
    with torch.no_grad():
        model.head.weight.mul_(8)
    seqs = torch.tensor(list(itertools.product(range(4), repeat=6)))  # (4096, 6) every sequence
    plans, _ = make_plans("raster", 3, 2, None, seqs.shape[0], 0)
    with torch.no_grad():
        lp = token_logprobs(model, torch.ones(seqs.shape[0], dtype=torch.long), seqs.view(-1, 3, 2), plans)
    joint = lp.double().sum(1).exp()  # (4096,) p(x) = prod_i p(x_i | x_<i)
    assert abs(float(joint.sum()) - 1) < 1e-4
    return model, joint


def _chi2_pvalue(tokens: torch.Tensor, joint: torch.Tensor) -> float:
    """Goodness of fit of sampled sequences to the exact joint; cells expecting < 5 are pooled into one."""
    idx = (tokens.reshape(tokens.shape[0], -1) * 4 ** torch.arange(5, -1, -1)).sum(1)
    obs = torch.bincount(idx, minlength=joint.numel()).double()
    exp = joint * tokens.shape[0]
    big = exp >= 5
    obs = torch.cat([obs[big], obs[~big].sum().view(1)])
    exp = torch.cat([exp[big], exp[~big].sum().view(1)])
    return float(chisquare(obs.numpy(), (exp * obs.sum() / exp.sum()).numpy()).pvalue)


@pytest.mark.parametrize("fn,kwargs", [
    (sjd_decode, dict(window=3)),
    (pjd_decode, dict(window=3, row_lag=1, init="repeat_left")),  # exact mode: both rows active at once
], ids=["sjd", "pjd-exact"])
def test_sampled_joint_matches_ar_joint(toy, fn, kwargs):
    model, joint = toy
    tokens, info = fn(model, torch.ones(S, dtype=torch.long), seed=1000, **kwargs)
    assert info.mean_accepted > 1.5  # drafts are really accepted
    assert _chi2_pvalue(tokens, joint) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["accept_always", "residual_is_p"])
def test_the_chi_square_test_rejects_wrong_rules(toy, monkeypatch, rule):
    model, joint = toy
    if rule == "accept_always":
        monkeypatch.setattr(jacobi, "_accepts", lambda u, p_d, q_d: torch.ones_like(p_d, dtype=torch.bool))
        tokens, _ = sjd_decode(model, torch.ones(S, dtype=torch.long), seed=1000, window=3)
    else:  # the classic bug: resample from p instead of max(p - q, 0)
        monkeypatch.setattr(jacobi, "_residual", lambda p, q: p)
        tokens, _ = pjd_decode(model, torch.ones(S, dtype=torch.long), seed=1000, window=3, row_lag=1,
                               init="repeat_left")
    assert _chi2_pvalue(tokens, joint) < 1e-6


# ------------------------------------------------------------------------------ benchmark on a trained toy model
def test_bench_on_a_toy_raster_model():
    model = train_toy_raster_model(height=3, width=4, vocab=6, steps=80, batch=32)
    settings = [("sjd", dict(window=8)), ("pjd", dict(window=3, row_lag=1))]
    rows = bench_jacobi(model, batch=2, repeats=1, settings=settings, temperature=0.0)
    assert [r["decoder"] for r in rows] == ["raster", "sjd", "pjd"]
    assert rows[0]["passes_per_image"] == 12 and rows[0]["speedup_vs_raster"] == 1.0
    for r in rows[1:]:
        assert 1 <= r["passes_per_image"] < 12 and r["mean_accepted"] > 1.2 and r["seconds"] > 0
        assert r["pass_reduction"] == pytest.approx(12 / r["passes_per_image"], rel=0.01)
