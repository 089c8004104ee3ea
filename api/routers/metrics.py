"""GET /metrics: Prometheus' text format (docs/observability.md).

No API key: Prometheus has none, and nothing here is a tenant's (no tenant, job id or path in
any label; job counts are the whole service's). The operator turns it off
(BLOCKPRUNE_METRICS_ENABLED=false: not routed) or asks for a bearer token
(BLOCKPRUNE_METRICS_TOKEN, Prometheus' `authorization` in its scrape config).
"""

from __future__ import annotations

import hmac
from functools import lru_cache
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from api.deps import SettingsDep
from api.errors import ApiError
from contract import ErrorCode
from service.metrics import ServiceStats, scrape_registry
from service.settings import get_settings

router = APIRouter(tags=["metrics"], include_in_schema=False)
_bearer = HTTPBearer(auto_error=False)


@lru_cache
def _registry() -> CollectorRegistry:
    """Built once per process: the multiprocess files and the stats are read at each scrape."""
    return scrape_registry(ServiceStats(get_settings().queue))


# Sync: the stats' wait (up to STATS_TIMEOUT_S) happens in the threadpool, not the event loop.
@router.get("/metrics")
def metrics(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Response:
    token = settings.metrics_token
    if token is not None:
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
            raise ApiError(
                ErrorCode.UNAUTHENTICATED,
                "metrics need 'Authorization: Bearer <BLOCKPRUNE_METRICS_TOKEN>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
    return Response(generate_latest(_registry()), media_type=CONTENT_TYPE_LATEST)
