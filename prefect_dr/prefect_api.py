"""Minimal client for the Prefect server's REST API (stdlib HTTP; no Prefect import needed).

Authentication: when ``PREFECT_API_AUTH_STRING`` (``user:password``, what a self-hosted server
started with ``PREFECT_SERVER_API_AUTH_STRING`` expects) is set, every request carries it as
HTTP basic auth. The string is registered with :mod:`prefect_dr.redact` and never appears in an
error.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from typing import Any

from prefect_dr import redact
from prefect_dr.errors import DRError

TIMEOUT_S = 15
AUTH_ENV = "PREFECT_API_AUTH_STRING"
PAGE = 200
_DETAIL_MAX = 200


class PrefectAPIError(DRError):
    """The Prefect API was unreachable or answered with an error.

    ``status`` is the HTTP status code, or None when the server could not be reached.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _auth_header(auth: str | None) -> dict[str, str]:
    value = auth if auth is not None else os.environ.get(AUTH_ENV)
    if not value:
        return {}
    redact.register(value)
    token = base64.b64encode(value.encode()).decode()
    redact.register(token)
    return {"Authorization": f"Basic {token}"}


def error_detail(raw: bytes) -> str:
    """A short, one-line, secret-free summary of an error response body.

    FastAPI validation errors (a list) contribute only each error's location and message,
    never the ``input`` that was sent (it may hold block data); other details are truncated.
    """
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return ""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        parts = []
        for err in detail[:3]:
            if isinstance(err, dict):
                loc = ".".join(str(x) for x in err.get("loc", [])[1:]) or "body"
                parts.append(f"{loc}: {err.get('msg', '')}")
        text = "; ".join(parts) + (f" (+{len(detail) - 3} more)" if len(detail) > 3 else "")
    elif detail is not None:
        text = str(detail)
    else:
        return ""
    text = redact.redact(" ".join(text.split()))
    return text if len(text) <= _DETAIL_MAX else text[:_DETAIL_MAX - 3] + "..."


def request(api_url: str, method: str, path: str, body: Any = None,
            timeout: float = TIMEOUT_S, *, auth: str | None = None) -> Any:
    """Send one JSON request to ``api_url + path``; return the decoded JSON answer.

    ``auth`` (``user:password``) overrides ``PREFECT_API_AUTH_STRING`` for basic auth.
    Raises PrefectAPIError with a one-line reason (and the HTTP status in ``status``).
    """
    url = api_url.rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", "Accept": "application/json",
               **_auth_header(auth)}
    req = urllib.request.Request(url, data=data, method=method,  # noqa: S310 - http(s) only
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        try:
            detail = error_detail(exc.read())
        except OSError:
            detail = ""
        suffix = f": {detail}" if detail else ""
        raise PrefectAPIError(f"Prefect API {method} {path}: HTTP {exc.code}{suffix}",
                              status=exc.code) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PrefectAPIError(
            f"cannot reach the Prefect API at {redact.url_without_password(api_url)}: {reason}"
        ) from None
    return json.loads(raw) if raw else None


def paged(api_url: str, path: str, body: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every object a ``POST .../filter`` endpoint returns, read in pages of 200.

    Raises PrefectAPIError.
    """
    out: list[dict[str, Any]] = []
    while True:
        page = request(api_url, "POST", path, {**(body or {}), "limit": PAGE,
                                               "offset": len(out)})
        if not isinstance(page, list):
            raise PrefectAPIError(f"Prefect API POST {path}: expected a list")
        out += page
        if len(page) < PAGE:
            return out


def server_version(api_url: str) -> str:
    """The Prefect server's version (GET /admin/version). Raises PrefectAPIError."""
    return str(request(api_url, "GET", "/admin/version"))
