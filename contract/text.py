"""The one rule for text a user gives (names, paths, labels)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

# Control characters (NUL...) and lone surrogates: no name, path or label needs them, and they
# break what stores or prints text (PostgreSQL refuses NUL, UTF-8 refuses surrogates).
_UNCLEAN = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def check_clean_text(value: str) -> str:
    found = _UNCLEAN.search(value)
    if found:
        code = f"U+{ord(found.group()):04X}"
        raise ValueError(f"must not contain control characters or lone surrogates ({code})")
    return value


CleanStr = Annotated[str, AfterValidator(check_clean_text)]
