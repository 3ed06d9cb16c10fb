"""The storage backends: one descriptor each, the one list URL parsing, the factory, the
settings' help and the contract suite iterate.

A backend is its module (``storage/<backend>.py``: a ``Storage`` implementation and a
``build(url, settings, retry_deadline_s)`` function) and one ``register(Backend(...))`` line
below. The descriptors live here rather than in the backend modules so that parsing a URL
never imports a cloud's client library: ``Backend.build`` imports the module only when a
repository of its kind is opened. docs/architecture.md has the recipe.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect_dr.storage.base import Storage
    from prefect_dr.storage.url import RepositoryURL


@dataclass(frozen=True)
class Backend:
    """What the package knows of one backend without importing it."""

    #: the URL scheme (``s3`` in ``s3://BUCKET/PREFIX``)
    scheme: str
    #: the module holding the backend and its ``build(url, settings, retry_deadline_s)``
    module: str
    #: how a repository URL of this backend is written, for help and error messages
    form: str
    #: the bucket/container name rule; None for a backend addressed by a path (``file://``)
    container: re.Pattern[str] | None = None
    #: what the container is called in messages ("bucket", "container")
    container_word: str = "bucket"
    #: query parameters naming the service (never the repository, never credentials):
    #: name -> "url" (an http(s) URL without credentials) or "text"
    params: Mapping[str, str] = field(default_factory=dict)
    #: the settings (config.SPECS names) its ``build`` reads
    settings: tuple[str, ...] = ()

    def build(self, url: RepositoryURL, settings: Any, retry_deadline_s: float) -> Storage:
        """The backend's Storage for repository ``url`` (imports its module now)."""
        built: Storage = importlib.import_module(self.module).build(url, settings,
                                                                    retry_deadline_s)
        return built


_BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add ``backend`` (replacing one of the same scheme); returns it."""
    _BACKENDS[backend.scheme] = backend
    return backend


def unregister(scheme: str) -> None:
    """Remove the backend of ``scheme`` (tests register toy backends and take them away)."""
    _BACKENDS.pop(scheme, None)


def backends() -> tuple[Backend, ...]:
    """Every registered backend, in registration order."""
    return tuple(_BACKENDS.values())


def get(scheme: str) -> Backend | None:
    """The backend of ``scheme``, or None."""
    return _BACKENDS.get(scheme)


def schemes() -> tuple[str, ...]:
    """The registered URL schemes."""
    return tuple(_BACKENDS)


def either(words: list[str]) -> str:
    """``a, b or c``: how a list of choices reads in a message."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


register(Backend("s3", "prefect_dr.storage.s3", "s3://BUCKET/PREFIX",
                 re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$"), "bucket",
                 {"endpoint": "url", "region": "text"},
                 ("s3_endpoint_url", "s3_region", "s3_storage_class", "s3_sse",
                  "s3_sse_kms_key_id", "s3_object_lock_mode", "s3_object_lock_days")))
register(Backend("file", "prefect_dr.storage.file", "file:///ABS/PATH"))
register(Backend("azure", "prefect_dr.storage.azure", "azure://CONTAINER/PREFIX",
                 re.compile(r"^(?!.*--)[a-z0-9][a-z0-9\-]{1,61}[a-z0-9]$"), "container",
                 {"account_url": "url"}, ("azure_account_url",)))
register(Backend("gs", "prefect_dr.storage.gcs", "gs://BUCKET/PREFIX",
                 re.compile(r"^[a-z0-9][a-z0-9._\-]{1,220}[a-z0-9]$"), "bucket"))
