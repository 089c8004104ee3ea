"""The decoder families BlockPrune prunes, and where each keeps the parts of its two blocks.

Every supported decoder layer is two residual blocks, attention then MLP; the families differ in
where the norms sit around a block's branch:

    pre-norm  (Llama, Mistral, Qwen 2/3, Phi-3, Mixtral, Qwen MoE):  h + branch(pre(h))
    sandwich  (Gemma 2, Gemma 3):                                    h + post(branch(pre(h)))
    post-norm (OLMo 2):                                              h + post(branch(h))

A norm belongs to the block it wraps, so removing a block removes its norms with it. Every norm
here is an RMSNorm, which maps zeros to zeros: a branch whose output projection is zeroed adds
nothing, with or without a post-norm, which is what the equivalence tests rely on.

A mixture-of-experts layer's MLP block is its whole sparse block (router, experts and any shared
expert). transformers 4 returns (output, router logits) from those blocks and names Mixtral's
`block_sparse_moe`; from 5 they return the output and are all `mlp`, which the exported modeling
code relies on, so mixture-of-experts families need transformers 5.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from contract import ErrorCode, UserError


@dataclass(frozen=True)
class BlockParts:
    """The attribute names, in a decoder layer, of one block's branch and of its norms."""

    pre: str | None
    branch: str
    post: str | None

    @property
    def norms(self) -> tuple[str, ...]:
        return tuple(n for n in (self.pre, self.post) if n is not None)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.branch, *self.norms)


@dataclass(frozen=True)
class Family:
    attention: BlockParts
    mlp: BlockParts
    moe: bool = False  # the MLP block is a sparse mixture of experts (transformers >= 5)
    # Gemma scales the embeddings by sqrt(hidden_size): inside the embedding module from
    # transformers 5 (and in Gemma 3 always), in Gemma 2's model forward before.
    scale_embeddings: bool = False

    def parts(self, kind: str) -> BlockParts:
        return self.attention if kind == "mha" else self.mlp

    def export_parts(self) -> dict[str, tuple[str, ...]]:
        """The exported modeling code's BLOCK_PARTS: by block_configs key, branch then norms."""
        return {"attention": self.attention.names, "ffn": self.mlp.names}


PRE_NORM = Family(
    BlockParts("input_layernorm", "self_attn", None),
    BlockParts("post_attention_layernorm", "mlp", None),
)
SANDWICH = Family(
    BlockParts("input_layernorm", "self_attn", "post_attention_layernorm"),
    BlockParts("pre_feedforward_layernorm", "mlp", "post_feedforward_layernorm"),
    scale_embeddings=True,
)
POST_NORM = Family(
    BlockParts(None, "self_attn", "post_attention_layernorm"),
    BlockParts(None, "mlp", "post_feedforward_layernorm"),
)
MIXTURE = replace(PRE_NORM, moe=True)

FAMILIES: dict[str, Family] = {
    "llama": PRE_NORM,
    "mistral": PRE_NORM,
    "qwen2": PRE_NORM,
    "qwen3": PRE_NORM,
    "phi3": PRE_NORM,  # fused qkv_proj and gate_up_proj: inside the branches
    "gemma2": SANDWICH,  # also soft-caps its logits (BlockModel.logits)
    "gemma3_text": SANDWICH,  # local and global rotary embeddings (BlockModel._rotary)
    "olmo2": POST_NORM,
    "mixtral": MIXTURE,
    "qwen2_moe": MIXTURE,  # with a gated shared expert, inside the sparse block
    "qwen3_moe": MIXTURE,
}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)
# Without per-layer `layer_types`, these apply their config's sliding_window (when it is set) on
# every layer, as their transformers models build their masks.
WINDOW_ON_EVERY_LAYER = frozenset({"mistral", "phi3", "mixtral", "qwen3_moe"})


def family_of(model_type: str | None) -> Family:
    """The family of a supported model type; a clear error for any other, or for a
    mixture-of-experts model under transformers 4."""
    family = FAMILIES.get(model_type or "")
    if family is None:
        raise UserError(
            "model",
            f"architecture {model_type!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (decoders whose layers are an attention block "
            "and an MLP block)",
            code=ErrorCode.UNSUPPORTED_ARCHITECTURE,
        )
    if family.moe and not moe_supported():
        import transformers

        raise UserError(
            "model",
            f"{model_type} is a mixture-of-experts model: pruning it needs transformers 5 or "
            f"newer (this is {transformers.__version__})",
            code=ErrorCode.UNSUPPORTED_ARCHITECTURE,
        )
    return family


def moe_supported() -> bool:
    import transformers

    return int(transformers.__version__.split(".")[0]) >= 5
