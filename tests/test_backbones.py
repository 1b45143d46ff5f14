"""The backbone contract, held over every registered backbone and one more defined here.

``QueriesFirst`` is a fourth backbone that lives only in this file: the stream model with its training rows in
another order (queries before content). It is registered for this module only and must pass every contract test
without a line under ``src/`` knowing it exists.
"""

import pytest
import torch
from helpers import SETTINGS, knob_settings, tiny_model

from orderlab import list_schedules
from orderlab.decoding.decode import generate, make_plans, run_plans
from orderlab.decoding.scoring import stepwise_logits, training_logits
from orderlab.model.backbones.stream import StreamTransformer
from orderlab.model.base import COND, CONTENT, QUERY, Backbone, Rows
from orderlab.model.probe import probe_attention
from orderlab.model.registry import BACKBONES, get_backbone, list_backbones, register_backbone

H, W = 4, 5
TEST_NAME = "test-queries-first"


class QueriesFirst(StreamTransformer):
    """The stream model, training rows laid out as [cond] + [queries (N)] + [content (Nc)]."""

    def train_rows(self, targets, orders, sizes, mutual=None, block=None) -> Rows:
        rows = super().train_rows(targets, orders, sizes, mutual, block)
        c = self.config.cond_tokens
        perm = torch.cat([torch.nonzero(rows.kinds == k).flatten() for k in (COND, QUERY, CONTENT)])
        body = perm[c:] - c  # the same order over the non-condition rows
        mask = rows.mask[perm][:, perm]
        where = torch.empty_like(perm)
        where[perm] = torch.arange(len(perm))
        return Rows(rows.tokens[:, body], rows.positions[:, body], mask, where[rows.logit_rows], 0,
                    rows.kinds[perm], rows.index[perm])


@pytest.fixture(scope="module", autouse=True)
def _test_backbone():
    register_backbone(TEST_NAME)(QueriesFirst)
    yield
    BACKBONES.unregister(TEST_NAME)


NAMES = [*list_backbones(), TEST_NAME]
KNOBS = knob_settings() + [(TEST_NAME, *s) for s in SETTINGS]
IDS = ["-".join(map(str, k)) for k in KNOBS]


def _mutual(name: str) -> bool:
    return QueriesFirst.mutual_queries if name == TEST_NAME else get_backbone(name).mutual_queries


def test_the_builtins_are_registered_and_flex_is_an_alias():
    assert {"stream", "decoupled", "randar"} <= set(list_backbones())
    assert all(issubclass(get_backbone(n), Backbone) for n in list_backbones())
    with pytest.warns(FutureWarning, match="'flex' is deprecated"):
        model = tiny_model("flex")
    assert type(model).__name__ == "StreamTransformer" and model.config.arch == "stream"
    with pytest.raises(ValueError, match="unknown backbone 'no-such-plugin'.*choose one of"):
        tiny_model("no-such-plugin")
    with pytest.raises(ValueError, match="model.backbone.options.mdoe: backbone 'randar' has no such option; did you mean"):
        tiny_model("randar", options={"mdoe": "causal"})


@pytest.mark.parametrize("knobs", KNOBS, ids=IDS)
@pytest.mark.parametrize("schedule", list_schedules())
def test_train_equals_decode(schedule, knobs):
    """One training forward and the cached step-by-step decoder give the same logits (float64)."""
    model = tiny_model(*knobs, height=H, width=W)
    tokens = torch.randint(0, 7, (3, H, W), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2, 3])  # 3 is the null class
    for steps in (1, 3, None, H * W):
        plans, _ = make_plans(schedule, H, W, steps, 3, seed=5)
        a = training_logits(model, labels, tokens, plans)
        b = stepwise_logits(model, labels, tokens, plans)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("knobs", KNOBS, ids=IDS)
