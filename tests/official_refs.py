"""Independent reference forwards of three published models, for the checkpoint-converter tests (issue 16).

ARPG (hp-l33/ARPG, ``models/arpg.py``), LPD (mit-han-lab/lpd, ``models/lpd.py`` + ``models/block.py`` +
``models/mask.py``) and RandAR (ziqipang/RandAR, ``RandAR/model/randar_gpt.py`` + ``llamagen_gpt.py``) are
re-derived here from the official code's semantics, written from scratch with plain tensors and
``torch.nn.functional`` in float64 -- nothing here imports orderlab, and nothing imports the official code.
Each reference works directly on a state dict with the official key names.

For each model:

* ``<Model>Config``: a tiny configuration (and ``.official_kwargs()``: the keyword arguments of the official
  constructor that build the same model);
* ``<model>_shapes(cfg)``: the official ``model.state_dict()`` names and shapes, in the official order;
* ``<model>_state(cfg, seed)``: a seeded random float32 state dict in that layout;
* ``<model>_logits(state, cfg, ...)``: the teacher-forced forward, float64 logits ``(B, N, V)`` in GENERATION
  order (row ``i`` predicts the token at grid position ``order[:, i]``);
* ``write_<model>_ckpt(path, state, ...)``: the file in the official format.

The key listings were checked once against the real modules (``load_state_dict(strict=True)`` of these states
into the official classes) and the logits agree with the official forwards to float32 round-off; the
published parameter counts in ``OFFICIAL_PARAM_COUNTS`` were counted on the official classes (meta device).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch

# ----------------------------------------------------------------------------------------------------------
# configurations
# ----------------------------------------------------------------------------------------------------------


def _find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


def swiglu_hidden(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """LlamaGen's SwiGLU width (ARPG and RandAR ``FeedForward``): int(2*4*dim/3), times a multiplier, rounded up."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return _find_multiple(hidden, multiple_of)


@dataclass(frozen=True)
class ARPGConfig:
    """``ModelArgs`` of ARPG (one class token; ``n_layer`` counts self- plus cross-decoder layers)."""

    vocab_size: int = 11
    num_classes: int = 3
    grid: int = 4
    dim: int = 32
    n_head: int = 2
    n_layer: int = 4  # n_layer // 2 SelfDecoder + n_layer // 2 CrossDecoder
    multiple_of: int = 16  # official default 256 (kept at 256 by the published models)
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    @property
    def block_size(self) -> int:
        return self.grid * self.grid

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def ffn_hidden(self) -> int:
        return swiglu_hidden(self.dim, self.multiple_of, self.ffn_dim_multiplier)

    @property
    def embed_rows(self) -> int:
        """One table: tokens [0, V), mask V, classes V+1..V+C, null class V+C+1, the unused 'none token' V+C+2."""
        return self.vocab_size + 1 + self.num_classes + 1 + 1

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @property
    def null_class_id(self) -> int:
        return self.vocab_size + self.num_classes + 1

    def official_kwargs(self) -> dict:
        """Keyword arguments of ``models.arpg.ModelArgs`` (dropouts 0) for the same model."""
        return dict(dim=self.dim, n_layer=self.n_layer, n_head=self.n_head, multiple_of=self.multiple_of,
                    ffn_dim_multiplier=self.ffn_dim_multiplier, rope_base=self.rope_base, norm_eps=self.norm_eps,
                    num_classes=self.num_classes, vocab_size=self.vocab_size, block_size=self.block_size,
                    cls_token_num=1, token_dropout_p=0.0, attn_dropout_p=0.0, resid_dropout_p=0.0,
                    ffn_dropout_p=0.0, drop_path_rate=0.0, class_dropout_prob=0.0)


@dataclass(frozen=True)
class LPDConfig:
    """``LPD(...)`` as built by ``lpd_l``/``lpd_xl``/``lpd_xxl`` (LayerNorm eps 1e-6 everywhere, head without bias)."""

    vocab_size: int = 11
    num_classes: int = 3
    img_size: int = 64
    vqgan_stride: int = 16
    dim: int = 32
    depth: int = 2
    n_head: int = 2
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6  # blocks' norm1/norm2 and the final norm (z_proj_ln is hard-coded 1e-6)

    @property
    def grid(self) -> int:
        return self.img_size // self.vqgan_stride

    @property
    def seq_len(self) -> int:
        return self.grid * self.grid

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def mlp_hidden(self) -> int:
        return int(self.dim * self.mlp_ratio)

    def official_kwargs(self) -> dict:
        """Keyword arguments of ``models.lpd.LPD`` (norm_layer: ``partial(nn.LayerNorm, eps=norm_eps)``, dropouts 0)."""
        return dict(img_size=self.img_size, vqgan_stride=self.vqgan_stride, decoder_embed_dim=self.dim,
                    decoder_depth=self.depth, decoder_num_heads=self.n_head, mlp_ratio=self.mlp_ratio,
                    class_num=self.num_classes, vqgan_vocab_size=self.vocab_size, label_drop_prob=0.0,
                    attn_dropout=0.0, proj_dropout=0.0, grad_checkpointing=False)


