"""Sending the signed webhooks of finished jobs from the outbox (service.webhook_outbox).

Signature (docs/service.md): header
    BlockPrune-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(tenant's secret, "<t>.<raw body>")>
Each tenant has its own secret, so no tenant can sign what another one receives.

A receiver cannot turn a delivery against the service, nor stall it:
- the host is resolved once, every address must be public (unless webhook_allow_private), and
  the request goes to the address that was checked, with the name in Host and in TLS (SNI and
  certificate check): a DNS answer that changes between check and connect cannot redirect it;
- an attempt has one deadline from connect to the answer's status line, reads at most
  webhook_max_response_bytes, and follows no redirect;
- deliveries are claimed in a short transaction, sent with none open, from a bounded pool of
  threads (never the reaper's own), and their outcome is recorded in another short one;
- a tenant sees "HTTP 500", "timeout", "refused: ...": never an exception's text.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import re
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from sqlalchemy import func, select

from service.db import transaction
from service.jobstore import add_event
from service.settings import Settings
from service.tables import Job, Tenant, WebhookDelivery

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "BlockPrune-Signature"
BATCH = 20
STATUS_LINE = re.compile(rb"^HTTP/1\.[01] ([1-5][0-9][0-9])")


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


class DeliveryFailed(Exception):
    """An attempt failed; `str(self)` is what the tenant may read ("timeout", "HTTP 500"...)."""


def check_target(url: str, allow_private: bool) -> str:
    """The address to connect to for `url`: its host resolved once, refused (ValueError) if any
    address is loopback, private, link-local or otherwise not public, unless allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except OSError:
        infos = []
    addresses = [str(info[4][0]) for info in infos]
    private = not allow_private and any(not ipaddress.ip_address(a).is_global for a in addresses)
    if not addresses or private:
        # One message whether the name does not resolve or resolves inside: the tenant reads it,
        # and two would tell them which internal names exist.
        raise ValueError(f"{parts.hostname} is not a reachable public address")
    return addresses[0]


def post_pinned(url: str, body: bytes, headers: dict[str, str], settings: Settings) -> int:
    """POST `body` to `url` at the address check_target approved; returns the status code."""
    parts = urlsplit(url)
    host, https = parts.hostname or "", parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    deadline = time.monotonic() + settings.webhook_deadline_s

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeliveryFailed("timeout")
        return left

    try:
        address = check_target(url, settings.webhook_allow_private)
    except ValueError as e:
        raise DeliveryFailed(f"refused: {e}") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    name = f"[{host}]" if ":" in host else host
    lines = [f"POST {path} HTTP/1.1", f"Host: {name}" + ("" if parts.port is None else f":{port}")]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    request = "\r\n".join(lines).encode("latin-1") + body
    try:
        with socket.create_connection((address, port), timeout=remaining()) as raw:
            sock: socket.socket = raw
            if https:
                sock = ssl.create_default_context().wrap_socket(raw, server_hostname=host)
            sock.settimeout(remaining())
            sock.sendall(request)
            answer = b""
            while b"\r\n" not in answer and len(answer) < settings.webhook_max_response_bytes:
                sock.settimeout(remaining())
                chunk = sock.recv(min(1024, settings.webhook_max_response_bytes - len(answer)))
                if not chunk:
                    break
                answer += chunk
    except TimeoutError:
        raise DeliveryFailed("timeout") from None
    except ssl.SSLError:
        raise DeliveryFailed("TLS handshake or certificate check failed") from None
    except OSError:
        raise DeliveryFailed("connection failed") from None
    status = STATUS_LINE.match(answer)
    if status is None:
        raise DeliveryFailed("the answer was not HTTP")
    return int(status.group(1))


# ---- the outbox ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Claimed:
    id: int
    job_id: str
    url: str
    body: bytes
    secret: str
    attempts: int


