"""The worker process: the Celery task, the runner (the only place where the engine meets the
service), leases, the reaper, S3 downloads and uploads, and the webhook sender.

Shared pieces (settings, database, tables, job store, transitions, queue) live in service/.
"""
