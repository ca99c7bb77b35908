"""The worker's unit tests run jobs in this process (worker.jobs.run_job) against the API's
embedded database, with the service tests' fixtures: a migrated SQLite folder, a Celery app on
its own filesystem broker, and a client with a write token."""
from tests.service.conftest import (  # noqa: F401
    api_app,
    api_settings,
    celery_app,
    client,
    enqueued,
    make_token,
)
