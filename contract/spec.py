"""JobSpec: the single list of a pruning job's fields, with their bounds, defaults and help.

The CLI's `prune` arguments (core.cli), the API's request and response bodies (api.schemas) and
the engine's recipe (core.pipeline.run_prune) are all built from this class; none lists the
fields again. Where a job runs (device, cache folders) is not part of it: that belongs to the
machine, not to the job.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from contract.errors import UserError
from contract.evaluation import EvaluationSpec
from contract.methods import METHOD_TRAITS
from contract.racing import DEFAULT_RACE_MARGIN, race_problem
from contract.sources import check_builtin_calibration, check_builtin_model
from contract.text import CleanStr

METHODS: tuple[str, ...] = tuple(METHOD_TRAITS)  # the registry's names, in its order
if TYPE_CHECKING:
    Method = str
else:  # a Literal of the registry's names: an enum in the API's schema, checked by pydantic
    Method = Literal[METHODS]
Search = Literal["exact", "racing"]
RACE_FIELDS = ("race_slice", "race_margin")  # settings of the racing search only
BlockTypes = Literal["mix", "mha", "mlp"]
BLOCK_TYPES: tuple[str, ...] = get_args(BlockTypes)
BLOCK_KINDS = ("mha", "mlp")  # the two blocks of a decoder layer; "mix" searches both
Dtype = Literal["float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = get_args(Dtype)
# What `blockprune prune` with no arguments runs: the embedded model on built-in text.
EMBEDDED_DEFAULTS: dict[str, Any] = {
    "model": "builtin:smollm2-135m",
    "calibration": "builtin:stdlib-docs",
    "num_blocks": 4,
}
# Fields that change a search's length or its speed, never which block each step picks: a
# saved state stays valid when they change (a finished search can be extended).
RESULT_NEUTRAL = frozenset(
    {
        "num_blocks",
        "param_ratio",
        "batch_size",
        "cache_budget",
        "evaluation",
        "heal",
        "general_export",
    }
)
TARGET_FIELDS = ("num_blocks", "param_ratio")  # give exactly one


class JobSpec(BaseModel):
    """What to prune and how. Validated on construction; bad values raise pydantic's
    ValidationError (the API's 422) or, through `JobSpec.parse`, a UserError (the CLI's exit 2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: CleanStr = Field(
        min_length=1,
        max_length=1024,
        description="the model: a local directory (CLI only), upload:ID or s3://bucket/prefix/ "
        "(service), hf:ORG/NAME[@revision] or builtin:smollm2-135m",
    )
    calibration: CleanStr = Field(
        min_length=1,
        max_length=1024,
        description="calibration text: file.txt or file.jsonl (CLI only), upload:ID or "
        "s3://bucket/key.txt|.jsonl (service), builtin:stdlib-docs, hf:wikitext2 or hf:alpaca",
    )
    method: Method = Field(
        "blockpruner",
        description="; ".join(f"{name}: {t.summary}" for name, t in METHOD_TRAITS.items()),
    )
    num_blocks: int | None = Field(
        None,
        strict=True,
        ge=1,
        description="blocks to remove (a layer method removes num_blocks/2 layers)",
    )
    param_ratio: float | None = Field(
        None,
        strict=True,
        gt=0,
        lt=1,
        description="or: remove blocks up to this fraction of the parameters",
    )
    block_types: BlockTypes = Field("mix", description="which blocks may be removed")
    # Small defaults: the embedded default job runs in minutes on 2 CPU cores.
    samples: int = Field(8, strict=True, ge=1, le=65536, description="calibration sequences")
    seq_len: int = Field(
        64, strict=True, ge=2, le=131072, description="tokens per calibration sequence"
    )
    seed: int = Field(
        0, strict=True, ge=0, le=2**32 - 1, description="shuffles .jsonl rows; seeds evo's search"
    )
    dtype: Dtype = Field("float32", description="the model's dtype during the search")
    text_field: CleanStr = Field(
        "text", min_length=1, max_length=128, description="the text key of .jsonl rows"
    )
    batch_size: int | None = Field(
        None,
        strict=True,
        ge=1,
        description="sequences per forward chunk (default: all at once); "
        "changes speed and memory, never the result",
    )
    cache_budget: ByteSize | None = Field(
        None,
        le=2**50,
        description="memory for the search's activation cache, e.g. 8GiB, 512MiB or 0 "
        "(recompute from the embeddings); default: what fits beside the model. Changes speed "
        "and memory, never the result",
    )
    search: Search = Field(
        "exact",
        description="exact: score every candidate on every calibration sequence; racing: score "
        "all on a first slice, finish only those that could still win (each step's PPL is "
        "still the full-set one)",
    )
    race_slice: int | None = Field(
        None,
        strict=True,
        ge=1,
        le=65536,
        description="racing: sequences in the first slice; later stages double it (default: "
        "a quarter of samples, at least 4)",
    )
    race_margin: float | None = Field(
        None,
        strict=True,
        ge=0,
        le=1000,
        description="racing: how many standard errors of its NLL difference to the leader a "
        f"candidate may trail by and race on (default {DEFAULT_RACE_MARGIN}); higher is safer "
        "and slower",
    )

    heal: bool = Field(
        False,
        strict=True,
        description="after the search, fold a least-squares linear map per removed span into "
        "the weights that stay (training-free; the export stays a model of the same shape)",
    )
    general_export: bool = Field(
        False,
        strict=True,
        description="export as model type blockprune (with its modeling code) even when only "
        "whole layers were removed; by default such a result exports as the base architecture "
        "with fewer layers, which loads without remote code",
    )
    evaluation: EvaluationSpec | None = Field(
        None,
        description="measure the model before and after pruning: held-out perplexity, "
        "zero-shot tasks, speed and memory (never changes the result)",
    )

    _known_builtin_model = field_validator("model")(check_builtin_model)
    _known_builtin_calibration = field_validator("calibration")(check_builtin_calibration)

    @model_validator(mode="after")
    def _one_target(self) -> JobSpec:
        if (self.num_blocks is None) == (self.param_ratio is None):
            raise _field_error("num_blocks", "give exactly one of num_blocks or param_ratio")
        problem = method_problem(self.method, self.block_types, self.num_blocks)
        if problem is not None:
            raise _field_error(*problem)
        problem = search_problem(
            self.search, self.method, self.samples, self.batch_size, self.race_slice
        )
        if problem is not None:
            raise _field_error(*problem)
        if self.search == "exact":
            for name in RACE_FIELDS:
                if getattr(self, name) is not None:
                    raise _field_error(name, "applies to search racing only")
        return self

    # ---- construction from user input --------------------------------------------------------
    @classmethod
    def parse(cls, values: dict[str, Any]) -> JobSpec:
        """Build a spec from a user's values; the first problem is a UserError naming the field
        in plain words ("seq_len: must be at least 2, got 1")."""
        try:
            return cls(**values)
        except ValidationError as e:
            raise user_error(e) from None

    @classmethod
    def check_fields(cls, **values: Any) -> None:
        """Check some fields alone, by the same rules (core.search.SearchConfig uses it)."""
        for name, value in values.items():
            info = cls.model_fields[name]
            try:
                TypeAdapter(info.rebuild_annotation()).validate_python(value)
            except ValidationError as e:
                raise user_error(e, name) from None
        if set(TARGET_FIELDS) <= values.keys():
            if (values["num_blocks"] is None) == (values["param_ratio"] is None):
                raise UserError("num_blocks", "give exactly one of num_blocks or param_ratio")

    @property
    def evaluates(self) -> bool:
        """Whether the job asks to measure anything before and after (an `evaluation` with at
        least one measure): the one test of whether it has an `evaluating` phase."""
        return self.evaluation is not None and not self.evaluation.empty

    # ---- what made a result ------------------------------------------------------------------
    def result_fields(self) -> dict[str, Any]:
        """The fields that decide which blocks the search picks (saved with every state). The
        default method is left out, so states and hashes from before methods existed match."""
        fields = self.model_dump(mode="json", exclude=set(RESULT_NEUTRAL))
        if fields["method"] == "blockpruner":
            del fields["method"]
        if fields["search"] == "exact":  # likewise the default search and its unused settings
            for name in ("search", *RACE_FIELDS):
                del fields[name]
        return fields

    def config_hash(self) -> str:
        """A stable hash of `result_fields()` (stored on jobs; unchanged since states had it)."""
        blob = json.dumps(self.result_fields(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def differences(self, saved: dict[str, Any]) -> list[str]:
        """How `saved` result fields differ from this spec's: ["seq_len: 128 in the state, 64
        now", ...]; empty when a state made with `saved` can be resumed with this spec."""
        # result_fields() leaves the default method and search out
        default = {"method": "blockpruner", "search": "exact"}
        now, saved = {**default, **self.result_fields()}, {**default, **saved}
        return [
            f"{name}: {saved.get(name)!r} in the state, {now[name]!r} now"
            for name in sorted(now.keys() | saved.keys())
            if saved.get(name) != now.get(name)
        ]


def method_problem(method: str, block_types: str, num_blocks: int | None) -> tuple[str, str] | None:
    """(field, message) when the method cannot take these settings (a layer method, settings
    that only fit blocks; a budget method, a block count); else None."""
    traits = METHOD_TRAITS[method]
    if traits.budget_only and num_blocks is not None:
        return (
            "num_blocks",
            f"{method} searches for the best set at a parameter budget: give param_ratio "
            "instead of num_blocks",
        )
    if not traits.layer_units:
        return None
    if block_types != "mix":
        return "block_types", f"{method} removes whole layers: use mix, not {block_types}"
    if num_blocks is not None and num_blocks % 2:
        return (
            "num_blocks",
            f"{method} removes whole layers (2 blocks each): give an even number, got {num_blocks}",
        )
    return None


def blocks_problem(
    num_layers: int, block_types: str, num_blocks: int | None
) -> tuple[str, str] | None:
    """(field, message) when a model of `num_layers` has fewer blocks of `block_types` than
    `num_blocks` asks to remove; else None."""
    blocks = num_layers * (2 if block_types == "mix" else 1)
    if num_blocks is not None and num_blocks > blocks:
        return "num_blocks", (
            f"must be at most the model's {blocks:,} {block_types} blocks "
            f"({num_layers} layers), got {num_blocks:,}"
        )
    return None


def search_problem(
    search: str, method: str, samples: int, batch_size: int | None, race_slice: int | None
) -> tuple[str, str] | None:
    """(field, message) when `search` cannot run with these settings; else None."""
    if search != "racing":
        return None
    if not METHOD_TRAITS[method].races:
        return "search", f"{method} ranks layers in one pass: racing applies to greedy methods"
    return race_problem(samples, batch_size, race_slice)


def _field_error(field: str, message: str) -> ValidationError:
    """A validation error located at `field` (a model validator's own errors have no field)."""
    error = InitErrorDetails(
        type=PydanticCustomError("value_error", message), loc=(field,), input=None
    )
    return ValidationError.from_exception_data(JobSpec.__name__, [error])


def user_error(e: ValidationError, field: str | None = None) -> UserError:
    """The first problem of a ValidationError as a UserError, with bounds in plain words."""
    first = e.errors()[0]
    name = field or ".".join(str(p) for p in first["loc"]) or "spec"
    info = JobSpec.model_fields.get(name)
    return UserError(name, _plain(first, info.metadata if info else []))


def _plain(error: Any, metadata: list[Any]) -> str:
    kind, ctx, value = error["type"], error.get("ctx", {}), error.get("input")
    bounds = {k: getattr(m, k) for m in metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}
    if kind in ("greater_than", "less_than") and {"gt", "lt"} <= bounds.keys():
        return f"must be between {bounds['gt']} and {bounds['lt']}, got {value}"
    words = {
        "greater_than_equal": "must be at least {ge}",
        "greater_than": "must be above {gt}",
        "less_than_equal": "must be at most {le}",
        "less_than": "must be below {lt}",
    }
    if kind in words:
        return words[kind].format(**ctx) + f", got {value}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected'].replace(' or ', ', ')}, got {value!r}"
    if kind == "missing":
        return "is required"
    return str(error["msg"]).removeprefix("Value error, ")
