"""Sending the signed webhooks of finished jobs from the outbox (service.webhook_outbox), with
retries and backoff.

Signature (documented in docs/service.md): header
    BlockPrune-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>
The receiver recomputes it with the shared secret and rejects old timestamps (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db import transaction
from service.jobstore import add_event
from service.settings import Settings
from service.tables import WebhookDelivery

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "BlockPrune-Signature"
BATCH = 20


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, tolerance_s: int = 300) -> bool:
    """What a receiver does (and what the tests check)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    fresh = abs(time.time() - timestamp) <= tolerance_s
    return fresh and hmac.compare_digest(expected, parts.get("v1", ""))


def check_target(url: str, allow_private: bool) -> None:
    """Refuse URLs that resolve to loopback/private/link-local addresses (SSRF into the
    service's own network) unless the operator allows them."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if allow_private:
        return
    for info in socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM):
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise ValueError(f"{parts.hostname} resolves to a non-public address ({address})")


def deliver_due(settings: Settings) -> int:
    """Send every due webhook once; returns how many were attempted. Rows are locked with
    SKIP LOCKED, so several reapers share the work without sending anything twice."""
    with transaction() as s:
        due = list(
            s.scalars(
                select(WebhookDelivery)
                .where(
                    WebhookDelivery.delivered_at.is_(None),
                    WebhookDelivery.gave_up_at.is_(None),
                    WebhookDelivery.next_attempt_at <= func.now(),
                )
                .order_by(WebhookDelivery.id)
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            )
        )
        for delivery in due:
            _attempt(s, delivery, settings)
    return len(due)


def _attempt(s: Session, delivery: WebhookDelivery, settings: Settings) -> None:
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    secret = settings.webhook_secret.get_secret_value()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "blockprune-webhooks",
        SIGNATURE_HEADER: sign(secret, int(time.time()), body),
    }
    delivery.attempts += 1
    try:
        check_target(delivery.url, settings.webhook_allow_private)
        response = httpx.post(
            delivery.url, content=body, headers=headers, timeout=settings.webhook_timeout_s
        )
        response.raise_for_status()
    except (httpx.HTTPError, ValueError, OSError) as e:
        delivery.last_error = str(e)[:500]
        if delivery.attempts >= settings.webhook_max_attempts:
            delivery.gave_up_at = func.now()
            add_event(
                s,
                delivery.job_id,
                "webhook",
                delivered=False,
                attempts=delivery.attempts,
                error=delivery.last_error,
            )
        else:
            delay = settings.webhook_backoff_s * 2 ** (delivery.attempts - 1)
            delivery.next_attempt_at = func.now() + timedelta(seconds=delay)
        log.warning("webhook %s attempt %d failed: %s", delivery.id, delivery.attempts, e)
        return
    delivery.delivered_at = func.now()
    add_event(s, delivery.job_id, "webhook", delivered=True, attempts=delivery.attempts)
