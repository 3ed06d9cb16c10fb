"""The Prefect database as Prefect's own settings name it: the fallback of
PREFECT_DR_DATABASE_URL, so a pod that runs next to a Prefect server needs no second URL.

Prefect 3.x (``prefect/settings/models/server/database.py``, ``models/_defaults.py`` and
``models/root.py``) reads each value under a ``PREFECT_SERVER_DATABASE_*`` name, which wins over
its older ``PREFECT_API_DATABASE_*`` alias:

- ``CONNECTION_URL``: a SQLAlchemy URL, e.g. ``postgresql+asyncpg://user:pw@host:5432/db``,
  in which ``${PREFECT_SERVER_DATABASE_PASSWORD}`` (or the API alias) stands for ``PASSWORD``;
- else, only when ``DRIVER`` is ``postgresql+asyncpg``: ``HOST``, ``PORT`` (default 5432),
  ``USER``, ``NAME`` (host, user and name required) and ``PASSWORD``;
- else SQLite, which prefect-dr does not back up.

The URL is parsed by SQLAlchemy (as Prefect parses it) and turned into a libpq URL for psycopg
and pg_dump. The password is Prefect's own secret: it stays in the returned URL (percent-encoded)
for psycopg, the pg module hands it to pg_dump/pg_restore through PGPASSWORD, and the caller
registers it with ``redact``. No message here ever shows a value, only variable names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode

DRIVER = "postgresql+asyncpg"
_SERVER, _API = "PREFECT_SERVER_DATABASE_", "PREFECT_API_DATABASE_"
_TLS = "PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_TLS_"
_PASSWORD_REFS = ("${PREFECT_SERVER_DATABASE_PASSWORD}", "${PREFECT_API_DATABASE_PASSWORD}")
_SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
_SSL_BOOL = {"true": "require", "1": "require", "yes": "require", "on": "require",
             "false": "disable", "0": "disable", "no": "disable", "off": "disable"}
# libpq URI parameters passed on as they are (sslpassword is left out: a secret in argv).
_LIBPQ_PARAMS = frozenset({
    "sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "sslcrldir", "sslnegotiation",
    "sslcompression", "sslsni", "channel_binding", "connect_timeout", "application_name",
    "options", "target_session_attrs", "gssencmode", "krbsrvname", "gsslib", "passfile",
    "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
    "tcp_user_timeout", "require_auth", "load_balance_hosts",
})
_TRUE = frozenset({"1", "true", "yes", "on", "t", "y"})


@dataclass(frozen=True)
class Found:
    """What Prefect's settings say about the database."""

    url: str | None  # libpq URL (password percent-encoded in it), None when unusable
    source: str  # where it came from, e.g. "env PREFECT_API_DATABASE_CONNECTION_URL"
    password: str | None = None  # the plain password, to register as a secret
    warnings: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


def _get(env: Mapping[str, str], field: str) -> tuple[str, str] | None:
    """(variable name, value) of a Prefect database setting; SERVER wins over API."""
    for name in (_SERVER + field, _API + field):
        value = env.get(name)
        if value is not None and value.strip() != "":
            return name, value.strip()
    return None


def from_env(env: Mapping[str, str]) -> Found | None:
    """The database Prefect's settings in ``env`` point at; None when they name none."""
    conn = _get(env, "CONNECTION_URL")
    if conn is not None:
        return _from_connection_url(env, *conn)
    return _from_components(env)


def _from_connection_url(env: Mapping[str, str], name: str, text: str) -> Found:
    source = f"env {name}"
    if any(ref[2:-1] in text for ref in _PASSWORD_REFS):
        pw = _get(env, "PASSWORD")
        if pw is None:
            return Found(None, source, problems=(
                f"{name} refers to ${{PREFECT_SERVER_DATABASE_PASSWORD}}, which is not set",))
        for ref in _PASSWORD_REFS:  # as Prefect does: the plain value, not URL-encoded
            text = text.replace(ref, pw[1])
        source += f" (password from {pw[0]})"
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(text)
        url.port  # noqa: B018 - make_url checks the port lazily in some versions
    except (ArgumentError, ValueError):
        return Found(None, source, problems=(
            f"{name} is not a valid SQLAlchemy database URL (check the scheme and the port)",))
    backend = url.get_backend_name()
    if backend == "sqlite":
        return Found(None, source, warnings=(
            f"{name} names a SQLite database; prefect-dr backs up PostgreSQL only (ignored; "
            "set PREFECT_DR_DATABASE_URL)",))
    if backend not in ("postgresql", "postgres"):
        return Found(None, source, problems=(
            f"{name} is not a PostgreSQL URL (expected postgresql+asyncpg://...)",))
    query: dict[str, str] = {}
    warnings: list[str] = []
    problems: list[str] = []
    for key, value in url.query.items():
        if not isinstance(value, str):
            problems.append(f"{name}: query parameter {key!r} is given more than once "
                            "(several hosts are not supported; set PREFECT_DR_DATABASE_URL)")
            continue
        _map_param(name, key, value, query, warnings)
    _tls(env, query, warnings)
    return Found(_libpq(url.username, url.password, url.host, url.port, url.database, query),
                 source, password=url.password or None, warnings=tuple(warnings),
                 problems=tuple(problems))


