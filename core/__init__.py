"""BlockPrune engine: BlockPruner (arXiv 2406.10594) block pruning, pure ML and domain code.

Nothing in this package imports FastAPI, Celery or SQLAlchemy.
"""

__version__ = "0.1.0"
