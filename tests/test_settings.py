"""The service's settings refuse what would be unsafe, at start (no database needed)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_a_global_webhook_secret_is_refused():
    with pytest.raises(ValidationError, match="BLOCKPRUNE_WEBHOOK_SECRET is no longer used"):
        Settings(webhook_secret="change-me")


@pytest.mark.parametrize("prefixes", ["models", "models/../jobs/", "a/,b"])
def test_shared_prefixes_are_folders_without_dot_dots(prefixes):
    with pytest.raises(ValidationError, match="s3_shared_prefixes"):
        Settings(s3_shared_prefixes=prefixes)


def test_lists_are_comma_separated():
    settings = Settings(s3_shared_prefixes=" models/public/, /texts/ ", hf_allowed_orgs="a, b")
    assert settings.shared_prefixes() == ["models/public/", "texts/"]
    assert settings.hf_orgs() == ["a", "b"]
