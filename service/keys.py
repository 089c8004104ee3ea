"""Tenants and their API keys. A key is shown once, when made; only its sha256 is stored."""

from __future__ import annotations

import hashlib
import secrets
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.tables import ApiKey, Tenant

KEY_PREFIX = "bp_"


def hash_key(key: str) -> str:
    # Keys are 256 random bits, so a plain fast hash is safe (no dictionary to attack).
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, tenant_name: str) -> str:
    """Make a new key for `tenant_name` (creating the tenant if new); returns the key itself."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        tenant = Tenant(id=str(uuid.uuid4()), name=tenant_name)
        session.add(tenant)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(id=str(uuid.uuid4()), tenant_id=tenant.id, key_hash=hash_key(key), prefix=key[:10])
    )
    return key


def tenant_for_key(session: Session, key: str) -> str | None:
    """The tenant id a live key belongs to, or None."""
    return session.scalar(
        select(ApiKey.tenant_id).where(
            ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)
        )
    )