@dataclass(frozen=True)
class RandARConfig:
    """``RandARTransformer(...)`` for class-conditional generation (one class token)."""

    vocab_size: int = 11
    num_classes: int = 3
    grid: int = 4
    dim: int = 32
    n_head: int = 2
    n_layer: int = 2
    n_kv_head: int | None = None
    multiple_of: int = 16  # official default 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    class_dropout_prob: float = 0.1  # > 0 adds the null-class row (index num_classes) to the label table

    @property
    def block_size(self) -> int:
        return self.grid * self.grid

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def ffn_hidden(self) -> int:
        return swiglu_hidden(self.dim, self.multiple_of, self.ffn_dim_multiplier)

    @property
    def label_rows(self) -> int:
        return self.num_classes + int(self.class_dropout_prob > 0)

    def official_kwargs(self) -> dict:
        """Keyword arguments of ``RandAR.model.randar_gpt.RandARTransformer`` (dropouts 0, no checkpointing)."""
        return dict(dim=self.dim, n_layer=self.n_layer, n_head=self.n_head, n_kv_head=self.n_kv_head,
                    multiple_of=self.multiple_of, ffn_dim_multiplier=self.ffn_dim_multiplier,
                    rope_base=self.rope_base, norm_eps=self.norm_eps, num_classes=self.num_classes,
                    class_dropout_prob=self.class_dropout_prob, vocab_size=self.vocab_size,
                    block_size=self.block_size, cls_token_num=1, token_dropout_p=0.0, attn_dropout_p=0.0,
                    resid_dropout_p=0.0, ffn_dropout_p=0.0, drop_path_rate=0.0, grad_checkpointing=False)


# the published sizes (depth, heads, width); vocab 16384, 1000 classes, 16x16 grid at 256 px
ARPG_SIZES = {"ARPG-L": (24, 16, 1024), "ARPG-XL": (36, 20, 1280), "ARPG-XXL": (48, 24, 1536)}
LPD_SIZES = {"lpd_l": (24, 16, 1024), "lpd_xl": (36, 20, 1280), "lpd_xxl": (48, 24, 1536)}
RANDAR_SIZES = {"RandAR-L": (24, 16, 1024), "RandAR-XL": (36, 20, 1280)}


def arpg_published(name: str) -> ARPGConfig:
    depth, heads, dim = ARPG_SIZES[name]
    return ARPGConfig(vocab_size=16384, num_classes=1000, grid=16, dim=dim, n_head=heads, n_layer=depth,
                      multiple_of=256)


def lpd_published(name: str, img_size: int = 256) -> LPDConfig:
    depth, heads, dim = LPD_SIZES[name]
    return LPDConfig(vocab_size=16384, num_classes=1000, img_size=img_size, vqgan_stride=16, dim=dim, depth=depth,
                     n_head=heads, mlp_ratio=4.0)


def randar_published(name: str) -> RandARConfig:
    depth, heads, dim = RANDAR_SIZES[name]
    return RandARConfig(vocab_size=16384, num_classes=1000, grid=16, dim=dim, n_head=heads, n_layer=depth,
                        multiple_of=256, class_dropout_prob=0.1)


# sum(p.numel() for p in model.parameters()) of the official classes at the published sizes (vocab 16384,
# 1000 classes, 256 tokens; LPD also at 512 px = 1024 tokens), counted on the meta device from the official code;
# ``param_count(<model>_shapes(<model>_published(name)))`` reproduces them
OFFICIAL_PARAM_COUNTS = {
    "ARPG-L": 319_845_376,
    "ARPG-XL": 718_997_760,
    "ARPG-XXL": 1_302_449_664,
    "lpd_l@256": 337_157_120,
    "lpd_xl@256": 751_947_520,
    "lpd_xxl@256": 1_412_184_576,
    "lpd_l@512": 337_943_552,
    "lpd_xl@512": 752_930_560,
    "lpd_xxl@512": 1_413_364_224,
    "RandAR-L": 342_912_000,
    "RandAR-XL": 774_700_800,
}