def test_no_leakage_from_later_or_same_group_tokens(knobs):
    model = tiny_model(*knobs, height=H, width=W)
    plans, _ = make_plans("random", H, W, 5, 1, seed=0)
    plan = plans[0]
    tokens = torch.randint(0, 7, (1, H * W), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1])
    base = training_logits(model, labels, tokens.view(1, H, W), plans)[0]  # (N, V) row-major
    for t in range(plan.num_steps):
        pos = int(plan.order[plan.offsets[t]])  # a token of group t
        changed = tokens.clone()
        changed[0, pos] = (changed[0, pos] + 1) % 7
        diff = (training_logits(model, labels, changed.view(1, H, W), plans)[0] - base).abs().amax(-1)  # (N,)
        assert diff[plan.step_of <= t].max() == 0, f"group {t}'s token leaked into groups <= {t}"
        if t < plan.num_steps - 1:
            assert diff[plan.step_of > t].max() > 0, "later groups must see the token"


@pytest.mark.parametrize("knobs", KNOBS, ids=IDS)
def test_a_query_target_reaches_its_own_group_only(knobs):
    """Moving one query's target position changes that query, its group's queries exactly when ``mutual``, and
    never another group (queries are not content)."""
    arch, mutual = knobs[0], knobs[1]
    model = tiny_model(*knobs, height=H, width=W)
    plans, _ = make_plans("random", H, W, 4, 1, seed=2)
    sizes, order = plans[0].sizes, plans[0].order.unsqueeze(0)  # (1, N)
    targets = torch.randint(0, 7, (1, H * W), generator=torch.Generator().manual_seed(1))
    rows = model.train_rows(targets, order, sizes)
    group = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))  # (N,) plan order
    j = sizes[0] + 1  # the second query of group 1
    assert group[j] == 1 and sizes[1] >= 2
    base = model.forward_rows(torch.tensor([0]), rows)[0]  # (N, V) plan order
    c = model.config.cond_tokens
    r = int(rows.logit_rows[j]) - c  # the query row of plan index j, among the non-condition rows
    moved = rows.positions.clone()
    moved[0, r] = (moved[0, r] + 7) % (H * W)
    diff = (model.forward_rows(torch.tensor([0]), Rows(rows.tokens, moved, rows.mask, rows.logit_rows))[0]
            - base).abs().amax(-1)
    assert diff[j] > 0
    others = (group == 1) & (torch.arange(H * W) != j)
    if mutual:
        assert diff[others].max() > 0, "mutual queries must see each other"
    else:
        assert diff[others].max() == 0
    if arch != "randar":  # RandAR's instruction tokens stay visible to later groups, by design
        assert diff[group != 1].max() == 0
    else:
        assert diff[group < 1].max() == 0


