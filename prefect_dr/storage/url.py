"""Repository URLs: which backend holds a repository, and where inside it.

``s3://BUCKET/PREFIX``, ``file:///ABS/PATH``, ``azure://CONTAINER/PREFIX`` and
``gs://BUCKET/PREFIX``: the backends ``storage.registry`` holds. Object stores take optional
query parameters that name the service rather than the repository (``s3://b/p?endpoint=http://127.0.0.1:8333&region=eu-west-1``,
``azure://c/p?account_url=https://acct.blob.core.windows.net``); credentials never go in a URL
(they come from each backend's usual environment), so a URL is safe to log and to show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from prefect_dr.storage import registry


class RepositoryURLError(ValueError):
    """A repository URL that cannot be used; the message says what to write instead."""


@dataclass(frozen=True)
class RepositoryURL:
    """A parsed repository URL.

    ``container`` is the bucket (s3, gs) or container (azure), ``""`` for file; ``prefix`` is
    the key prefix objects live under (without slashes at either end); for ``file`` the
    repository is the directory ``path`` and the prefix is empty.
    """

    scheme: str
    container: str = ""
    prefix: str = ""
    path: str = ""
    params: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        if self.path:  # a backend addressed by a path (file://)
            return f"{self.scheme}://" + quote(self.path)
        text = f"{self.scheme}://{self.container}"
        if self.prefix:
            text += "/" + quote(self.prefix)
        if self.params:
            text += "?" + urlencode(sorted(self.params.items()))
        return text

    @property
    def backend(self) -> str:
        """A short name of the backend: s3, file, azure or gs."""
        return self.scheme


def credentials_in(url: str) -> bool:
    """Whether an endpoint or account URL carries credentials: a user or password, or a query
    string (an Azure SAS token is one)."""
    parts = urlsplit(url)
    return bool(parts.username or parts.password or "@" in parts.netloc or parts.query)


def parse(text: str) -> RepositoryURL:
    """Parse a repository URL. Raises RepositoryURLError with a one-line explanation."""
    text = (text or "").strip()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    backend = registry.get(scheme)
    if backend is None:
        raise RepositoryURLError(f"repository URL {text!r} must start with "
                                 + registry.either([f"{s}://" for s in registry.schemes()]))
    if parts.username or parts.password or "@" in parts.netloc:
        raise RepositoryURLError(
            f"repository URL {scheme}://... must not carry credentials; use the backend's "
            "credential variables (see docs/backends.md)")
    if parts.fragment:
        raise RepositoryURLError(f"repository URL {text!r} must not have a #fragment")
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(params) - set(backend.params))
    if unknown:
        allowed = ", ".join(backend.params) or "none"
        raise RepositoryURLError(f"repository URL {scheme}://...: unknown parameter "
                                 f"{', '.join(unknown)} (allowed: {allowed})")
    if backend.container is None:
        if parts.netloc not in ("", "localhost"):
            raise RepositoryURLError(
                f"repository URL {text!r}: write {scheme}:///ABSOLUTE/PATH (three slashes)")
        path = parts.path.rstrip("/") or "/"
        if not path.startswith("/") or "/../" in path + "/" or "/./" in path + "/":
            raise RepositoryURLError(
                f"repository URL {text!r}: the path must be absolute, without . or ..")
        return RepositoryURL(scheme, path=path)
    container = parts.netloc
    if not backend.container.match(container):
        what = backend.container_word
        raise RepositoryURLError(f"repository URL {scheme}://{container}: {container!r} is not "
                                 f"a valid {what} name")
    prefix = parts.path.strip("/")
    if "//" in prefix or any(p in (".", "..") for p in prefix.split("/") if prefix):
        raise RepositoryURLError(f"repository URL {text!r}: the prefix must not contain '//', "
                                 "'.' or '..' segments")
    for name in (n for n, kind in backend.params.items() if kind == "url"):
        value = params.get(name)
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise RepositoryURLError(f"repository URL parameter {name} must be an http(s) URL")
        if value is not None and credentials_in(value):
            raise RepositoryURLError(f"repository URL parameter {name} must not carry "
                                     "credentials (a user, password or SAS token); use the "
                                     "backend's credential variables (see docs/backends.md)")
    return RepositoryURL(scheme, container=container, prefix=prefix, params=params)


def from_s3_settings(bucket: str, prefix: str) -> RepositoryURL:
    """The ``s3://`` repository the PREFECT_DR_S3_BUCKET/PREFIX settings describe."""
    return RepositoryURL("s3", container=bucket, prefix=(prefix or "").strip("/"))