def _map_param(name: str, key: str, value: str, query: dict[str, str],
               warnings: list[str]) -> None:
    """Put the libpq equivalent of one asyncpg/SQLAlchemy query parameter into ``query``."""
    if key == "ssl":  # asyncpg: ssl=require (a libpq mode) or ssl=true/false
        mode = _SSL_BOOL.get(value.lower(), value.lower())
        if mode in _SSL_MODES:
            query.setdefault("sslmode", mode)
        else:
            warnings.append(f"{name}: ssl={value!r} has no libpq sslmode; ignored")
    elif key == "timeout":  # asyncpg's connect timeout, in seconds
        try:
            query["connect_timeout"] = str(max(1, round(float(value))))
        except ValueError:
            warnings.append(f"{name}: timeout={value!r} is not a number; ignored")
    elif key in _LIBPQ_PARAMS:
        query[key] = value
    else:
        warnings.append(f"{name}: query parameter {key!r} has no libpq equivalent; ignored")


def _tls(env: Mapping[str, str], query: dict[str, str], warnings: list[str]) -> None:
    """Prefect's TLS settings (PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_TLS_*) as libpq
    parameters, unless the URL chose an sslmode itself."""
    if (env.get(_TLS + "ENABLED") or "").strip().lower() not in _TRUE or "sslmode" in query:
        return
    check_host = (env.get(_TLS + "CHECK_HOSTNAME") or "true").strip().lower() in _TRUE
    ca = (env.get(_TLS + "CA_FILE") or "").strip()
    if ca:
        query["sslmode"] = "verify-full" if check_host else "verify-ca"
        query["sslrootcert"] = ca
    else:
        query["sslmode"] = "require"
        warnings.append(f"{_TLS}ENABLED without {_TLS}CA_FILE: the database connection is "
                        "encrypted but its certificate is not verified")
    for field, param in (("CERT_FILE", "sslcert"), ("KEY_FILE", "sslkey")):
        value = (env.get(_TLS + field) or "").strip()
        if value:
            query[param] = value


def _from_components(env: Mapping[str, str]) -> Found | None:
    parts = {f: _get(env, f) for f in ("DRIVER", "HOST", "PORT", "USER", "NAME", "PASSWORD")}
    given = [p[0] for p in parts.values() if p is not None]
    if not given:
        return None
    driver = parts["DRIVER"]
    if driver is None or driver[1] != DRIVER:
        if any(parts[f] is not None for f in ("HOST", "USER", "NAME")):
            why = "is not set" if driver is None else f"is not {DRIVER}"
            return Found(None, "", warnings=(
                f"{_SERVER}HOST/USER/NAME are ignored: {_SERVER}DRIVER {why}, so Prefect itself "
                "uses SQLite",))
        return None
    source = "env " + ", ".join(given)
    missing = [f"{_SERVER}{f}" for f in ("HOST", "USER", "NAME") if parts[f] is None]
    if missing:
        return Found(None, source, problems=(
            f"{_SERVER}DRIVER is {DRIVER} but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set",))
    port = 5432
    if parts["PORT"] is not None:
        try:
            port = int(parts["PORT"][1])
        except ValueError:
            return Found(None, source, problems=(f"{parts['PORT'][0]} is not a port number",))
    password = parts["PASSWORD"][1] if parts["PASSWORD"] else None
    query: dict[str, str] = {}
    warnings: list[str] = []
    _tls(env, query, warnings)
    return Found(_libpq(parts["USER"][1], password, parts["HOST"][1],  # type: ignore[index]
                        port, parts["NAME"][1], query),  # type: ignore[index]
                 source, password=password, warnings=tuple(warnings))


def _libpq(user: str | None, password: str | None, host: str | None, port: int | None,
           database: str | None, query: Mapping[str, str]) -> str:
    """A libpq URI; every part percent-encoded (the password too: psycopg decodes it, and the
    pg module moves it into PGPASSWORD before a client program starts)."""
    auth = ""
    if user:
        auth = quote(user, safe="")
        if password:
            auth += ":" + quote(password, safe="")
        auth += "@"
    where = host or ""
    if ":" in where:  # an IPv6 address
        where = f"[{where}]"
    if port:
        where += f":{port}"
    tail = f"?{urlencode(query)}" if query else ""
    return f"postgresql://{auth}{where}/{quote(database or '', safe='')}{tail}"
