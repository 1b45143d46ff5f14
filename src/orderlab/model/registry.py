"""Build the backbone a config names."""

from __future__ import annotations

from torch import nn

from orderlab.model.backbones.decoupled import DecoupledTransformer
from orderlab.model.backbones.stream import FlexTransformer
from orderlab.model.config import ModelConfig

__all__ = ["build_model"]


def build_model(config: ModelConfig) -> nn.Module:
    """The backbone named by ``config.arch``."""
    model = {"flex": FlexTransformer, "decoupled": DecoupledTransformer}[config.arch](config)
    for m in model.modules():
        if hasattr(m, "impl"):
            m.impl = config.attention
    return model
