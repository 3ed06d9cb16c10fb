"""Minimal client for the Prefect server's REST API (stdlib HTTP; no Prefect import needed)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from prefect_dr import redact
from prefect_dr.errors import DRError

TIMEOUT_S = 15


class PrefectAPIError(DRError):
    """The Prefect API was unreachable or answered with an error."""


def request(api_url: str, method: str, path: str, body: Any = None,
            timeout: float = TIMEOUT_S) -> Any:
    """Send one JSON request to ``api_url + path``; return the decoded JSON answer.

    Raises PrefectAPIError with a one-line reason.
    """
    url = api_url.rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,  # noqa: S310 - http(s) only
                                 headers={"Content-Type": "application/json",
                                          "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raise PrefectAPIError(f"Prefect API {method} {path}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PrefectAPIError(
            f"cannot reach the Prefect API at {redact.url_without_password(api_url)}: {reason}"
        ) from None
    return json.loads(raw) if raw else None


def server_version(api_url: str) -> str:
    """The Prefect server's version (GET /admin/version). Raises PrefectAPIError."""
    return str(request(api_url, "GET", "/admin/version"))
