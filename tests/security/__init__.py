"""Security tests: each attack that broke the service once, against the real stack (PostgreSQL,
Redis, a Celery worker, moto's S3 server), with two tenants. Fixtures: tests/svc/fixtures.py."""
