"""BlockPrune engine: BlockPruner (arXiv 2406.10594) block pruning, pure ML and domain code.

Nothing in this package imports FastAPI, Celery or SQLAlchemy.
"""

from contract import __version__  # one version for the product

__all__ = ["__version__"]
