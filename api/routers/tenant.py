"""/v1/tenant: who the key belongs to and where its uploads live; /v1/webhook-secret: rotate
the secret that signs this tenant's webhooks (shown once)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import SessionDep, SettingsDep, TenantDep
from api.errors import ERROR_RESPONSES
from service.keys import rotate_webhook_secret
from service.storage import upload_prefix
from service.tables import Tenant

router = APIRouter(tags=["tenant"], responses=ERROR_RESPONSES)


class TenantView(BaseModel):
    id: str
    name: str
    upload_prefix: str = Field(description="s3:// inputs of this tenant's own live under here")


class WebhookSecret(BaseModel):
    webhook_secret: str = Field(description="shown only now: store it with your receiver")


@router.get("/tenant", response_model=TenantView)
def get_tenant(session: SessionDep, tenant: TenantDep, settings: SettingsDep) -> TenantView:
    row = session.get(Tenant, tenant)
    assert row is not None  # the key's tenant exists (the key would be gone with it)
    prefix = f"s3://{settings.s3_bucket}/{upload_prefix(tenant, '')}"
    return TenantView(id=row.id, name=row.name, upload_prefix=prefix)


@router.post("/webhook-secret", response_model=WebhookSecret)
def rotate_secret(session: SessionDep, tenant: TenantDep) -> WebhookSecret:
    """A new secret signs every webhook from now on, retries of earlier ones included."""
    secret = rotate_webhook_secret(session, tenant)
    session.commit()
    return WebhookSecret(webhook_secret=secret)
