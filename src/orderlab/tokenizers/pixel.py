"""Identity pixel quantizer: each pixel is one token (lossless for data that already has L gray levels)."""

from __future__ import annotations

from typing import Any

import torch

from orderlab.checks import check_positive_int
from orderlab.tokenizers.base import Tokenizer, TokenizerError, register_tokenizer

__all__ = ["PixelTokenizer"]


@register_tokenizer("pixel")
class PixelTokenizer(Tokenizer):
    """Uniform quantization of [0, 1] to ``levels`` values per channel; channels combine into one token.

    Token of a pixel with quantized channels ``q_0..q_{C-1}`` is ``sum_c q_c * levels ** (C - 1 - c)``, so
    V = levels ** C. sklearn digits (values 0..16) use levels=17: image = tokens / 16, tokens = pixel values.

    Args:
        levels: L quantization levels per channel (>= 2).
        height: image (= token grid) rows H.
        width: image (= token grid) columns W.
        channels: C image channels.
    """

    def __init__(self, levels: int = 17, height: int = 8, width: int = 8, channels: int = 1) -> None:
        super().__init__()
        for key, v, lo in (("levels", levels, 2), ("height", height, 1), ("width", width, 1),
                           ("channels", channels, 1)):
            check_positive_int(v, f"pixel tokenizer: {key}", minimum=lo, error=TokenizerError)
        self.levels, self.height, self.width, self.channels = levels, height, width, channels

    @property
    def grid(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def vocab_size(self) -> int:
        return self.levels ** self.channels

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def config(self) -> dict[str, Any]:
        return {"levels": self.levels, "height": self.height, "width": self.width, "channels": self.channels}

    def _place(self, device: torch.device) -> torch.Tensor:
        # (C,) place value of each channel inside a token
        return self.levels ** torch.arange(self.channels - 1, -1, -1, device=device)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        q = torch.round(images.clamp(0.0, 1.0) * (self.levels - 1)).long()  # (B, C, H, W)
        return (q * self._place(images.device)[None, :, None, None]).sum(dim=1)  # (B, H, W)

    def _decode(self, tokens: torch.Tensor) -> torch.Tensor:
        q = (tokens[:, None] // self._place(tokens.device)[None, :, None, None]) % self.levels  # (B, C, H, W)
        return q.float() / (self.levels - 1)
