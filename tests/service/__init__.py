"""The service's tests: real PostgreSQL, Redis, Celery worker processes and moto's S3 server.

A package (this file), so that its conftest does not shadow tests/conftest.py as `conftest`.
"""
