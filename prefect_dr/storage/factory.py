"""Builds the configured Storage from Settings."""

from __future__ import annotations

from prefect_dr.config import Settings
from prefect_dr.storage.s3 import S3Options, S3Storage


def from_settings(settings: Settings, *, retry_deadline_s: float | None = None,
                  read_only: bool = False) -> S3Storage:
    """The S3 storage the settings describe. Raises ConfigError when no bucket is set.

    ``retry_deadline_s`` bounds how long transient errors are retried (short for probes);
    without it, ``read_only`` storage (for commands that only look: list, show, status) gets
    the short read deadline (PREFECT_DR_S3_READ_DEADLINE), other storage the long one
    (PREFECT_DR_S3_RETRY_DEADLINE), which a backup needs to ride out a hiccup.
    """
    if retry_deadline_s is None:
        retry_deadline_s = float((settings.s3_read_deadline if read_only
                                  else settings.s3_retry_deadline) or 0)
    settings.require("s3_bucket")
    options = S3Options(
        storage_class=settings.s3_storage_class or None, sse=settings.s3_sse or None,
        sse_kms_key_id=settings.s3_sse_kms_key_id or None,
        object_lock_mode=settings.s3_object_lock_mode or None,
        object_lock_days=settings.s3_object_lock_days or None)
    return S3Storage(settings.s3_bucket, endpoint_url=settings.s3_endpoint_url,
                     region=settings.s3_region, options=options,
                     retry_deadline_s=retry_deadline_s)
