"""A LlamaGen VQ-16-compatible tokenizer (codebook 16384 x 8, l2-normalised codes, 16x downsampling).

The module layout and parameter names follow LlamaGen's ``tokenizer/tokenizer_image/vq_model.py``
(FoundationVision/LlamaGen, itself derived from taming-transformers), so the ``state_dict`` of a released
``vq_ds16_c2i.pt`` loads into :class:`LlamaGenVQ` unchanged. The code is orderlab's own. Images are mapped from
[0, 1] to LlamaGen's [-1, 1] on the way in and back on the way out. No weights ship with orderlab: pass a local
checkpoint path (the prepare of an ImageFolder dataset does).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from orderlab.tokenizers.base import Tokenizer, TokenizerError, register_tokenizer

__all__ = ["LlamaGenVQ"]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3 twice, plus a 1x1 ``nin_shortcut`` when the width changes."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2, self.conv2 = _norm(cout, groups), nn.Conv2d(cout, cout, 3, 1, 1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class _AttnBlock(nn.Module):
    """Single-head self-attention over all positions, with 1x1-conv q/k/v/proj_out."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).reshape(b, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))  # (B, 1, N, D)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, N, D)
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class _Down(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad, as in taming / LlamaGen


class _Up(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(res: list[nn.Module], attn: list[nn.Module], resample: nn.Module | None, key: str) -> nn.Module:
    block = nn.Module()
    block.res, block.attn = nn.ModuleList(res), nn.ModuleList(attn)
    if resample is not None:
        setattr(block, key, resample)
    return block


def _run_level(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for i, res in enumerate(block.res):
        h = res(h)
        if len(block.attn):
            h = block.attn[i](h)
    return h


class _Encoder(nn.Module):
    def __init__(self, cin: int, ch: int, mult: tuple[int, ...], blocks: int, z: int, groups: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cin, ch, 3, 1, 1)
        widths, levels, c = [ch * m for m in mult], [], ch
        for i, cout in enumerate(widths):
            last = i == len(widths) - 1
            res = [_ResBlock(c if j == 0 else cout, cout, groups) for j in range(blocks)]
            attn = [_AttnBlock(cout, groups) for _ in range(blocks)] if last else []
            levels.append(_level(res, attn, None if last else _Down(cout), "downsample"))
            c = cout
        self.conv_blocks = nn.ModuleList(levels)
        self.mid = nn.ModuleList([_ResBlock(c, c, groups), _AttnBlock(c, groups), _ResBlock(c, c, groups)])
        self.norm_out, self.conv_out = _norm(c, groups), nn.Conv2d(c, z, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.conv_blocks:
            h = _run_level(block, h)
            if hasattr(block, "downsample"):
                h = block.downsample(h)
        for m in self.mid:
            h = m(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class _Decoder(nn.Module):
    def __init__(self, cout_img: int, ch: int, mult: tuple[int, ...], blocks: int, z: int, groups: int) -> None:
        super().__init__()
        c = ch * mult[-1]
        self.conv_in = nn.Conv2d(z, c, 3, 1, 1)
        self.mid = nn.ModuleList([_ResBlock(c, c, groups), _AttnBlock(c, groups), _ResBlock(c, c, groups)])
        levels = []
        for i in reversed(range(len(mult))):  # deepest level first, as in LlamaGen's list order
            cout = ch * mult[i]
            res = [_ResBlock(c if j == 0 else cout, cout, groups) for j in range(blocks + 1)]
            attn = [_AttnBlock(cout, groups) for _ in range(blocks + 1)] if i == len(mult) - 1 else []
            levels.append(_level(res, attn, _Up(cout) if i != 0 else None, "upsample"))
            c = cout
        self.conv_blocks = nn.ModuleList(levels)
        self.norm_out, self.conv_out = _norm(c, groups), nn.Conv2d(c, cout_img, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for m in self.mid:
            h = m(h)
        for block in self.conv_blocks:
            h = _run_level(block, h)
            if hasattr(block, "upsample"):
                h = block.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class _Quantizer(nn.Module):
    """Nearest-code lookup; with ``l2_norm`` codes and inputs are unit vectors (cosine similarity)."""

    def __init__(self, codebook_size: int, dim: int, l2_norm: bool) -> None:
        super().__init__()
        self.l2_norm = l2_norm
        self.embedding = nn.Embedding(codebook_size, dim)
        # LlamaGen keeps a usage ring buffer of 65536 indices in its state_dict; kept for strict loading
        self.register_buffer("codebook_used", torch.zeros(65536))

    def codes(self) -> torch.Tensor:
        w = self.embedding.weight  # (V, D)
        return F.normalize(w, p=2, dim=-1) if self.l2_norm else w

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, h, w) code indices."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (M, D)
        if self.l2_norm:
            flat = F.normalize(flat, p=2, dim=-1)
        return torch.cdist(flat, self.codes()).argmin(dim=1).view(b, h, w)


@register_tokenizer("llamagen")
class LlamaGenVQ(Tokenizer):
    """LlamaGen's VQ architecture; the defaults are VQ-16 (16x downsampling, 256 px -> 16x16 tokens).

    Args:
        image_size: H = W of the images (a multiple of 2 ** (len(ch_mult) - 1)).
        codebook_size: V.
        codebook_embed_dim: code dimension D.
        codebook_l2_norm: l2-normalise codes and encoder outputs (LlamaGen's default).
        encoder_ch_mult: width multipliers per encoder level.
        decoder_ch_mult: width multipliers per decoder level.
        z_channels: width of the latent before ``quant_conv``.
        ch: base width.
        num_res_blocks: residual blocks per encoder level (decoder: one more).
        norm_groups: GroupNorm groups (32 in LlamaGen; smaller for tiny test models).
        in_channels: image channels C.
    """

    def __init__(self, image_size: int = 256, codebook_size: int = 16384, codebook_embed_dim: int = 8,
                 codebook_l2_norm: bool = True, encoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4),
                 decoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4), z_channels: int = 256, ch: int = 128,
                 num_res_blocks: int = 2, norm_groups: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        factor = 2 ** (len(encoder_ch_mult) - 1)
        if image_size % factor or len(decoder_ch_mult) != len(encoder_ch_mult):
            raise TokenizerError(f"llamagen: image_size {image_size} must be a multiple of {factor}, and encoder/"
                                 f"decoder ch_mult must have equal lengths ({encoder_ch_mult} vs {decoder_ch_mult})")
        self._cfg = {"image_size": image_size, "codebook_size": codebook_size, "codebook_embed_dim": codebook_embed_dim,
                     "codebook_l2_norm": codebook_l2_norm, "encoder_ch_mult": list(encoder_ch_mult),
                     "decoder_ch_mult": list(decoder_ch_mult), "z_channels": z_channels, "ch": ch,
                     "num_res_blocks": num_res_blocks, "norm_groups": norm_groups, "in_channels": in_channels}
        self._factor = factor
        self.encoder = _Encoder(in_channels, ch, tuple(encoder_ch_mult), num_res_blocks, z_channels, norm_groups)
        self.decoder = _Decoder(in_channels, ch, tuple(decoder_ch_mult), num_res_blocks, z_channels, norm_groups)
        self.quantize = _Quantizer(codebook_size, codebook_embed_dim, codebook_l2_norm)
        self.quant_conv = nn.Conv2d(z_channels, codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(codebook_embed_dim, z_channels, 1)

    @property
    def grid(self) -> tuple[int, int]:
        s = self._cfg["image_size"] // self._factor
        return (s, s)

    @property
    def vocab_size(self) -> int:
        return self._cfg["codebook_size"]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        s = self._cfg["image_size"]
        return (self._cfg["in_channels"], s, s)

    def config(self) -> dict[str, Any]:
        return dict(self._cfg)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        h = self.quant_conv(self.encoder(images * 2.0 - 1.0))  # (B, D, h, w)
        return self.quantize.nearest(h)

    def _decode(self, tokens: torch.Tensor) -> torch.Tensor:
        zq = self.quantize.codes()[tokens].permute(0, 3, 1, 2)  # (B, D, h, w)
        return (self.decoder(self.post_quant_conv(zq)) + 1.0) / 2.0  # (B, C, H, W)

    @classmethod
    def _from_foreign(cls, ckpt: Any, path: str) -> Tokenizer | None:
        """A LlamaGen checkpoint: ``{"ema" | "model" | "state_dict": state_dict, ...}`` or a bare state_dict."""
        if not isinstance(ckpt, dict):
            return None
        # key preference as in LlamaGen's reconstruction script: ema, then model, then state_dict
        state = next((ckpt[k] for k in ("ema", "model", "state_dict") if isinstance(ckpt.get(k), dict)), ckpt)
        emb = state.get("quantize.embedding.weight")
        if not isinstance(emb, torch.Tensor):
            return None
        try:
            tok = LlamaGenVQ(**_infer_config(state))
        except (KeyError, IndexError, ZeroDivisionError, TokenizerError) as exc:
            raise TokenizerError(f"{path!r} has a LlamaGen codebook but not the VQ layout ({exc!r})") from exc
        missing, unexpected = tok.load_state_dict(state, strict=False)
        # the usage ring buffer exists only when LlamaGen ran with codebook_show_usage=True; it is not a weight
        missing = [k for k in missing if k != "quantize.codebook_used"]
        if missing or unexpected:
            raise TokenizerError(f"{path!r} does not match the VQ-16 layout: missing {missing[:5]}, "
                                 f"unexpected {unexpected[:5]}")
        return tok


def _infer_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture of a LlamaGen VQ state_dict, read from its shapes (GroupNorm groups and image size are not
    stored: LlamaGen's 32 and 256 are assumed)."""
    emb = state["quantize.embedding.weight"]  # (V, D)
    conv_in = state["encoder.conv_in.weight"]  # (ch, C, 3, 3)
    ch = conv_in.shape[0]
    levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.conv_blocks.")})
    enc_mult = [state[f"encoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0] // ch for i in levels]
    n_dec = len({int(k.split(".")[2]) for k in state if k.startswith("decoder.conv_blocks.")})
    # decoder list is deepest level first; level i of the list has width ch * mult[n - 1 - i]
    dec_mult = [state[f"decoder.conv_blocks.{n_dec - 1 - i}.res.0.conv1.weight"].shape[0] // ch for i in range(n_dec)]
    blocks = len({k.split(".")[4] for k in state if k.startswith("encoder.conv_blocks.0.res.")})
    return {"codebook_size": emb.shape[0], "codebook_embed_dim": emb.shape[1], "encoder_ch_mult": enc_mult,
            "decoder_ch_mult": dec_mult, "z_channels": state["encoder.conv_out.weight"].shape[0], "ch": ch,
            "num_res_blocks": blocks, "in_channels": conv_in.shape[1]}
