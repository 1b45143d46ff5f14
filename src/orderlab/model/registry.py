"""The backbone registry: ``register_backbone``, ``list_backbones``, ``get_backbone`` and ``build_model``.

Built-ins are the modules of :mod:`orderlab.model.backbones` (all imported on the first lookup, so a new backbone
is a new module there and nothing else); other packages register theirs under the entry-point group
``orderlab.backbones``.
"""

from __future__ import annotations

from orderlab.model.base import Backbone
from orderlab.model.config import ModelConfig
from orderlab.registry import Registry, UnknownNameError

__all__ = ["register_backbone", "list_backbones", "get_backbone", "build_model", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "orderlab.backbones"


def _check(cls: object) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Backbone)):
        raise TypeError(f"{cls!r} is not a Backbone subclass (orderlab.model.base.Backbone)")


BACKBONES: Registry[type[Backbone]] = Registry("backbone", entry_point_group=ENTRY_POINT_GROUP,
                                               builtins="orderlab.model.backbones", check=_check, name_attr="name")


def register_backbone(name: str):
    """Class decorator: register a Backbone subclass under ``name`` (the value of ``model.backbone.arch``)."""
    return BACKBONES.register(name)


def list_backbones() -> list[str]:
    """Names of every registered backbone (built-ins and entry-point plugins), sorted."""
    return BACKBONES.names()


def get_backbone(name: str) -> type[Backbone]:
    """The Backbone class registered under ``name``; an unknown name lists the choices."""
    return BACKBONES.get(name)


def build_model(config: ModelConfig) -> Backbone:
    """The backbone named by ``config.arch``, built from ``config``."""
    try:
        cls = get_backbone(config.arch)
    except UnknownNameError as err:
        raise UnknownNameError(f"model.backbone.arch: {err}") from None
    model = cls(config)
    for m in model.modules():
        if hasattr(m, "impl"):
            m.impl = config.attention
    return model
