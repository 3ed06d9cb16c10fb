"""Object storage: one interface (``base.Storage``), S3 and in-memory implementations."""

from prefect_dr.storage.base import IncompleteUpload, ObjectInfo, Storage, Writer

__all__ = ["IncompleteUpload", "ObjectInfo", "Storage", "Writer"]
