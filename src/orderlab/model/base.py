"""The backbone contract: a public base class that every backbone (built-in or plugin) subclasses.

A backbone maps (labels, tokens, positions, mask) to logits and keeps a KV cache, and it owns its **layout**: how a
batch of Plans becomes the rows of one training forward (:meth:`Backbone.train_rows`), how decode step t becomes
the rows of one cached forward (:meth:`Backbone.step_rows`), and how a Jacobi pass's tokens and visibility become
rows (:meth:`Backbone.token_rows`). Training, scoring, plan decoding, Jacobi decoding, the attention maps and the
benchmark call only these methods, so a new backbone is one new module (or an entry point) and nothing else.

The defaults here are the *query-stream* layout of :mod:`orderlab.model.masks` (following LPD): content rows of
earlier groups, then one ``[MASK]`` query per target. A backbone with another layout (RandAR's interleaved
position-instruction tokens) overrides the three ``*_rows`` methods and :meth:`Backbone.cache_rows_for`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from orderlab.model import masks
from orderlab.model.config import ModelConfig
from orderlab.model.layers import KVCache, Style, find_multiple, make_norm, rope_tables

__all__ = ["Backbone", "Rows", "COND", "CONTENT", "QUERY"]

COND, CONTENT, QUERY = masks.COND, masks.CONTENT, masks.QUERY


@dataclass
class Rows:
    """The rows of one forward, as a backbone lays them out (shapes use R rows, K keys, G logits).

    ``tokens``/``positions`` exclude the condition rows, which the model prepends itself when labels are given.
    """

    tokens: torch.Tensor
    """(B, R') token ids; ``mask_id`` marks a position query (or instruction) row."""
    positions: torch.Tensor
    """(B, R') row-major grid position of each row (a query's is its target's)."""
    mask: torch.Tensor
    """(R, K) bool, True = may attend; R = C (when the condition is fed) + R'."""
    logit_rows: torch.Tensor
    """(G,) index among the R rows of the row that predicts each asked-for token, in the asked order."""
    cache_rows: int = 0
    """Leading rows that join the KV cache (decode steps; 0 for a training forward)."""
    kinds: torch.Tensor | None = None
    """(R,) COND / CONTENT / QUERY of each row (training layouts; read by the attention maps)."""
    index: torch.Tensor | None = None
    """(R,) plan-order index of the token each row stands for, -1 for condition rows (training layouts)."""


@dataclass
class NoOptions:
    """A backbone without knobs of its own."""


class _CacheSlot:
    """Holds one KV cache that no attention module owns (the decoupled backbone's shared K/V)."""

    cache: KVCache | None = None


class Backbone(nn.Module):
    """Base class of every backbone: embeddings, condition rows, the head, the KV cache and the default layout.

    Subclasses set ``blocks``-like modules, implement :meth:`forward`, :meth:`forward_step` and
    :meth:`attention_modules`, and register with :func:`orderlab.model.registry.register_backbone`.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    """Dataclass of this backbone's own knobs, filled from ``ModelConfig.options`` (unknown keys fail at once)."""
    mutual_queries: ClassVar[bool] = True
    """Whether this backbone can let the queries of one group see each other (ModelConfig.mutual)."""
    mask_embedding: ClassVar[bool] = True
    """Whether ``tok_emb`` has a ``[MASK]`` row (its last) for the query rows."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        # floor with a margin: 8/3 * 1536 is 4095.9999... in floats, LlamaGen's int(2 * 4 * 1536 / 3) is 4096
        self.hidden = find_multiple(math.floor(c.mlp_ratio * c.dim + 1e-6), c.ffn_multiple)
        self.style = Style(c.block_style, self.hidden, c.rate("attn"), c.rate("resid"), c.rate("ffn"))
        self.tok_emb = nn.Embedding(c.vocab_size + int(self.mask_embedding), c.dim)  # last row: [MASK]
        self.cond_emb = nn.Embedding(c.num_classes + int(c.null_class), c.cond_tokens * c.dim)
        self.pos_emb = nn.Embedding(c.num_tokens + c.cond_tokens, c.dim) if c.position == "learned" else None
        self.spare_emb = nn.Parameter(torch.zeros(c.spare_embeddings, c.dim)) if c.spare_embeddings else None
        self.input_norm = nn.LayerNorm(c.dim, eps=1e-6) if c.input_norm else None  # LPD's z_proj_ln
        self.token_drop, self.cond_drop = nn.Dropout(c.rate("token")), nn.Dropout(c.rate("cond"))
        self.norm = make_norm(c.dim, self.style)
        self.head = nn.Linear(c.dim, c.vocab_size, bias=False)
        self.options = self._parse_options(c.options)

    @classmethod
    def _parse_options(cls, options: dict[str, Any]):
        fields = {f.name for f in dataclasses.fields(cls.Options)}
        bad = sorted(set(options) - fields)
        if bad:
            from orderlab.suggest import did_you_mean

            raise ValueError(f"model.backbone.options.{bad[0]}: backbone {cls.name!r} has no such option"
                             f"{did_you_mean(bad[0], fields)}; its options are {sorted(fields)}")
        return cls.Options(**options)

    def _init_weights(self) -> None:
        """Normal(0.02) weights (LlamaGen, ARPG, RandAR) or xavier-uniform linears (LPD's ViT blocks); zero biases;
        a zero head where the config asks (ARPG and RandAR)."""
        for m in self.modules():
            if isinstance(m, nn.Linear) and self.style.kind == "vit":
                nn.init.xavier_uniform_(m.weight)
            elif isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        if self.config.head_init == "zero":
            nn.init.zeros_(self.head.weight)

    @property
    def mask_id(self) -> int:
        return self.config.mask_id

    def check_labels(self, labels: torch.Tensor) -> None:
        hi = self.config.num_classes + int(self.config.null_class)
        if labels.dtype not in (torch.int32, torch.int64) or labels.dim() != 1:
            raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= hi):
            bad = labels[(labels < 0) | (labels >= hi)][0].item()
            raise ValueError(f"label {bad} is out of range 0..{hi - 1} (num_classes={self.config.num_classes}, "
                             f"null class {'on' if self.config.null_class else 'off'})")

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, D) token embeddings; content tokens (not ``[MASK]`` rows) get the token dropout."""
        x = self.tok_emb(tokens)
        if self.training and self.token_drop.p > 0:
            x = torch.where((tokens != self.mask_id).unsqueeze(-1), self.token_drop(x), x)
        return x

    def embed(self, labels: torch.Tensor | None, tokens: torch.Tensor, positions: torch.Tensor):
        """Input embeddings and positions: (B, C + L, D) and (B, C + L) with -1 for condition rows."""
        c = self.config
        x = self.embed_tokens(tokens)  # (B, L, D)
        pos = positions
        if labels is not None:
            self.check_labels(labels)
            cond = self.cond_drop(self.cond_emb(labels)).view(labels.shape[0], c.cond_tokens, c.dim)  # (B, C, D)
            x = torch.cat([cond, x], dim=1)
            pos = torch.cat([positions.new_full((labels.shape[0], c.cond_tokens), -1), positions], dim=1)
        if self.pos_emb is not None:  # condition rows use the extra slots after the grid
            slot = torch.where(pos >= 0, pos, c.num_tokens + torch.arange(pos.shape[1], device=pos.device) % c.cond_tokens)
            x = x + self.pos_emb(slot)
        if self.input_norm is not None:
            x = self.input_norm(x)
        return x, pos

    def rope(self, pos: torch.Tensor, dtype: torch.dtype):
        c = self.config
        if c.position != "rope":
            return None
        return rope_tables(pos, c.width, c.dim // c.heads, c.rope_base, dtype, c.cond_rope, c.torus)

    @staticmethod
    def select_rows(x: torch.Tensor, num_logits: int | None, logit_rows: torch.Tensor | None) -> torch.Tensor:
        """(B, G, D) the rows that give logits: ``logit_rows`` (an index), else the last ``num_logits``, else all."""
        if logit_rows is not None:
            return x[:, logit_rows.to(x.device)]
        return x if num_logits is None else x[:, x.shape[1] - num_logits:]

    # ------------------------------------------------------------------------------------------- the model API
    def forward(self, labels: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                num_logits: int | None = None, logit_rows: torch.Tensor | None = None) -> torch.Tensor:
        """One training forward over ``[cond (C)] + tokens``; logits (B, G, V) of the chosen rows."""
        raise NotImplementedError

    def forward_step(self, labels: torch.Tensor | None, tokens: torch.Tensor, positions: torch.Tensor,
                     mask: torch.Tensor, cache_rows: int, num_logits: int | None = None,
                     logit_rows: torch.Tensor | None = None) -> torch.Tensor:
        """One cached forward: the first ``cache_rows`` rows (condition rows included) join the KV cache."""
        raise NotImplementedError

    def attention_modules(self) -> list[nn.Module]:
        """Every attention module, in depth order (for the attention probe)."""
        raise NotImplementedError

    def attention_views(self, rows: Rows) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
        """For each of :meth:`attention_modules`: (which of the training ``rows`` are its query rows, which are its
        keys), as index tensors, None for all of them. One stream of rows through every layer by default."""
        return [(None, None)] * len(self.attention_modules())

    # ----------------------------------------------------------------------------------------------- the cache
    def cache_owners(self) -> list:
        """Objects whose ``.cache`` attribute holds one KV cache each; the last one's length is the cache length."""
        return [m for m in self.attention_modules() if hasattr(m, "cache")]

    def cache_slots(self, num_tokens: int | None = None) -> int:
        """Cache entries a full decode of ``num_tokens`` (default N) needs, condition rows included."""
        return self.cache_rows_for(self.config.num_tokens if num_tokens is None else num_tokens)

    def cache_rows_for(self, num_tokens: int) -> int:
        """Cache length that holds the condition and ``num_tokens`` known tokens (one row per token here)."""
        return self.config.cond_tokens + num_tokens

    def setup_cache(self, batch: int, slots: int | None = None, device=None, dtype=None) -> None:
        """Allocate an empty KV cache of ``slots`` (default :meth:`cache_slots`) entries for ``batch`` rows."""
        c = self.config
        slots = slots or self.cache_slots()
        p = self.head.weight
        for m in self.cache_owners():
            m.cache = KVCache(batch, c.heads, slots, c.dim // c.heads, device or p.device, dtype or p.dtype)

    def reset_cache(self) -> None:
        for m in self.cache_owners():
            m.cache = None

    @property
    def cache_length(self) -> int:
        cache = self.cache_owners()[-1].cache
        return 0 if cache is None else cache.length

    def truncate_cache(self, length: int) -> None:
        for m in self.cache_owners():
            m.cache.truncate(length)

    def cache_nbytes(self) -> int:
        """Bytes held by the KV caches (0 when none is set up)."""
        return sum(m.cache.nbytes for m in self.cache_owners() if m.cache is not None)

    # ---------------------------------------------------------------------------------------------- the layout
    def _knobs(self, mutual: bool | None, block: bool | None) -> tuple[bool, bool]:
        c = self.config
        return (c.mutual if mutual is None else bool(mutual)), (c.block if block is None else bool(block))

    def train_rows(self, targets: torch.Tensor, orders: torch.Tensor, sizes, mutual: bool | None = None,
                   block: bool | None = None) -> Rows:
        """Rows of one training forward over a batch of plans that share their group sizes.

        Args:
            targets: (B, N) the true tokens in plan order.
            orders: (B, N) each sample's generation order.
            sizes: the shared group sizes.
            mutual, block: attention knobs (None: the config's).
        Returns:
            Rows whose ``logit_rows`` predict targets[:, 0..N-1] in plan order.
        """
        mutual, block = self._knobs(mutual, block)
        c, n = self.config.cond_tokens, targets.shape[1]
        nc = n - int(sizes[-1])
        queries = torch.full_like(targets, self.mask_id)  # (B, N)
        tokens = torch.cat([targets[:, :nc], queries], dim=1)  # (B, Nc + N)
        positions = torch.cat([orders[:, :nc], orders], dim=1)
        mask = masks.training_mask(sizes, c, mutual, block, device=targets.device)
        kinds = torch.tensor([COND] * c + [CONTENT] * nc + [QUERY] * n)
        index = torch.cat([torch.full((c,), -1), torch.arange(nc), torch.arange(n)])
        return Rows(tokens, positions, mask, torch.arange(c + nc, c + nc + n), 0, kinds, index)

    def step_rows(self, sizes, t: int, num_known: int, prev_tokens: torch.Tensor, prev_positions: torch.Tensor,
                  query_positions: torch.Tensor, mutual: bool | None = None, block: bool | None = None) -> Rows:
        """Rows of decode step t: the tokens chosen at step t-1 (the known ones at t = 0), then group t's queries.

        Args:
            prev_tokens, prev_positions: (B, P) tokens and positions to append to the cache (group t-1, or the known
                tokens at t = 0).
            query_positions: (B, G) targets of group t.
        """
        mutual, block = self._knobs(mutual, block)
        c, g = self.config.cond_tokens, query_positions.shape[1]
        tokens = torch.cat([prev_tokens, torch.full_like(query_positions, self.mask_id)], dim=1)
        positions = torch.cat([prev_positions, query_positions], dim=1)
        mask = masks.step_mask(sizes, t, c, num_known, mutual, block, device=query_positions.device)
        cache_rows = masks.step_cache_rows(sizes, t, c, num_known)
        return Rows(tokens, positions, mask, torch.arange(cache_rows, cache_rows + g), cache_rows)

    def token_rows(self, fed_tokens: torch.Tensor, fed_positions: torch.Tensor, query_positions: torch.Tensor,
                   fed_sees: torch.Tensor, query_sees: torch.Tensor, cached_tokens: int, with_cond: bool) -> Rows:
        """Rows of a pass described token by token (Jacobi decoding): every fed token joins the cache, every query
        predicts its position and sees itself among the queries.

        Args:
            fed_tokens, fed_positions: (B, F) tokens to append after the cache.
            query_positions: (B, Q).
            fed_sees: (F, F) bool, fed token i may see fed token j (include i itself).
            query_sees: (Q, F) bool, query q may see fed token j.
            cached_tokens: tokens already in the cache (all visible to every row).
            with_cond: the condition rows are fed too (the first pass).
        """
        c = self.config.cond_tokens
        nf, nq = fed_tokens.shape[1], query_positions.shape[1]
        cond_rows = c if with_cond else 0
        head = self.cache_rows_for(cached_tokens)
        mask = torch.zeros(cond_rows + nf + nq, head + nf + nq, dtype=torch.bool)
        mask[:cond_rows, :cond_rows] = True  # condition rows see the condition only (masks.py)
        mask[cond_rows:, :head] = True
        mask[cond_rows:cond_rows + nf, head:head + nf] = fed_sees
        mask[cond_rows + nf:, head:head + nf] = query_sees
        mask[cond_rows + nf:, head + nf:] = torch.eye(nq, dtype=torch.bool)
        tokens = torch.cat([fed_tokens, torch.full_like(query_positions, self.mask_id)], dim=1)
        positions = torch.cat([fed_positions, query_positions], dim=1)
        start = cond_rows + nf
        return Rows(tokens, positions, mask.to(fed_tokens.device), torch.arange(start, start + nq), start)

    def forward_rows(self, labels: torch.Tensor | None, rows: Rows, step: bool = False) -> torch.Tensor:
        """Run :meth:`forward` (training) or :meth:`forward_step` (``step``) on laid-out rows: (B, G, V)."""
        if step:
            return self.forward_step(labels, rows.tokens, rows.positions, rows.mask, rows.cache_rows,
                                     logit_rows=rows.logit_rows)
        return self(labels, rows.tokens, rows.positions, rows.mask, logit_rows=rows.logit_rows)

    def plan_logits(self, labels: torch.Tensor, targets: torch.Tensor, orders: torch.Tensor, sizes,
                    mutual: bool | None = None, block: bool | None = None) -> torch.Tensor:
        """(B, N, V) logits of every target in plan order, from one training forward (training and scoring)."""
        return self.forward_rows(labels, self.train_rows(targets, orders, sizes, mutual, block))
