"""The infrastructure around the store: the database engine (db), the broker (celery_app:
queue names, task names and the Celery app factory; queueing: which queue and sending there),
live events, Prometheus (observability) and the API process's reaper and reconciler
(lifecycle).
"""
