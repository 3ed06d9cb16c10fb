"""The one place a repository URL becomes a Storage backend.

The scheme picks the backend in ``storage.registry`` (``s3://`` -> ``s3.S3Storage``,
``file://`` -> ``file.FileStorage``, ``azure://`` -> ``azure.AzureStorage``, ``gs://`` ->
``gcs.GCSStorage``), whose module's ``build`` makes it. Each backend's library is imported only
when a repository of its kind is opened, so a command never pays for the clouds it does not use.
"""

from __future__ import annotations

from prefect_dr.config import Settings
from prefect_dr.errors import ConfigError
from prefect_dr.storage import registry
from prefect_dr.storage import url as repo_url
from prefect_dr.storage.base import Storage


def deadline(settings: Settings, *, read_only: bool) -> float:
    """How long transient errors are retried: the short read deadline
    (PREFECT_DR_S3_READ_DEADLINE) for commands that only look, else the long one
    (PREFECT_DR_S3_RETRY_DEADLINE), which a backup needs to ride out a hiccup. Both apply to
    every backend."""
    return float((settings.s3_read_deadline if read_only else settings.s3_retry_deadline) or 0)


def parse(text: str) -> repo_url.RepositoryURL:
    """A repository URL given on the command line; ConfigError (exit 2) when malformed."""
    try:
        return repo_url.parse(text)
    except repo_url.RepositoryURLError as exc:
        raise ConfigError([str(exc)]) from None


def from_settings(settings: Settings, *, retry_deadline_s: float | None = None,
                  read_only: bool = False) -> Storage:
    """The storage of the configured repository (PREFECT_DR_REPOSITORY, else the S3
    settings). Raises ConfigError when no repository is set.

    ``retry_deadline_s`` bounds how long transient errors are retried (short for probes);
    without it, see ``deadline``.
    """
    settings.require("repository")
    return open_url(settings.repository_url, settings, retry_deadline_s=retry_deadline_s,
                    read_only=read_only)


def open_url(url: repo_url.RepositoryURL | str, settings: Settings, *,
             retry_deadline_s: float | None = None, read_only: bool = False) -> Storage:
    """The storage of repository ``url``; credentials come from each backend's usual
    environment (see docs/backends.md). Raises ConfigError for a malformed URL."""
    if isinstance(url, str):
        url = parse(url)
    if retry_deadline_s is None:
        retry_deadline_s = deadline(settings, read_only=read_only)
    try:
        storage = _backend(url).build(url, settings, retry_deadline_s)
    except ValueError as exc:  # a client library refusing a setting (e.g. a region's format)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError([f"{url.scheme}:// repository: {first[:300]}"]) from None
    storage.url = str(url)
    return storage


def _backend(url: repo_url.RepositoryURL) -> registry.Backend:
    backend = registry.get(url.scheme)
    if backend is None:  # a URL object made by hand for a backend since unregistered
        raise ConfigError([f"{url.scheme}:// repository: no such backend"])
    return backend
