"""The job contract every layer shares: the spec, the search state, the status machine, errors.

It imports neither torch nor a web or queue framework (an import-linter contract keeps it so),
so the API, the worker, the engine and the CLI can all depend on it.
"""

__version__ = "0.1.0"  # the product's version (the engine, the API and exports report it)

from contract.blocks import Block, Unit
from contract.errors import ErrorCode, UserError
from contract.spec import BLOCK_KINDS, BLOCK_TYPES, DTYPES, EMBEDDED_DEFAULTS, JobSpec
from contract.state import Progress, RemovedBlock, SearchState
from contract.status import (
    LEASED_STATUSES,
    TERMINAL_STATUSES,
    IllegalTransition,
    ItemStatus,
    JobStatus,
    Phase,
    check_transition,
)

__all__ = [
    "__version__",
    "BLOCK_KINDS",
    "BLOCK_TYPES",
    "DTYPES",
    "EMBEDDED_DEFAULTS",
    "LEASED_STATUSES",
    "TERMINAL_STATUSES",
    "Block",
    "ErrorCode",
    "IllegalTransition",
    "ItemStatus",
    "JobSpec",
    "JobStatus",
    "Phase",
    "Progress",
    "RemovedBlock",
    "SearchState",
    "Unit",
    "UserError",
    "check_transition",
]
