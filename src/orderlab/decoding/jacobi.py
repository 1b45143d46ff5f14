"""Training-free parallel decoding of raster models: SJD and a PJD-style 2-D mode (free functions taking the model).

Facts followed (the papers, and ``docs/jacobi.md``): SJD (Teng et al., arXiv 2410.01699) keeps a window
of L positions after the committed prefix: L-1 draft tokens plus one fresh position; one forward gives the final
sampling distribution p at every window position; drafts are accepted in order with probability min(1, p/q),
the first rejection is resampled from normalize(max(p - q, 0)) and ends the pass, all accepted means the fresh
position is sampled from p; positions after the commit point keep this pass's samples as drafts (their q = this
pass's p); freshly initialised drafts (``random`` or ``repeat_left``) have a one-hot q. PJD (Liao et al.,
arXiv 2606.05703; public text only): several rows active at once, a row starts when the row above has
``row_lag`` settled tokens (ZipAR-like), one window per active row, all windows in ONE forward, row-wise
verification, and a "row-causal" mask. The mask rule is OUR READING of the paper: a draft (or query) at (r, c)
sees every settled token before it in raster order and the drafts of its own row r with column < c; never the
drafts of other rows.

How a raster model gives p(x_i | x_<i) here: the flexible backbone predicts position i from a query token at
position i that sees the condition + content tokens 0..i-1 (masks.py, one token per step). One Jacobi forward
feeds, on top of the KV cache (cond + an exact raster prefix 0..m-1), content rows for every settled-but-uncached
and every draft position (sorted by position), then one query per window position; all content rows are
appended to the cache and the cache is truncated afterwards to the longest prefix whose K/V are exact (each row
saw its full raster prefix with its final tokens). So KV length = C + committed prefix with exact K/V after every
pass; for SJD that is every committed token but the newest, which the next pass feeds first (SJD's x_a).

Exact vs approximate (details in docs/jacobi.md):
* SJD is exact: samples follow the raster model's joint distribution; greedy equals raster greedy decoding.
* PJD ``commit="exact"`` (default): the top (first unfinished) row commits with SJD's rule against exact p (and
  so does the next row when every row above it was settled before the pass and is accepted in full). Lower rows
  run row-causal Jacobi whose row-wise accepted tokens are only *locked* (provisional, q = the row-causal p they
  follow) and re-verified every pass, finally against exact p in the top row. Distribution-exact and
  greedy-exact; lower rows only propose drafts. Exactness needs each draft to be distributed as its q given all
  earlier positions; it holds because information only flows downwards (a row never sees the rows below).
* PJD ``commit="rowwise"`` (the paper as we read it): lower rows commit on their row-causal p, which misses the
  unsettled tail of the rows above: approximate (the top row stays exact). ``row_lag = W`` makes it exact.

A batch is decoded item by item (Jacobi decoding is a latency method; samples accept different numbers of
tokens); CFG doubles the rows of each forward. Sample i draws everything from
``sample_generator(seed, first_index + i)`` (orderlab.seeding), as in plan decoding.
"""

from __future__ import annotations

import torch

from orderlab.checks import check_positive_int
from orderlab.decoding.info import DecodeInfo
from orderlab.decoding.sampling import cfg_scales, filter_logits
from orderlab.schedule import get_schedule
from orderlab.seeding import sample_generator

__all__ = ["sjd_decode", "pjd_decode", "check_decoder_args", "check_raster", "JACOBI_DECODERS", "KNOBS", "INITS",
           "COMMITS"]

EMPTY, DRAFT, LOCKED, DONE = 0, 1, 2, 3  # position status; LOCKED = settled in a lower row, not yet final
INITS = ("random", "repeat_left")
COMMITS = ("exact", "rowwise")
# knobs of each decoder and their defaults (SJD: L = 16 in all official configs; PJD's figure shows 3 drafts)
KNOBS: dict[str, dict] = {
    "sjd": dict(window=16, init="random"),
    "pjd": dict(window=4, init="random", row_lag=None, commit="exact"),
}