def claim_due(settings: Settings, limit: int) -> list[Claimed]:
    """Take up to `limit` due deliveries: counted as attempted, and held (not due) until their
    outcome is recorded, so no other sender takes them meanwhile. SKIP LOCKED: several reapers
    share the work without sending anything twice."""
    hold = timedelta(seconds=settings.webhook_deadline_s + 60)
    claimed = []
    with transaction() as s:
        rows = s.execute(
            select(WebhookDelivery, Tenant.webhook_secret)
            .join(Job, Job.id == WebhookDelivery.job_id)
            .join(Tenant, Tenant.id == Job.tenant_id)
            .where(
                WebhookDelivery.delivered_at.is_(None),
                WebhookDelivery.gave_up_at.is_(None),
                WebhookDelivery.next_attempt_at <= func.now(),
            )
            .order_by(WebhookDelivery.id)
            .limit(limit)
            .with_for_update(of=WebhookDelivery, skip_locked=True)
        ).all()
        for delivery, secret in rows:
            delivery.attempts += 1
            delivery.next_attempt_at = func.now() + hold
            body = json.dumps(delivery.payload, separators=(",", ":")).encode()
            claimed.append(
                Claimed(delivery.id, delivery.job_id, delivery.url, body, secret, delivery.attempts)
            )
    return claimed


def send(claimed: Claimed, settings: Settings) -> None:
    """One attempt, with no transaction open; then its outcome, in a short one."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "blockprune-webhooks",
        SIGNATURE_HEADER: sign(claimed.secret, int(time.time()), claimed.body),
    }
    outcome: str | None = None
    try:
        status = post_pinned(claimed.url, claimed.body, headers, settings)
        if not 200 <= status < 300:
            outcome = f"HTTP {status}" + (" (redirects are not followed)" if status < 400 else "")
    except DeliveryFailed as e:
        outcome = str(e)
    except Exception:  # a bug: logged in full, the tenant sees only that it failed
        log.exception("webhook %s: delivery failed unexpectedly", claimed.id)
        outcome = "failed"
    if outcome is not None:
        log.warning("webhook %s attempt %d failed: %s", claimed.id, claimed.attempts, outcome)
    _record(claimed, outcome, settings)


def _record(claimed: Claimed, outcome: str | None, settings: Settings) -> None:
    with transaction() as s:
        delivery = s.get(WebhookDelivery, claimed.id, with_for_update=True)
        if delivery is None:  # the job (and its outbox rows) were deleted meanwhile
            return
        if outcome is None:
            delivery.delivered_at = func.now()
            add_event(s, claimed.job_id, "webhook", delivered=True, attempts=claimed.attempts)
        elif claimed.attempts >= settings.webhook_max_attempts:
            delivery.last_error, delivery.gave_up_at = outcome, func.now()
            add_event(
                s,
                claimed.job_id,
                "webhook",
                delivered=False,
                attempts=claimed.attempts,
                error=outcome,
            )
        else:
            delivery.last_error = outcome
            delay = settings.webhook_backoff_s * 2 ** (claimed.attempts - 1)
            delivery.next_attempt_at = func.now() + timedelta(seconds=delay)


def deliver_due(settings: Settings) -> int:
    """Claim the due deliveries and send them now, waiting for every outcome (the reaper's
    `--once`, tests). Returns how many were attempted."""
    claimed = claim_due(settings, BATCH)
    with ThreadPoolExecutor(settings.webhook_concurrency, thread_name_prefix="webhook") as pool:
        list(pool.map(lambda c: send(c, settings), claimed))
    return len(claimed)


class WebhookSender:
    """The reaper's sender: it hands over due deliveries and goes on at once; at most
    2 x webhook_concurrency are claimed and not yet recorded at any time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool = ThreadPoolExecutor(settings.webhook_concurrency, thread_name_prefix="webhook")
        self._lock = threading.Lock()
        self._in_flight = 0

    def submit_due(self) -> int:
        with self._lock:
            room = 2 * self.settings.webhook_concurrency - self._in_flight
        if room <= 0:
            return 0
        claimed = claim_due(self.settings, min(room, BATCH))
        for delivery in claimed:
            with self._lock:
                self._in_flight += 1
            self._pool.submit(self._send, delivery)
        return len(claimed)

    def _send(self, delivery: Claimed) -> None:
        try:
            send(delivery, self.settings)
        finally:
            with self._lock:
                self._in_flight -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