# ----------------------------------------------------------------------------------------------------------
# state-dict layouts (names and shapes, in the order model.state_dict() lists them)
# ----------------------------------------------------------------------------------------------------------


def arpg_shapes(cfg: ARPGConfig) -> dict[str, tuple[int, ...]]:
    """ARPG ``Transformer.state_dict()``: no buffers (``freqs_cis`` is a plain attribute)."""
    d, h = cfg.dim, cfg.ffn_hidden
    shapes: dict[str, tuple[int, ...]] = {"embeddings.weight": (cfg.embed_rows, d)}
    ffn = {"ffn.w1.weight": (h, d), "ffn.w3.weight": (h, d), "ffn.w2.weight": (d, h)}
    norms = {"attn_norm.weight": (d,), "ffn_norm.weight": (d,)}
    for i in range(cfg.n_layer // 2):
        p = f"layers.self_dec.{i}."
        for name in ("to_q", "to_k", "to_v", "proj"):
            shapes[f"{p}attn.{name}.weight"] = (d, d)
        shapes.update({p + k: v for k, v in ffn.items()})
        shapes.update({p + k: v for k, v in norms.items()})
    for i in range(cfg.n_layer // 2):
        p = f"layers.cross_dec.{i}."
        for name in ("to_q", "proj"):
            shapes[f"{p}attn.{name}.weight"] = (d, d)
        shapes.update({p + k: v for k, v in ffn.items()})
        shapes.update({p + k: v for k, v in norms.items()})
    shapes.update({"layers.norm.weight": (d,), "layers.to_k.weight": (d, d), "layers.to_v.weight": (d, d),
                   "norm.weight": (d,), "head.weight": (cfg.vocab_size, d)})
    return shapes


def lpd_shapes(cfg: LPDConfig) -> dict[str, tuple[int, ...]]:
    """LPD ``state_dict()``: the module's own parameters first (fake_latent, pos_embed, mask_token), no buffers."""
    d, h = cfg.dim, cfg.mlp_hidden
    shapes: dict[str, tuple[int, ...]] = {
        "fake_latent": (1, d), "pos_embed": (1, cfg.seq_len + 1, d), "mask_token": (1, 1, d),
        "class_emb.weight": (cfg.num_classes, d), "token_emb.weight": (cfg.vocab_size, d),
        "z_proj_ln.weight": (d,), "z_proj_ln.bias": (d,),
    }
    for i in range(cfg.depth):
        p = f"blocks.{i}."
        shapes.update({
            p + "norm1.weight": (d,), p + "norm1.bias": (d,),
            p + "attn.qkv.weight": (3 * d, d), p + "attn.qkv.bias": (3 * d,),
            p + "attn.proj.weight": (d, d), p + "attn.proj.bias": (d,),
            p + "norm2.weight": (d,), p + "norm2.bias": (d,),
            p + "mlp.fc1.weight": (h, d), p + "mlp.fc1.bias": (h,),
            p + "mlp.fc2.weight": (d, h), p + "mlp.fc2.bias": (d,),
        })
    shapes.update({"norm.weight": (d,), "norm.bias": (d,), "head.weight": (cfg.vocab_size, d)})
    return shapes


def randar_shapes(cfg: RandARConfig) -> dict[str, tuple[int, ...]]:
    """RandARTransformer ``state_dict()``: ``pos_instruct_embeddings`` first (a direct parameter); no buffers while
    no KV cache is set up (``freqs_cis`` and ``causal_mask`` are plain attributes)."""
    d, h = cfg.dim, cfg.ffn_hidden
    qkv_rows = (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "pos_instruct_embeddings": (1, d),
        "cls_embedding.embedding_table.weight": (cfg.label_rows, d),
        "tok_embeddings.weight": (cfg.vocab_size, d),
    }
    for i in range(cfg.n_layer):
        p = f"layers.{i}."
        shapes.update({
            p + "attention.wqkv.weight": (qkv_rows, d), p + "attention.wo.weight": (d, d),
            p + "feed_forward.w1.weight": (h, d), p + "feed_forward.w3.weight": (h, d),
            p + "feed_forward.w2.weight": (d, h),
            p + "attention_norm.weight": (d,), p + "ffn_norm.weight": (d,),
        })
    shapes.update({"norm.weight": (d,), "output.weight": (cfg.vocab_size, d)})
    return shapes


def param_count(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())


# ----------------------------------------------------------------------------------------------------------
# seeded random states
# ----------------------------------------------------------------------------------------------------------

_EMBED_STD = 0.3


def _random_state(shapes: dict[str, tuple[int, ...]], seed: int, *, norm_names: tuple[str, ...],
                  embed_names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Norm weights 1 +- 0.1, biases ~0.1, embeddings-like tables std 0.3, matrices std 1/sqrt(fan_in)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=gen, dtype=torch.float32)
        if any(name.endswith(n) for n in norm_names):
            out[name] = 1.0 + 0.1 * noise
        elif name.endswith(".bias"):
            out[name] = 0.1 * noise
        elif any(name.startswith(n) for n in embed_names):
            out[name] = _EMBED_STD * noise
        else:  # a Linear weight (out, in)
            out[name] = noise / math.sqrt(shape[-1])
    return out


def arpg_state(cfg: ARPGConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A float32 state in ARPG's layout (the head is random, not zero as in the official init)."""
    return _random_state(arpg_shapes(cfg), seed, norm_names=("norm.weight",), embed_names=("embeddings.",))


def lpd_state(cfg: LPDConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    return _random_state(lpd_shapes(cfg), seed, norm_names=("norm1.weight", "norm2.weight", "norm.weight",
                                                             "z_proj_ln.weight"),
                         embed_names=("fake_latent", "pos_embed", "mask_token", "class_emb.", "token_emb."))


def randar_state(cfg: RandARConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A float32 state in RandAR's layout (the output head is random, not zero as in the official init)."""
    return _random_state(randar_shapes(cfg), seed, norm_names=("norm.weight",),
                         embed_names=("pos_instruct_embeddings", "cls_embedding.", "tok_embeddings."))




# ----------------------------------------------------------------------------------------------------------
# checkpoint files in the official formats
# ----------------------------------------------------------------------------------------------------------


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def _adamw_state(state: dict[str, torch.Tensor], groups, lr: float, betas) -> dict:
    """A real AdamW ``state_dict()`` after one step over copies of the state (its shape of what training saves)."""
    params = {k: torch.nn.Parameter(v.detach().float().clone()) for k, v in state.items()}
    param_groups = [{"params": [params[k] for k in names], "weight_decay": wd} for names, wd in groups(params)]
    opt = torch.optim.AdamW(param_groups, lr=lr, betas=betas)
    gen = torch.Generator().manual_seed(0)
    for p in params.values():
        p.grad = 1e-3 * torch.randn(p.shape, generator=gen)
    opt.step()
    return opt.state_dict()


def arpg_train_args(cfg: ARPGConfig) -> argparse.Namespace:
    """The ``args`` Namespace train_c2i.py pickles into its checkpoints (a subset of its argparse fields)."""
    return argparse.Namespace(gpt_model="ARPG-L", gpt_ckpt=None, gpt_type="c2i", vocab_size=cfg.vocab_size,
                              ema=False, cls_token_num=1, dropout_p=0.1, token_dropout_p=0.1, drop_path_rate=0.0,
                              no_compile=False, image_size=cfg.grid * 16, downsample_size=16,
                              num_classes=cfg.num_classes, epochs=400, lr=4e-4, weight_decay=5e-2, beta1=0.9,
                              beta2=0.95, max_grad_norm=1.0, global_batch_size=1024, ckpt_every=5000)


def write_arpg_ckpt(path, state: dict[str, torch.Tensor], *, layout: str = "train", ema=None, steps: int = 5000,
                    args=None, prefix: str = "") -> None:
    """ARPG ``.pt`` (torch pickle).

    layout "train": what train_c2i.py saves (lines 256-263): {"model", "optimizer", "steps", "args"} plus "ema"
      when ``ema`` (a state dict) is given -- "args" is an argparse.Namespace, so ``torch.load(weights_only=True)``
      refuses the file unless argparse.Namespace is allowed (torch.serialization.add_safe_globals);
    layout "state_dict": {"state_dict": sd}, what the HuggingFace pipeline of the released arpg_*.pt reads;
    layout "module": {"module": sd} (DeepSpeed, accepted by sample_c2i_ddp.py); layout "bare": sd itself
      (FSDP, sample_c2i_ddp.py --from-fsdp).
    """
    sd = _prefixed(state, prefix)
    if layout == "train":

        def groups(params):  # creat_optimizer: 2-D and up decay, the rest not
            return [([k for k, p in params.items() if p.dim() >= 2], 5e-2),
                    ([k for k, p in params.items() if p.dim() < 2], 0.0)]

        obj = {"model": sd, "optimizer": _adamw_state(state, groups, 4e-4, (0.9, 0.95)), "steps": steps,
               "args": args if args is not None else arpg_train_args(ARPGConfig())}
        if ema is not None:
            obj["ema"] = _prefixed(ema, prefix)
    elif layout == "state_dict":
        obj = {"state_dict": sd}
    elif layout == "module":
        obj = {"module": sd}
    elif layout == "bare":
        obj = sd
    else:
        raise ValueError(f"unknown ARPG layout {layout!r}")
    torch.save(obj, path)


def lpd_train_args(cfg: LPDConfig) -> argparse.Namespace:
    """The ``args`` Namespace main.py's misc.save_model pickles (a subset of its argparse fields)."""
    return argparse.Namespace(model="lpd_l", img_size=cfg.img_size, vqgan_stride=cfg.vqgan_stride,
                              vqgan_vocab_size=cfg.vocab_size, vqgan_path="tokenizers/vq_ds16_c2i.pt",
                              pretrained_ckpt=None, group_sizes="[1] * 256", group_sizes_list=None, epochs=450,
                              batch_size=64, lr=4e-4, blr=1e-4, min_lr=1e-5, weight_decay=0.02, bf16=True,
                              grad_checkpointing=False, grad_clip=3.0, attn_dropout=0.1, proj_dropout=0.1,
                              label_drop_prob=0.1, class_num=cfg.num_classes, output_dir="./output_dir",
                              resume="", resume_epoch=0, evaluate=False)


def write_lpd_ckpt(path, state: dict[str, torch.Tensor], *, layout: str = "train", epoch: int = 449, args=None,
                   prefix: str = "") -> None:
    """LPD ``.pth`` (torch pickle).

    layout "train": util/misc.py save_model (lines 312-318), e.g. ``checkpoint-last.pth``:
      {"model", "optimizer", "epoch", "scaler", "args"} -- no EMA; "scaler" is a GradScaler state dict and "args"
      an argparse.Namespace (main.py loads it with weights_only=False, lines 263 and 275);
    layout "model": {"model": sd} alone (main.py --pretrained_ckpt reads only checkpoint["model"]).
    """
    sd = _prefixed(state, prefix)
    if layout == "train":

        def groups(params):  # misc.add_weight_decay: 1-D and *.bias no decay first, then the rest
            nodecay = [k for k, p in params.items() if p.dim() == 1 or k.endswith(".bias")]
            return [(nodecay, 0.0), ([k for k in params if k not in nodecay], 0.02)]

        scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                  "_growth_tracker": 0}
        obj = {"model": sd, "optimizer": _adamw_state(state, groups, 4e-4, (0.9, 0.95)), "epoch": epoch,
               "scaler": scaler, "args": args if args is not None else lpd_train_args(LPDConfig())}
    elif layout == "model":
        obj = {"model": sd}
    else:
        raise ValueError(f"unknown LPD layout {layout!r}")
    torch.save(obj, path)


def write_randar_ckpt(path, state: dict[str, torch.Tensor], *, prefix: str = "", dtype: torch.dtype | None = None,
                      metadata: dict[str, str] | None = None) -> None:
    """RandAR ``.safetensors``: flat tensors under the plain ``model.state_dict()`` names (sample_c2i.py loads the
    released files with ``load_state_dict(strict=True)`` into a bare RandARTransformer, so no prefix).

    ``prefix="module."`` gives the ``model.safetensors`` that accelerate's ``save_state`` writes under multi-GPU DDP
    (it saves ``get_state_dict(model, unwrap=False)``); accelerate's metadata is {"format": "pt"}.
    """
    from safetensors.torch import save_file

    tensors = {k: (v if dtype is None else v.to(dtype)).detach().contiguous()
               for k, v in _prefixed(state, prefix).items()}
    save_file(tensors, str(path), metadata=metadata if metadata is not None else {"format": "pt"})



# the forwards live in official_forwards.py (this file would pass 600 lines); imported last, they see the configs
from official_forwards import arpg_logits, lpd_attention_mask, lpd_logits, randar_logits, rope2d_angles  # noqa: E402,F401
