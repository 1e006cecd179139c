"""Name -> class registries for the swappable parts of the GPT (attention, FFN, norm, positions, sparsity).

Each part kind has one :class:`PartRegistry`, keyed by the strings of the matching ``ModelConfig``
field (``model.attention``, ``model.ffn``, ``model.norm``, ``model.positions``). A variant is a
sibling class decorated with ``@REGISTRY.register("name")``; the GPT asks the registry to build
the part from the config, so it never grows an ``if`` per variant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

from forgetlab.config import ConfigError, ModelConfig

PartT = TypeVar("PartT", bound=type[nn.Module])


class PartRegistry:
    """The classes that can fill one part of the model, found by the name in ``ModelConfig``."""

    def __init__(self, field: str) -> None:
        self.field = field
        self._classes: dict[str, type[nn.Module]] = {}

    def register(self, name: str) -> Callable[[PartT], PartT]:
        """Class decorator: make ``cls`` the part built when ``model.<field> == name``."""

        def add(cls: PartT) -> PartT:
            if name in self._classes:
                raise ValueError(f"model.{self.field} = {name!r} is registered twice")
            self._classes[name] = cls
            return cls

        return add

    def names(self) -> list[str]:
        return sorted(self._classes)

    def get(self, name: str) -> type[nn.Module]:
        try:
            return self._classes[name]
        except KeyError:
            raise ConfigError(
                f"model.{self.field} = {name!r} has no registered part; allowed: {self.names()}"
            ) from None

    def build(self, cfg: ModelConfig, layer: int = 0) -> nn.Module:
        """Instantiate the class named by ``cfg.<field>`` with the whole model config.

        A class with a ``for_layer(cfg, layer)`` classmethod decides per layer (MoE in every n-th
        layer, the dense FFN elsewhere); every other class is built the same in every layer.
        """
        cls = self.get(getattr(cfg, self.field))
        for_layer = getattr(cls, "for_layer", None)
        return for_layer(cfg, layer) if for_layer is not None else cls(cfg)