@pytest.mark.parametrize("name", NAMES)
def test_raster_one_token_per_step_is_a_plain_causal_transformer(name):
    """At one token per step, each position's logits equal a lower-triangular run over the backbone's rows for
    [cond, its raster prefix, its query], built through the independent token-level layout."""
    model = tiny_model(name, mutual=False, height=3, width=3)
    n = 9
    tokens = torch.randint(0, 7, (2, 3, 3), generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([1, 2])
    plans, _ = make_plans("raster", 3, 3, n, 2, seed=0)
    ours = training_logits(model, labels, tokens, plans)  # (B, N, V) row-major = plan order
    flat = tokens.reshape(2, n)
    for p in range(n):
        rows = model.token_rows(flat[:, :p], torch.arange(p).expand(2, -1), torch.tensor([[p], [p]]),
                                torch.ones(p, p, dtype=torch.bool).tril(), torch.ones(1, p, dtype=torch.bool), 0, True)
        assert torch.equal(rows.mask, torch.ones_like(rows.mask).tril()), "the layout is not causal"
        ref = model(labels, rows.tokens, rows.positions, rows.mask, logit_rows=rows.logit_rows)[:, 0]  # (B, V)
        torch.testing.assert_close(ours[:, p], ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_a_batch_decodes_like_its_items_one_by_one(name):
    model = tiny_model(name, mutual=_mutual(name))
    labels = torch.tensor([0, 1, 2])
    kwargs = dict(cfg_scale=2.0, cfg_schedule="linear_token", temperature=1.0, top_k=5, top_p=0.9)
    batch = generate(model, "locality", 6, labels, seed=10, **kwargs)
    for i in range(3):
        alone = generate(model, "locality", 6, labels[i:i + 1], seed=10, first_index=i, **kwargs)
        assert torch.equal(alone[0], batch[i])
        # a batch that starts later in the run (evaluation's second batch) continues the numbering
        assert torch.equal(generate(model, "locality", 6, labels[i:], seed=10, first_index=i, **kwargs)[0], batch[i])
    assert torch.equal(batch, generate(model, "locality", 6, labels, seed=10, **kwargs))
    assert not torch.equal(batch, generate(model, "locality", 6, labels, seed=11, **kwargs))


@pytest.mark.parametrize("name", NAMES)
def test_the_kv_cache_holds_what_the_steps_cached(name):
    """The cache grows by each step's cached rows, fits in its slots, and is freed after decoding."""
    model = tiny_model(name, mutual=_mutual(name))
    grown = []
    step_rows = model.step_rows

    def recording(*args, **kwargs):
        rows = step_rows(*args, **kwargs)
        grown.append(rows.cache_rows)
        return rows

    model.step_rows = recording
    _, info = generate(model, "random", 6, torch.tensor([0, 1]), seed=0, return_info=True)
    assert info.kv_lengths == torch.cumsum(torch.tensor(grown), 0).tolist()
    assert info.kv_lengths[-1] <= model.cache_slots()
    assert model.cache_nbytes() == 0 and model.cache_length == 0
    model.setup_cache(2)
    per_slot = model.cache_nbytes() / model.cache_slots()
    assert per_slot > 0 and model.cache_nbytes() == per_slot * model.cache_slots()
    model.reset_cache()


@pytest.mark.parametrize("name", NAMES)
def test_the_attention_probe_sees_every_layer_and_respects_the_mask(name):
    model = tiny_model(name, mutual=_mutual(name))
    plans, _ = make_plans("random", H, W, 5, 2, seed=0)
    tokens = torch.randint(0, 7, (2, H, W), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1])
    base = training_logits(model, labels, tokens, plans)
    count = len(model.attention_modules())
    with probe_attention(model) as probe:
        probed = training_logits(model, labels, tokens, plans)
    torch.testing.assert_close(base, probed, rtol=0, atol=0)
    assert sorted(probe.weights) == list(range(count)) and all(m.probe is None for m in model.attention_modules())
    order = torch.stack([p.order for p in plans])
    rows = model.train_rows(torch.gather(tokens.reshape(2, -1), 1, order), order, plans[0].sizes)
    for layer, (r, k) in enumerate(model.attention_views(rows)):
        w = probe.weights[layer][0]  # (B, Hh, R, K)
        allowed = rows.mask[r if r is not None else slice(None)][:, k if k is not None else slice(None)]
        assert w.shape[2:] == allowed.shape
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:3]))
        assert w.masked_select(~allowed).abs().max() == 0 if (~allowed).any() else True


