"""The API documents the contract: every error code with its meaning, and the job's fields,
statuses and phases as the contract defines them (no database needed to build the schema)."""

from __future__ import annotations

from api.app import create_app
from contract import ErrorCode, JobSpec, JobStatus, Phase


def test_openapi_renders_every_error_code_and_the_contracts_types():
    schema = create_app().openapi()
    description = schema["info"]["description"]
    for code in ErrorCode:
        assert f"| `{code.value}` | {code.describe()} |" in description
    components = schema["components"]["schemas"]
    assert components["ErrorCode"]["enum"] == [c.value for c in ErrorCode]
    assert components["JobStatus"]["enum"] == [s.value for s in JobStatus]
    assert components["Phase"]["enum"] == [p.value for p in Phase]
    # The request and the response carry JobSpec's fields, with its bounds.
    create, view = components["JobCreate"]["properties"], components["JobView"]["properties"]
    for name in JobSpec.model_fields:
        assert name in create and name in view, name
    assert create["samples"]["minimum"] == 1 and create["samples"]["maximum"] == 65536
    assert set(components["JobCreate"]["required"]) == {"model", "calibration"}
    # Error responses are documented with the one error shape.
    create_job = schema["paths"]["/v1/jobs"]["post"]["responses"]
    assert create_job["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
