"""Which job store a gateway runs on (GATEWAY_JOBS_URL): the contract
(jobstore.py) knows neither of its two implementations; this chooses."""

from __future__ import annotations

from gateway.jobstore import JobStore
from gateway.settings import GatewaySettings


def open_job_store(settings: GatewaySettings) -> JobStore:
    """Empty GATEWAY_JOBS_URL: files under GATEWAY_DATA_DIR; nats://...: NATS."""
    if not settings.jobs_url:
        from gateway.localjobs import LocalJobStore

        return LocalJobStore(settings.jobs_dir, settings.max_errors_kept)
    from gateway.natsjobs import NatsJobStore

    return NatsJobStore.open(settings)
