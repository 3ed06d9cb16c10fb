"""Builds the configured Storage from Settings."""

from __future__ import annotations

from prefect_dr.config import Settings
from prefect_dr.storage.s3 import S3Options, S3Storage


def from_settings(settings: Settings, *, retry_deadline_s: float | None = None) -> S3Storage:
    """The S3 storage the settings describe. Raises ConfigError when no bucket is set.

    ``retry_deadline_s`` bounds how long transient errors are retried (short for probes).
    """
    settings.require("s3_bucket")
    options = S3Options(
        storage_class=settings.s3_storage_class or None, sse=settings.s3_sse or None,
        sse_kms_key_id=settings.s3_sse_kms_key_id or None,
        object_lock_mode=settings.s3_object_lock_mode or None,
        object_lock_days=settings.s3_object_lock_days or None)
    return S3Storage(settings.s3_bucket, endpoint_url=settings.s3_endpoint_url,
                     region=settings.s3_region, options=options,
                     retry_deadline_s=retry_deadline_s if retry_deadline_s is not None
                     else float(settings.s3_retry_deadline or 0))