@pytest.mark.parametrize("name", NAMES)
def test_cfg_at_scale_zero_is_the_unconditional_model(name):
    """cfg_scale = 0 keeps only the null-class logits: the same logits as decoding with the null label itself."""
    model = tiny_model(name, mutual=_mutual(name))
    plans, _ = make_plans("random", H, W, 5, 2, seed=1)
    tokens = torch.randint(0, 7, (2, H * W), generator=torch.Generator().manual_seed(2))
    seen = {}

    def teacher(key):
        def pick(t, logits, positions):
            seen.setdefault(key, []).append(logits)
            return torch.gather(tokens, 1, positions)
        return pick

    run_plans(model, torch.tensor([0, 1]), plans, teacher("cfg0"), cfg_scale=0.0)
    run_plans(model, torch.tensor([3, 3]), plans, teacher("null"))
    run_plans(model, torch.tensor([0, 1]), plans, teacher("cond"))
    for a, b in zip(seen["cfg0"], seen["null"]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert any((a - b).abs().max() > 1e-6 for a, b in zip(seen["cfg0"], seen["cond"]))


@pytest.mark.parametrize("name", NAMES)
def test_inpainting_keeps_known_tokens_and_conditions_on_them(name):
    model = tiny_model(name, mutual=_mutual(name))
    known_tokens = torch.randint(0, 7, (2, H, W), generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[:2] = True
    labels = torch.tensor([0, 1])
    out = generate(model, "random", 4, labels, known=(known_tokens, mask), seed=3)
    assert torch.equal(out[:, :2], known_tokens[:, :2])
    # the generated tokens condition on the known ones: other known tokens, other first-step logits
    plans, _ = make_plans("random", H, W, 4, 2, seed=3, known_masks=[mask, mask])
    first = []

    def pick(t, logits, positions):
        first.append(logits) if t == 0 else None
        return logits.argmax(-1)

    other = known_tokens.clone()
    other[:, :2] = (other[:, :2] + 1) % 7
    for known in (known_tokens, other):
        run_plans(model, labels, plans, pick, known_tokens=known.reshape(2, -1))
    assert (first[0] - first[1]).abs().max() > 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    model = tiny_model(name, mutual=False, dtype=torch.float32).train()
    tokens = torch.randint(0, 7, (4, H, W))
    plans, _ = make_plans("random", H, W, H * W, 4, seed=0)
    logits = training_logits(model, torch.tensor([0, 1, 2, 3]), tokens, plans)
    torch.nn.functional.cross_entropy(logits.reshape(-1, 7), tokens.reshape(-1)).backward()
    assert torch.isfinite(logits).all()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


@pytest.mark.parametrize("name", NAMES)
def test_jacobi_greedy_equals_raster_greedy(name):
    model = tiny_model(name, mutual=False)
    labels = torch.tensor([0, 1])
    raster = generate(model, "raster", None, labels, temperature=0)
    for decoder in ("sjd", "pjd"):
        assert torch.equal(generate(model, "raster", None, labels, temperature=0, decoder=decoder), raster)


@pytest.mark.parametrize("name", NAMES)
def test_attention_maps_account_for_every_query(name):
    """The locality maps read each backbone's own layout: per query layer, content + condition + query mass is 1
    and the map holds exactly the content mass measured on the canonical key order."""
    from orderlab.analysis.attention_maps import attention_locality, query_layers

    model = tiny_model(name, mutual=_mutual(name), height=3, width=4)
    tokens = torch.randint(0, 7, (3, 3, 4), generator=torch.Generator().manual_seed(1))
    plans, _ = make_plans("random", 3, 4, 5, 3, seed=7)
    out = attention_locality(model, tokens, torch.tensor([0, 1, 2]), plans, chunk=2)
    assert sorted(out.maps) == query_layers(model) != []
    for layer in out.maps:
        assert out.content_mass[layer] + out.cond_mass[layer] + out.query_mass[layer] == pytest.approx(1, abs=1e-6)  # the probe keeps float32
        assert float(out.maps[layer].sum()) == pytest.approx(out.content_mass[layer], abs=1e-6)
        assert float(out.maps[layer][2, 3]) == 0.0  # no query sees its own target


def test_decoupled_cache_is_smaller():
    stream, dec = tiny_model("stream", depth=4), tiny_model("decoupled", mutual=False, depth=4)
    for m in (stream, dec):
        m.setup_cache(2)
    # 2 content layers + 1 shared K/V against 4 layers
    assert dec.cache_nbytes() * 4 == stream.cache_nbytes() * 3
