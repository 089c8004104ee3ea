"""A block of a decoder: the one type every layer uses for it, from the engine to the API.

Layer i of a decoder is two blocks, its attention ("mha") and its MLP ("mlp"). A `Block` is
frozen and hashable, so it keys sets and dicts in the engine and the fan-out alike; its JSON is
`{"block": "mha", "layer": 3}` (checkpoints, events, the API), and it also reads the
`["mha", 3]` pair that work items and plans stored before it existed.

A `Unit` is what one search step removes: one block, or a whole layer's two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contract.errors import UserError

BlockKind = Literal["mha", "mlp"]


class Block(BaseModel):
    """The attention (mha) or MLP block of decoder layer `layer`."""

    model_config = ConfigDict(frozen=True, validate_by_name=True, serialize_by_alias=True)
    kind: BlockKind = Field(alias="block", description="mha (attention) or mlp")
    layer: int = Field(ge=0, description="the decoder layer, from 0")

    def __init__(
        self, kind: BlockKind | None = None, layer: int | None = None, /, **data: Any
    ) -> None:
        """`Block("mha", 3)` reads as the pair it is; keywords (`kind=`/`block=`, `layer=`)
        work too."""
        if kind is not None:
            data["kind"] = kind
        if layer is not None:
            data["layer"] = layer
        super().__init__(**data)

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, data: Any) -> Any:
        """Read a `[kind, layer]` pair (the stored form of older work items and plans)."""
        if isinstance(data, Sequence) and not isinstance(data, str) and len(data) == 2:
            return {"block": data[0], "layer": data[1]}
        return data

    @classmethod
    def parse(cls, data: Any, field: str = "block") -> Block:
        """A block from JSON, or a clear error naming `field`."""
        try:
            return cls.model_validate(data)
        except ValidationError:
            raise UserError(
                field, f"expected {{'block': 'mha'|'mlp', 'layer': int >= 0}}, got {data!r:.100}"
            ) from None

    @property
    def position(self) -> int:
        """Where it runs in the forward pass: attention of layer i at 2i, its MLP at 2i + 1."""
        return 2 * self.layer + (self.kind == "mlp")

    @classmethod
    def at(cls, position: int) -> Block:
        """The block at a forward-pass position (the inverse of `position`)."""
        return cls(kind="mlp" if position % 2 else "mha", layer=position // 2)

    def __str__(self) -> str:
        return f"{self.kind}.{self.layer}"


# What one search step removes: one block, or a whole layer's attention and MLP.
Unit = tuple[Block, ...]


def layer_blocks(layer: int) -> Unit:
    """Layer `layer` whole: its attention, then its MLP."""
    return (Block(kind="mha", layer=layer), Block(kind="mlp", layer=layer))
