"""Tenants, their API keys and their webhook secrets.

A key is shown once, when made; only its sha256 and its first characters (the prefix that
names it in `keys list` and `keys revoke`) are stored. A tenant's webhook secret is made with
the tenant and shown once then, or when rotated.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.tables import ApiKey, Tenant

KEY_PREFIX = "bp_"
PREFIX_LENGTH = 12  # "bp_" and 9 random characters: enough to tell a tenant's keys apart
LAST_USED_RESOLUTION = timedelta(minutes=1)  # at most one write per key per minute


@dataclass
class IssuedKey:
    key: str  # the key itself: shown once
    prefix: str
    tenant_id: str
    webhook_secret: str | None  # the new tenant's webhook secret; None for an existing tenant


@dataclass
class KeyInfo:
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class UnknownKeyPrefix(LookupError):
    """No key, or more than one, has the given prefix."""


def hash_key(key: str) -> str:
    # Keys are 256 random bits, so a plain fast hash is safe (no dictionary to attack).
    return hashlib.sha256(key.encode()).hexdigest()


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_hex(24)


def create_key(session: Session, tenant_name: str) -> IssuedKey:
    """Make a new key for `tenant_name`, creating the tenant (and its webhook secret) if new."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    secret = None
    if tenant is None:
        secret = new_webhook_secret()
        tenant = Tenant(id=str(uuid.uuid4()), name=tenant_name, webhook_secret=secret)
        session.add(tenant)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    prefix = key[:PREFIX_LENGTH]
    session.add(
        ApiKey(id=str(uuid.uuid4()), tenant_id=tenant.id, key_hash=hash_key(key), prefix=prefix)
    )
    return IssuedKey(key, prefix, tenant.id, secret)


def tenant_for_key(session: Session, key: str) -> str | None:
    """The tenant id a live key belongs to, or None. Records when the key was last used (the
    caller commits)."""
    row = session.execute(
        select(ApiKey.id, ApiKey.tenant_id, ApiKey.last_used_at).where(
            ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)
        )
    ).one_or_none()
    if row is None:
        return None
    # Most requests come well within the resolution of the last use: no write at all for them
    # (bench/load.py).
    recent = row.last_used_at is not None and (
        datetime.now(timezone.utc) - row.last_used_at < LAST_USED_RESOLUTION
    )
    if not recent:
        stale = func.now() - LAST_USED_RESOLUTION
        session.execute(
            update(ApiKey)
            .where(ApiKey.id == row.id)
            .where((ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at < stale))
            .values(last_used_at=func.now())
        )
    return row.tenant_id


def list_keys(session: Session, tenant_name: str) -> list[KeyInfo]:
    rows = session.execute(
        select(ApiKey.prefix, ApiKey.created_at, ApiKey.last_used_at, ApiKey.revoked_at)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(Tenant.name == tenant_name)
        .order_by(ApiKey.created_at)
    ).all()
    return [KeyInfo(*row) for row in rows]


def revoke_key(session: Session, prefix: str) -> KeyInfo:
    """Revoke the one key with this prefix; it is refused from the next request on."""
    keys = list(session.scalars(select(ApiKey).where(ApiKey.prefix == prefix).with_for_update()))
    if len(keys) != 1:
        found = "no key" if not keys else f"{len(keys)} keys"
        hint = "`keys list --tenant NAME` shows each key's prefix"
        raise UnknownKeyPrefix(f"{found} with prefix {prefix!r}; {hint}")
    key = keys[0]
    if key.revoked_at is None:
        key.revoked_at = func.now()
        session.flush()
        session.refresh(key)
    return KeyInfo(key.prefix, key.created_at, key.last_used_at, key.revoked_at)


def rotate_webhook_secret(session: Session, tenant_id: str) -> str:
    """A new webhook secret for the tenant (the old one stops signing at once)."""
    secret = new_webhook_secret()
    tenant = session.get(Tenant, tenant_id, with_for_update=True)
    assert tenant is not None
    tenant.webhook_secret = secret
    return secret