def check_decoder_args(decoder: str, args: dict | None, width: int) -> dict:
    """Validate ``decoder_args`` of a Jacobi decoder; return them with defaults filled in."""
    args = dict(args or {})
    known = KNOBS[decoder]
    bad = sorted(set(args) - set(known))
    if bad:
        raise ValueError(f"decoder {decoder!r} has no knob {bad[0]!r}; its knobs are {sorted(known)}")
    out = {**known, **args}
    w = out["window"]
    check_positive_int(w, "decoder_args['window']")
    if out["init"] not in INITS:
        raise ValueError(f"decoder_args['init']={out['init']!r} is not one of {list(INITS)}")
    if decoder == "pjd":
        lag = out["row_lag"]
        if lag is not None:
            check_positive_int(lag, "decoder_args['row_lag']", maximum=width)
        if out["commit"] not in COMMITS:
            raise ValueError(f"decoder_args['commit']={out['commit']!r} is not one of {list(COMMITS)}")
    return out


def check_raster(schedule, steps: int | None, height: int, width: int, decoder: str) -> None:
    """Jacobi decoders decode raster models: the plan must be row-major with one token per step."""
    plan = get_schedule(schedule).plan(height, width, steps)
    if not torch.equal(plan.order, torch.arange(height * width)) or set(plan.sizes) != {1}:
        raise ValueError(f"decoder={decoder!r} needs a raster model decoded one token per step: schedule "
                         f"'raster' with steps=None or {height * width}; got {get_schedule(schedule).name!r} "
                         f"with {plan.num_steps} steps")


# ------------------------------------------------------------------------------------------------ the two rules
# Module-level so that a test can swap in a deliberately wrong rule and see the chi-square test reject it.
def _accepts(u: torch.Tensor, p_d: torch.Tensor, q_d: torch.Tensor) -> torch.Tensor:
    """Accept each draft with probability min(1, p(d) / q(d)) (following SJD); all (Q,)."""
    return u * q_d < p_d


