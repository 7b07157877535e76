"""Celery workers: one task per run, the task body shared with the embedded mode."""
