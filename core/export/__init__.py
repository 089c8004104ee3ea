"""Export a block-pruned model as a directory that loads, and load it back without remote code.

`writer` writes an export, `loader` reads one, `modeling_code` holds what both share: the
export's file names and the modeling code shipped in it.
"""

from core.export.loader import load_pruned
from core.export.writer import export_pruned

__all__ = ["export_pruned", "load_pruned"]
