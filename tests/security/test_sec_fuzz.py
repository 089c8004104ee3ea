"""Property-based fuzzing of every endpoint from the OpenAPI schema (schemathesis), bounded in
time: valid and invalid inputs, NUL bytes, lone surrogates, huge and deeply nested bodies, and
the ids of real jobs and uploads (from the stateful run's links and from jobs made up front).
No answer may be a server error, and every error must be in the one error shape."""

from __future__ import annotations

import json

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis import GenerationMode

from api.app import create_app

from .corpus import JOB
from .helpers import announce

schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], allow_x00=True
)
schema.config.generation.codec = None  # any code point in strings, not only what UTF-8 encodes
fuzzed = schema.exclude(path_regex="^/(healthz|readyz)$")  # no input; /readyz may 503 by design
HOSTILE_TEXT = ["\x00", "\ud800", "\udfff", "a\x00b", "\x1b[31m", "\u202e", "%00", "../" * 50]
REAL_IDS: list[str] = []  # jobs and uploads of tenant A, made by the `hostile_stack` fixture


# Generated bodies rarely get past the first validator (a random `model` is refused at once),
# so half the time the fields that gate the rest are made plausible first: hostile text then
# reaches the metadata, the database and the worker's inputs.
PLAUSIBLE = {
    "model": "builtin:smollm2-135m",
    "calibration": "builtin:stdlib-docs",
    "num_blocks": 1,
    "kind": "calibration",
}


def _plausible(value):
    if not isinstance(value, dict):
        return value
    fixed = {**value, **{k: v for k, v in PLAUSIBLE.items() if k in value}}
    if "model" in fixed:  # a job: free text left only where a tenant writes it
        for name in ("param_ratio", "webhook_url", "text_field", "block_types", "dtype"):
            fixed.pop(name, None)
        fixed.update(num_blocks=1, metadata={"team": "search"})
    if fixed.get("kind") == "calibration" and isinstance(fixed.get("files"), list):
        fixed["files"] = [announce("t.txt", b"abc")]
    return fixed


def _hostile_variants(value):
    """The body as generated or made plausible, then maybe with hostile text in one of its keys
    or string values (one, so the others still pass), or replaced by something deep or large."""
    deep: list = []
    for _ in range(900):  # as deep as the client's JSON encoder goes (the corpus goes deeper)
        deep = [deep]
    base = st.sampled_from([value, _plausible(value)])
    deep_body = {**_plausible(value), "metadata": {"d": deep}} if isinstance(value, dict) else deep
    plausible = _plausible(value)
    spot = st.tuples(st.just(plausible), st.sampled_from(HOSTILE_TEXT), st.integers(0, 40))
    targeted = spot.map(lambda t: _inject(*t))
    return st.one_of(
        base,
        targeted,
        targeted,  # weighted: most of the budget goes where hostile text reaches the database
        targeted,
        st.just(deep_body),
        st.just({"metadata": {str(i): "x" * 512 for i in range(2000)}}),
        st.just("x" * 3_000_000),
    )


def _inject(value, text: str, spot: int):
    """`value` with `text` added to its `spot`-th string, or a key below the top level (counted
    depth first, modulo): top-level keys are field names, refused as such before anything."""
    places: list[tuple[list, object]] = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                if path:
                    places.append((path + [("key", k)], k))
                walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, path + [i])
        elif isinstance(node, str):
            places.append((path, node))

    walk(value, [])
    if not places:
        return value
    path, _ = places[spot % len(places)]
    return _rebuild(value, path, text)


def _rebuild(node, path, text):
    if not path:
        return node + text
    step, rest = path[0], path[1:]
    if isinstance(step, tuple):  # ("key", k): rename the key
        return {(k + text if k == step[1] else k): v for k, v in node.items()}
    copy = dict(node) if isinstance(node, dict) else list(node)
    copy[step] = _rebuild(node[step], rest, text)
    return copy


@fuzzed.hook
def flatmap_body(ctx, body):  # noqa: ARG001 (schemathesis passes the hook context)
    return _hostile_variants(body)


@fuzzed.hook
def flatmap_path_parameters(ctx, path_parameters):  # noqa: ARG001
    """Often a real id (the code behind the 404 gets exercised too), or one with hostile text."""
    if not path_parameters or not REAL_IDS:
        return st.just(path_parameters)
    name = next(iter(path_parameters))
    real = st.sampled_from(REAL_IDS + [JOB]).map(lambda i: {**path_parameters, name: i})
    # A URL cannot carry a lone surrogate (the corpus sends its UTF-8 bytes instead).
    in_url = [t for t in HOSTILE_TEXT if not any("\ud800" <= c <= "\udfff" for c in t)]
    hostile = st.sampled_from(in_url).map(lambda t: {**path_parameters, name: JOB + t})
    return st.one_of(st.just(path_parameters), real, hostile)


@pytest.fixture(scope="module")
def hostile_stack(service, workers, key_a, s3_server):
    """The API on the real database and S3, no worker (nothing fuzzed runs), and some real ids."""
    from service import queue

    workers.stop()
    original, queue.send = queue.send, lambda *a, **k: None
    body = {"model": "builtin:smollm2-135m", "calibration": "builtin:stdlib-docs", "num_blocks": 1}
    for _ in range(3):
        REAL_IDS.append(service.post("/v1/jobs", json=body, headers=key_a).json()["id"])
    files = {"kind": "calibration", "files": [announce("t.txt", b"abc")]}
    REAL_IDS.append(service.post("/v1/uploads", json=files, headers=key_a).json()["id"])
    yield key_a
    queue.send = original


def check_response(response) -> None:
    from api.errors import ErrorBody

    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert response.headers["content-type"][0].startswith("application/json")
        ErrorBody.model_validate(json.loads(response.text))


FUZZ_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a bounded run, failures as found
    derandomize=True,  # CI runs the same cases each time; change the seed to explore
)


@fuzzed.parametrize()
@FUZZ_SETTINGS
def test_fuzz_every_operation(case, hostile_stack):
    check_response(case.call(headers=hostile_stack))


def test_fuzz_stateful_workflows(hostile_stack):
    """Sequences that follow the schema's links: create a job or upload, then read, cancel,
    complete and list it with the id that came back."""
    workflow = fuzzed.as_state_machine()

    class Workflow(workflow):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case):
            return {"headers": hostile_stack}

        def validate_response(self, response, case, **kwargs):
            check_response(response)

    settings(
        max_examples=15,
        stateful_step_count=6,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )(Workflow)
    Workflow.TestCase().runTest()
