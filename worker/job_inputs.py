"""A job's inputs on a worker: checked against the tenant's reach, fetched from S3 when they
live there, and loaded (the model and the calibration tokens on this worker's device)."""

from __future__ import annotations

from collections.abc import Callable

from contract import JobSpec, Phase
from core.pipeline import PreparedJob, prepare_job
from service.db import transaction
from service.fit import check_bounds
from service.inputs import resolve_evaluation_data, resolve_input, upload_pins
from service.settings import Settings
from service.storage import s3_client
from worker.downloads import fetch_calibration, fetch_model
from worker.scratch import evict


def prepare(
    spec: JobSpec,
    tenant_id: str,
    settings: Settings,
    on_phase: Callable[[Phase], None] | None = None,
) -> PreparedJob:
    """The job's inputs checked (again: the job row may not have come from the API), fetched
    and loaded: the model and the calibration tokens on this worker's device."""
    check_bounds(settings, spec)
    with transaction() as session:
        model = resolve_input(session, settings, tenant_id, "model", spec.model)
        calibration = resolve_input(session, settings, tenant_id, "calibration", spec.calibration)
        pins = {
            source: upload_pins(session, tenant_id, source)
            for source in (spec.model, spec.calibration)
        }
    s3 = s3_client(settings)
    inputs = settings.cache_dir / "s3"
    model_path = calibration_path = None
    if model.startswith("s3://"):
        model_path = str(
            fetch_model(s3, model, inputs, shown_as=spec.model, pinned=pins[spec.model])
        )
    if calibration.startswith("s3://"):
        calibration_path = str(
            fetch_calibration(
                s3,
                calibration,
                inputs,
                shown_as=spec.calibration,
                max_bytes=settings.max_calibration_mb << 20,
                pinned=pins[spec.calibration],
            )
        )
    evict(inputs, int(settings.download_cache_gb * 2**30))
    return prepare_job(
        spec,
        device=settings.device,  # auto: every GPU, else the CPU (core.devices)
        cache_dir=str(settings.cache_dir),
        model_path=model_path,
        calibration_path=calibration_path,
        on_phase=on_phase,
        machine_budget=settings.cache_budget,
        max_weight_bytes=int(settings.max_model_gb * 2**30),  # hf: models, before downloading
    )


def fetch_evaluation_data(spec: JobSpec, tenant_id: str, settings: Settings) -> dict[str, str]:
    """{source: local path or builtin:/hf: source} of the job's evaluation texts, checked
    against the tenant's reach like the calibration text and fetched from S3 where they live."""
    with transaction() as session:
        resolved = resolve_evaluation_data(session, settings, tenant_id, spec)
        pins = {source: upload_pins(session, tenant_id, source) for source in resolved}
    s3 = s3_client(settings)
    inputs = settings.cache_dir / "s3"
    paths = {}
    for source, where in resolved.items():
        if where.startswith("s3://"):
            limit = settings.max_calibration_mb << 20
            where = str(
                fetch_calibration(
                    s3, where, inputs, shown_as=source, max_bytes=limit, pinned=pins[source]
                )
            )
        paths[source] = where
    evict(inputs, int(settings.download_cache_gb * 2**30))
    return paths
