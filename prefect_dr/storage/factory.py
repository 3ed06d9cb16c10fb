"""Builds the configured Storage from Settings."""

from __future__ import annotations

from prefect_dr.config import Settings
from prefect_dr.storage.s3 import S3Storage


def from_settings(settings: Settings) -> S3Storage:
    """The S3 storage the settings describe. Raises ConfigError when no bucket is set."""
    settings.require("s3_bucket")
    return S3Storage(settings.s3_bucket, endpoint_url=settings.s3_endpoint_url,
                     region=settings.s3_region)
