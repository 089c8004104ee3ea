"""The service's tests: real PostgreSQL, Redis, Celery worker processes and moto's S3 server.

Its fixtures (svc/fixtures.py) are registered by tests/conftest.py, so tests/security/ shares
the same stack (one database, one moto server, one worker pool per session).
"""
