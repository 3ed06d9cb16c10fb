"""Keeps secrets out of every string the tool shows: messages, logs, JSON output.

Secret values are registered as they are loaded (passwords, keys, AWS secret keys); ``redact``
replaces each with ``***`` and also masks URL passwords and age secret keys by pattern, so a
secret that was never registered is still caught in the common shapes.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
_MIN_LEN = 4  # shorter values would mask innocent text everywhere

_lock = threading.Lock()
_secrets: set[str] = set()

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s/]+)@")
_AGE_SECRET = re.compile(r"AGE-SECRET-KEY-1[0-9A-Z]+")
_PG_PASSWORD_KV = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def register(value: str | None) -> None:
    """Remember ``value`` as a secret so that ``redact`` masks it from now on."""
    if value and len(value) >= _MIN_LEN:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """Return ``text`` with every registered secret and every secret-shaped token masked."""
    if not text:
        return text
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for value in known:
        if value in text:
            text = text.replace(value, MASK)
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _AGE_SECRET.sub("AGE-SECRET-KEY-" + MASK, text)
    return _PG_PASSWORD_KV.sub(lambda m: m.group(1) + MASK, text)


def url_without_password(url: str) -> str:
    """Return ``url`` with any password component replaced by ``***`` (for display)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{netloc}"))
