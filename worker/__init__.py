"""The pruning service's worker side: database layer, S3 storage, Celery tasks and the reaper.

The API imports the light modules here (settings, db, models, jobstore, keys, storage, and the
Celery app to enqueue); only `worker.runner` imports the engine (torch), and only inside a task.
"""
