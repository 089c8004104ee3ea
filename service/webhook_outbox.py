"""What a finished job's webhook says, queued in the outbox with the job's final state.

The outbox row is written in the transaction that finishes the job, so a webhook is never lost
nor sent for a state that was rolled back; worker.webhooks delivers it.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from sqlalchemy.orm import Session

from contract import SearchState
from service.tables import Job, WebhookDelivery


def queue_webhook(session: Session, job: Job) -> None:
    assert job.webhook_url is not None
    session.add(WebhookDelivery(job_id=job.id, url=job.webhook_url, payload=webhook_payload(job)))


def webhook_payload(job: Job) -> dict:
    state = SearchState.from_json(job.state) if job.state else SearchState()
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "type": f"job.{job.status}",
        "created_at": datetime.now(timezone.utc).isoformat(),
        "data": {
            "id": job.id,
            "status": job.status,
            "error": job.error,
            "removed": [r.model_dump() for r in state.removed],
            "metadata": job.user_metadata,
        },
    }
