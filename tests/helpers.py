"""Small shared builders for the tests."""

import torch

from orderlab.model.config import ModelConfig
from orderlab.model.registry import build_model

# (arch, mutual, block, position): every knob setting where training and decoding are defined to agree
KNOBS = [
    ("flex", True, True, "rope"),
    ("flex", False, True, "rope"),
    ("flex", True, False, "rope"),
    ("flex", False, False, "rope"),
    ("flex", False, False, "learned"),
    ("flex", True, True, "learned"),
    ("decoupled", False, True, "rope"),
    ("decoupled", False, False, "learned"),
]


def tiny_model(arch="flex", mutual=True, block=True, position="rope", height=4, width=5, vocab=7, classes=3,
               null_class=True, seed=0, dtype=torch.float64, depth=3):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, height=height, width=width, num_classes=classes, null_class=null_class,
                      depth=depth, dim=16, heads=2, arch=arch, mutual=mutual, block=block, position=position)
    return build_model(cfg).to(dtype).eval()
