"""Object storage: one interface (``base.Storage``), the backends (S3, local files, Azure Blob,
Google Cloud Storage, and memory for tests) and their registry (``registry``)."""

from prefect_dr.storage.base import IncompleteUpload, ObjectInfo, Storage, Writer

__all__ = ["IncompleteUpload", "ObjectInfo", "Storage", "Writer"]