def _residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """normalize(max(p - q, 0)) up to scale (following SJD / speculative sampling); p where it vanishes. (Q, V)"""
    r = (p - q).clamp(min=0)
    return torch.where(r.sum(-1, keepdim=True) > 0, r, p)


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(Q,) draws from unnormalised (Q, V) probs at uniforms (Q,); never a zero-mass token."""
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    return idx.clamp(max=probs.shape[-1] - 1)


def _target(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """(Q, V) the final sampling distribution, as raster decoding samples it; one-hot argmax at temperature 0."""
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    work = logits.double() if logits.dtype == torch.float64 else logits.float()
    return filter_logits(work / temperature, top_k, top_p).softmax(-1)


# ---------------------------------------------------------------------------------------------- one sample
class _State:
    """Per-sample bookkeeping: tokens, status and draft distributions q of every position."""

    def __init__(self, n: int, v: int, device, dtype):
        self.tok = torch.zeros(n, dtype=torch.long)  # (N,) on the CPU
        self.status = [EMPTY] * n
        self.q = torch.zeros(n, v, device=device, dtype=dtype)  # (N, V) what each draft was drawn from

    def settled(self, p: int) -> bool:
        return self.status[p] in (LOCKED, DONE)


def _fill_window(st: _State, lo: int, hi: int, window: int, init: str, width: int, gen) -> int:
    """Refill the window [e, end) after a segment's settled prefix [lo, e): drafts at e..end-2, the last slot
    fresh (following SJD: L - 1 drafts + 1 new position); returns end."""
    e = lo
    while e < hi and st.settled(e):
        e += 1
    end = min(e + window, hi)
    for p in range(e, end - 1):
        if st.status[p] == EMPTY:  # a new slot: one-hot q at the initialised token (following SJD)
            src = p - 1 if p % width else p - width
            if init == "repeat_left" and src >= 0:
                t = int(st.tok[src])
            else:
                t = int(torch.randint(st.q.shape[1], (1,), generator=gen))
            st.tok[p] = t
            st.q[p].zero_()
            st.q[p, t] = 1
            st.status[p] = DRAFT
    for p in range(max(end - 1, e), hi):
        if st.status[p] == DRAFT:  # out of the window: dropped, to be re-initialised when the window gets there
            st.status[p] = EMPTY
    return end


def _visibility(st: _State, seg_of: list[int], fed: list[int], queries: list[int]):
    """Row-causal visibility between tokens: (Rc, Rc) fed token -> fed token and (Q, Rc) query -> fed token.

    The backbone turns these into rows and a mask (:meth:`orderlab.model.base.Backbone.token_rows`); every row also
    sees the condition and the exact cached prefix, and a query sees itself among the queries (ARPG-style).
    """
    pc, pq = torch.tensor(fed, dtype=torch.long), torch.tensor(queries, dtype=torch.long)  # (Rc,), (Q,)
    sc, sq = torch.tensor([seg_of[p] for p in fed]), torch.tensor([seg_of[p] for p in queries])
    settled = torch.tensor([st.settled(p) for p in fed], dtype=torch.bool)  # (Rc,)
    draft = ~settled
    rc = len(fed)
    # content row sees: settled before it, itself, and (if a draft) earlier drafts of its own segment
    before = pc.unsqueeze(0) < pc.unsqueeze(1)  # (Rc, Rc) [row, col]
    cc = (settled.unsqueeze(0) & before) | torch.eye(rc, dtype=torch.bool) | (
        draft.unsqueeze(1) & draft.unsqueeze(0) & (sc.unsqueeze(0) == sc.unsqueeze(1)) & before)
    # query at p sees: settled before p and drafts of its own segment before p (following PJD's row-causal mask)
    qbefore = pc.unsqueeze(0) < pq.unsqueeze(1)  # (Q, Rc)
    qc = (settled.unsqueeze(0) & qbefore) | (draft.unsqueeze(0) & (sc.unsqueeze(0) == sq.unsqueeze(1)) & qbefore)
    return cc, qc


def _update(st: _State, windows: list, acc: list, repl: list, fresh: list, top: int, commit: str) -> tuple[int, int]:
    """Row-wise verification (following SJD per window); returns (tokens made final, drafts accepted).

    A window keeps its accepted prefix, takes the residual sample at its first rejection (or the sample of its
    fresh slot) and stops there; later slots keep this pass's samples from p as drafts (the Jacobi update). Rows
    whose p is the exact conditional commit (DONE): the top row, and row s + 1 while every row up to s was settled
    before the pass and is accepted in full; other rows lock (commit="exact") or commit anyway ("rowwise").
    """
    idx, committed, hits = 0, 0, 0
    exact, prev = True, top - 1
    for s, ps, was_settled in windows:
        exact = exact and s == prev + 1
        final = DONE if exact or commit == "rowwise" else LOCKED
        stop = len(ps)
        for i, x in enumerate(ps):
            if acc[idx + i]:
                hits += 1
            else:
                st.tok[x], stop = repl[idx + i], i
            committed += final == DONE and st.status[x] != DONE
            st.status[x] = final
            if stop == i:
                break
        for i in range(stop + 1, len(ps)):
            st.tok[ps[i]], st.status[ps[i]] = fresh[idx + i], DRAFT
        idx += len(ps)
        exact, prev = exact and was_settled and stop == len(ps), s
    return committed, hits


def _exact_prefix(st: _State, fed: list[int], fed_tok: torch.Tensor, cc: torch.Tensor, m: int) -> int:
    """Extend the cached prefix m over fed rows that are final, kept their token and saw all of [m, position)."""
    for i, x in enumerate(fed):
        if x != m or st.status[x] != DONE or int(st.tok[x]) != int(fed_tok[i]) or not bool(cc[i, :i].all()):
            break
        m += 1
    return m


def _decode_one(model, labels: torch.Tensor, segments: list[tuple[int, int]], knobs: dict, sampling: dict,
                cfg_w: torch.Tensor | None, gen: torch.Generator, info) -> torch.Tensor:
    """Decode one sample (labels: (1,) or (2,) with the null row for CFG); returns its tokens (N,)."""
    cfg = model.config
    n, v = cfg.num_tokens, cfg.vocab_size
    device = labels.device
    window, init, lag, commit = knobs["window"], knobs["init"], knobs["row_lag"], knobs["commit"]
    dtype = torch.float64 if model.head.weight.dtype == torch.float64 else torch.float32
    st = _State(n, v, device, dtype)
    seg_of = [s for s, (lo, hi) in enumerate(segments) for _ in range(lo, hi)]
    started = [s == 0 for s in range(len(segments))]
    m, done, passes = 0, 0, 0
    model.setup_cache(labels.shape[0], device=device)
    while done < n:
        for s in range(1, len(segments)):  # PJD: a row starts once the row above has `lag` settled tokens
            lo, hi = segments[s - 1]
            if not started[s] and started[s - 1] and sum(st.settled(p) for p in range(lo, hi)) >= min(lag, hi - lo):
                started[s] = True
        top = seg_of[next(p for p in range(n) if st.status[p] != DONE)]
        windows = []
        for s, (lo, hi) in enumerate(segments):
            if not started[s] or s < top:
                continue
            end = _fill_window(st, lo, hi, window, init, cfg.width, gen)
            # verify from the first non-final position: locked tokens (commit="exact") are re-verified every pass,
            # against the row-causal p in lower rows (refreshed as context settles) and the exact p in the top row
            e = next((p for p in range(lo, hi) if st.status[p] != DONE), hi)
            if e < end:  # (segment, query positions, whole segment settled before this pass)
                windows.append((s, list(range(e, end)), all(st.settled(x) for x in range(lo, hi))))
        fed = [p for p in range(m, n) if st.status[p] != EMPTY]  # sorted: the exact prefix m.. comes first
        queries = [p for _, ps, _ in windows for p in ps]
        cc, qc = _visibility(st, seg_of, fed, queries)
        fed_tok = st.tok[fed]  # (Rc,)
        rows = labels.shape[0]
        fed_pos = torch.tensor(fed, device=device).expand(rows, -1)  # (rows, Rc)
        q_pos = torch.tensor(queries, device=device).expand(rows, -1)  # (rows, Q)
        step = model.token_rows(fed_tok.to(device).expand(rows, -1), fed_pos, q_pos, cc, qc, m, passes == 0)
        logits = model.forward_rows(labels if passes == 0 else None, step, step=True)  # (rows, Q, V)
        passes += 1
        if cfg_w is not None:  # CFG per raster index, as raster plan decoding does with one token per step
            w = cfg_w[queries].to(device, logits.dtype).unsqueeze(-1)  # (Q, 1)
            logits = logits[1:] + w * (logits[:1] - logits[1:])
        p = _target(logits[0], sampling["temperature"], sampling["top_k"], sampling["top_p"]).to(dtype)  # (Q, V)
        # verify: drafts are accepted in order; a fresh slot (no draft) counts as rejected with q = 0
        qp = torch.tensor(queries, device=device)
        has = torch.tensor([st.status[x] in (DRAFT, LOCKED) for x in queries], device=device)  # (Q,)
        d = st.tok[queries].to(device)  # (Q,)
        q = st.q[qp] * has.unsqueeze(-1).to(dtype)  # (Q, V)
        ar = torch.arange(len(queries), device=device)
        u = torch.rand(3, len(queries), generator=gen).to(device, dtype)  # accept, residual, Jacobi draws
        acc = (_accepts(u[0], p[ar, d], q[ar, d]) & has).tolist()
        repl = _inverse_cdf(_residual(p, q), u[1]).tolist()
        fresh = _inverse_cdf(p, u[2]).tolist()
        st.q[qp] = p  # everything verified now follows this pass's p (locked tokens: the row-causal p)
        committed, hits = _update(st, windows, acc, repl, fresh, top, commit)
        done += committed
        m = _exact_prefix(st, fed, fed_tok, cc, m)
        model.truncate_cache(model.cache_rows_for(m))
        info.forward_passes += 1
        info.rows_per_pass.append(rows)
        info.accepted_per_pass.append(committed)
        info.drafts_per_pass.append(int(has.sum()))
        info.draft_hits_per_pass.append(hits)
        info.kv_lengths.append(model.cache_length)
        info.committed_per_pass.append(done)
    model.reset_cache()
    info.passes_per_sample.append(passes)
    return st.tok


def _decode(model, labels: torch.Tensor, segments, knobs: dict, cfg_scale: float, cfg_schedule: str,
            temperature: float, top_k: int, top_p: float, seed: int, first_index: int, name: str):
    cfg = model.config
    model.check_labels(labels)
    if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1; got {temperature}, {top_k}, {top_p}")
    n = cfg.num_tokens
    cfg_w = None
    if cfg_scale != 1.0:
        if cfg.null_label is None:
            raise ValueError(f"cfg_scale={cfg_scale} needs a model trained with a null class (model.null_class=true)")
        # one token per pass in raster order: token i is step t = i of a budget of T = N
        cfg_w = torch.cat([cfg_scales(cfg_schedule, cfg_scale, i, 1, n, t=i, steps=n) for i in range(n)])  # (N,)
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    info = DecodeInfo(decoder=name, verifies=True)
    out = torch.zeros(labels.shape[0], n, dtype=torch.long, device=labels.device)  # (B, N)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for i in range(labels.shape[0]):
                lab = labels[i:i + 1]
                if cfg_w is not None:
                    lab = torch.cat([lab, torch.full_like(lab, cfg.null_label)])  # (2,) conditional, null
                gen = sample_generator(seed, first_index + i)
                out[i] = _decode_one(model, lab, segments, knobs, sampling, cfg_w, gen, info).to(out.device)
    finally:
        model.reset_cache()
        model.train(was_training)
    return out, info


def sjd_decode(model, labels: torch.Tensor, *, window: int = 16, init: str = "random", cfg_scale: float = 1.0,
               cfg_schedule: str = "constant", temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               seed: int = 0, first_index: int = 0):
    """Speculative Jacobi decoding of a raster model; returns tokens (B, N) row-major and a DecodeInfo.

    Args:
        window: L positions per pass (L - 1 drafts + 1 fresh); L = 1 is plain next-token decoding (N passes).
        init: how new draft slots start: "random" (uniform token) or "repeat_left" (copy the left neighbour,
            the token above at column 0); their q is one-hot (following SJD).
        cfg_scale, cfg_schedule, temperature, top_k, top_p, seed, first_index: as in
            :func:`orderlab.decoding.decode.generate`.
    """
    knobs = check_decoder_args("sjd", dict(window=window, init=init), model.config.width)
    knobs.update(row_lag=1, commit="exact")
    return _decode(model, labels, [(0, model.config.num_tokens)], knobs, cfg_scale, cfg_schedule, temperature,
                   top_k, top_p, seed, first_index, "sjd")


def pjd_decode(model, labels: torch.Tensor, *, window: int = 4, init: str = "random", row_lag: int | None = None,
               commit: str = "exact", cfg_scale: float = 1.0, cfg_schedule: str = "constant",
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
               first_index: int = 0):
    """PJD-style 2-D Jacobi decoding: one SJD window per active row, all in one forward, row-causal mask.

    Args:
        window: L positions per active row and pass (L - 1 drafts + 1 fresh).
        init: "random" or "repeat_left", as in :func:`sjd_decode`.
        row_lag: row r + 1 starts once row r has this many settled tokens (None: max(1, W // 4)); W = one row at
            a time.
        commit: "exact" (lower rows lock provisional tokens, re-verified exactly in the top row) or "rowwise"
            (lower rows commit on their row-causal p: PJD as we read it, approximate).
    """
    w = model.config.width
    knobs = check_decoder_args("pjd", dict(window=window, init=init, row_lag=row_lag, commit=commit), w)
    knobs["row_lag"] = knobs["row_lag"] or max(1, w // 4)
    rows = [(r * w, (r + 1) * w) for r in range(model.config.height)]
    return _decode(model, labels, rows, knobs, cfg_scale, cfg_schedule, temperature, top_k, top_p, seed, first_index,
                   "pjd")


JACOBI_DECODERS = {"sjd": sjd_decode, "pjd": pjd_decode}
