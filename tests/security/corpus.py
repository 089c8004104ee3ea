"""Hostile inputs, by hand: each was a 500 once, or is the kind of input that makes one. Shared
by the corpus test and the fuzzer's explicit examples."""

from __future__ import annotations

GOOD = '{"model":"builtin:smollm2-135m","calibration":"builtin:stdlib-docs","num_blocks":1'
JOB = "00000000-0000-4000-8000-000000000000"

# (method, path, raw JSON body or None): every answer must be a 4xx in the error shape.
REQUESTS: list[tuple[str, str, bytes | None]] = [
    ("GET", "/v1/jobs/%00", None),
    ("GET", "/v1/jobs/abc%00def", None),
    ("GET", "/v1/jobs/%ED%A0%80", None),  # a lone surrogate, UTF-8 encoded (invalid)
    ("GET", "/v1/jobs/not-a-uuid", None),
    ("POST", f"/v1/jobs/{JOB}%00/cancel", None),
    ("GET", "/v1/jobs?after=%00", None),
    ("GET", "/v1/jobs?after=x%00y", None),
    ("GET", "/v1/jobs?limit=-1", None),
    ("GET", "/v1/jobs?limit=99999999999999999999999", None),
    ("GET", "/v1/jobs?status=%00", None),
    ("GET", "/v1/uploads/%00", None),
    ("DELETE", "/v1/jobs", None),  # 405
    ("GET", "/v1/nothing-here", None),  # 404
    ("POST", "/v1/jobs", GOOD.encode() + b',"metadata":{"k":"\\u0000"}}'),
    ("POST", "/v1/jobs", GOOD.encode() + b',"metadata":{"\\u0000":"v"}}'),
    ("POST", "/v1/jobs", GOOD.encode() + b',"metadata":{"k":"\\ud800"}}'),
    ("POST", "/v1/jobs", GOOD.encode() + b',"metadata":{"\\udfff":"v"}}'),
    ("POST", "/v1/jobs", GOOD.encode() + b',"text_field":"a\\u0000b"}'),
    ("POST", "/v1/jobs", GOOD.encode() + b',"text_field":"\\ud800"}'),
    (
        "POST",
        "/v1/jobs",
        b'{"model":"builtin:smollm2-135m\\u0000","calibration":"x","num_blocks":1}',
    ),
    ("POST", "/v1/jobs", b'{"model":"\\ud800","calibration":"builtin:stdlib-docs","num_blocks":1}'),
    ("POST", "/v1/jobs", b'{"model":"s3://b/\\u0000/","calibration":"x","num_blocks":1}'),
    ("POST", "/v1/jobs", GOOD.encode() + b',"webhook_url":"http://a\\u0000b.example/"}'),
    ("POST", "/v1/jobs", GOOD.encode() + b',"webhook_url":"http://\\ud800.example/"}'),
    ("POST", "/v1/jobs", GOOD.encode() + b',"num_blocks":1e400}'),
    ("POST", "/v1/jobs", GOOD.encode() + b',"seed":123456789012345678901234567890}'),
    ("POST", "/v1/jobs", b"[" * 5000 + b"]" * 5000),  # deeply nested
    ("POST", "/v1/jobs", b'{"model":' + b'"' + b"a" * 2_000_000 + b'"}'),  # huge string
    ("POST", "/v1/jobs", b"\xff\xfe{not json"),
    ("POST", "/v1/jobs", b""),
    ("POST", "/v1/jobs", b"null"),
    ("POST", "/v1/uploads", b'{"kind":"model","files":[{"name":"a\\u0000.json","size":1}]}'),
    ("POST", "/v1/uploads", b'{"kind":"model","files":[{"name":"\\ud800","size":1}]}'),
    ("POST", "/v1/uploads", b'{"kind":"model","files":[{"name":"config.json","size":-1}]}'),
    ("POST", f"/v1/uploads/{JOB}/complete", b'{"parts":{"\\u0000":[]}}'),
]
