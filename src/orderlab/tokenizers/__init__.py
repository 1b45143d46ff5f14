"""Image tokenizers: images (B, C, H, W) in [0, 1] <-> token grids (B, h, w).

Built-ins: ``pixel`` (identity quantizer), ``vqvae`` (small project-trained VQ-VAE), ``llamagen`` (LlamaGen
VQ-16-compatible architecture, weights from a local file). :func:`load_tokenizer` rebuilds one from a manifest
reference.
"""

from orderlab.tokenizers.base import (
    Tokenizer,
    TokenizerError,
    list_tokenizers,
    load_tokenizer,
    register_tokenizer,
    seeded_init_,
    tokenizer_class,
)
from orderlab.tokenizers.llamagen import LlamaGenVQ
from orderlab.tokenizers.pixel import PixelTokenizer
from orderlab.tokenizers.vqvae import VQVAETokenizer, train_vqvae, vq_stats

__all__ = [
    "Tokenizer", "TokenizerError", "list_tokenizers", "load_tokenizer", "register_tokenizer", "seeded_init_",
    "tokenizer_class", "PixelTokenizer", "VQVAETokenizer", "train_vqvae", "vq_stats", "LlamaGenVQ",
]
