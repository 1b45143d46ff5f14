"""Small shared builders for the tests."""

import torch

from orderlab.model.config import ModelConfig
from orderlab.model.registry import build_model, get_backbone, list_backbones

# a name no schedule, size rule, decoder, CFG schedule, tokenizer or dataset is registered under: every "unknown name"
# test uses it, so a plugin that registers e.g. a "spiral" schedule breaks none of them
UNKNOWN = "no-such-plugin"

# (mutual, block, position): the attention-knob settings every backbone is held to; a backbone that cannot let
# queries see each other (decoupled) takes each with mutual=False
SETTINGS = [(True, True, "rope"), (False, False, "rope"), (True, False, "learned"), (False, True, "learned")]


def knob_settings(names=None):
    """(arch, mutual, block, position) for every registered backbone (or ``names``) and every setting."""
    out = []
    for name in list_backbones() if names is None else names:
        can_mutual = get_backbone(name).mutual_queries
        for mutual, block, position in SETTINGS:
            knobs = (name, mutual and can_mutual, block, position)
            if knobs not in out:
                out.append(knobs)
    return out


KNOBS = knob_settings()


def tiny_model(arch="stream", mutual=True, block=True, position="rope", height=4, width=5, vocab=7, classes=3,
               null_class=True, seed=0, dtype=torch.float64, depth=3, options=None):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, height=height, width=width, num_classes=classes, null_class=null_class,
                      depth=depth, dim=16, heads=2, arch=arch, mutual=mutual, block=block, position=position,
                      options=options or {})
    return build_model(cfg).to(dtype).eval()
