"""What a job or `blockprune eval` measures on the model before and after pruning.

`EvaluationSpec` is the job's optional `evaluation` field: held-out perplexity on text sources,
zero-shot tasks (lm-evaluation-harness), speed and memory. It never changes which blocks a search
picks, so it is outside the result fields (a finished search can be evaluated again).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from contract.sources import check_builtin_calibration
from contract.text import check_clean_text

Source = Annotated[
    str,
    Field(min_length=1, max_length=1024),
    AfterValidator(check_clean_text),
    AfterValidator(check_builtin_calibration),
]
TaskName = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(check_clean_text)]
# Held-out text that ships with every Python and that no builtin calibration reads first: the
# documentation topics in reverse order (a calibration takes the first tokens in forward order).
DEFAULT_EVAL_DATA = "builtin:stdlib-docs-heldout"


class EvaluationSpec(BaseModel):
    """Measured before and after pruning, side by side; every part is optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: list[Source] = Field(
        default_factory=list,
        max_length=8,
        description="text sources for held-out perplexity (.txt/.jsonl on the CLI, upload:ID or "
        f"s3:// in the service, {DEFAULT_EVAL_DATA}, hf:wikitext2-test)",
    )
    tasks: list[TaskName] = Field(
        default_factory=list,
        max_length=16,
        description="zero-shot tasks of lm-evaluation-harness (e.g. piqa, arc_easy); on the CLI "
        "also a local task .yaml; needs the [eval] extra",
    )
    speed: bool = Field(
        False, strict=True, description="prefill and decode tokens/s, peak memory, parameters"
    )
    seq_len: int = Field(
        256, strict=True, ge=2, le=131072, description="tokens per perplexity window"
    )
    stride: int | None = Field(
        None,
        strict=True,
        ge=1,
        le=131072,
        description="tokens between window starts (default seq_len: disjoint windows); a smaller "
        "stride scores each token once with more context",
    )
    max_tokens: int | None = Field(
        65536,
        strict=True,
        ge=2,
        le=1 << 26,
        description="perplexity over at most this many tokens of each source (None: all)",
    )
    task_limit: int | None = Field(
        None, strict=True, ge=1, le=100000, description="examples per task (default: all)"
    )

    @model_validator(mode="after")
    def _something(self) -> EvaluationSpec:
        if self.stride is not None and self.stride > self.seq_len:
            raise ValueError(f"stride ({self.stride}) must not exceed seq_len ({self.seq_len})")
        return self

    @property
    def empty(self) -> bool:
        return not (self.data or self.tasks or self.speed)
