"""Where Prefect keeps runtime state outside its database, read from Prefect's own settings,
and the Redis keys a restore makes stale (docs/operations.md, "What a restore resets, and why").

With the defaults everything lives in the server's memory and a restart resets it. With
``prefect_redis`` (several API servers, HA) it lives in Redis and survives the restart, naming a
world the restore replaced:

- ``PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect_redis.lease_storage``: concurrency leases,
  keys ``prefect:concurrency:*`` (lease, expiration, expirations, limit holders);
- ``PREFECT_MESSAGING_BROKER`` / ``PREFECT_MESSAGING_CACHE`` = ``prefect_redis.messaging``:
  message streams and their dead letters (``message:*``, ``dlq:*``);
- ``PREFECT_SERVER_EVENTS_CAUSAL_ORDERING=prefect_redis.ordering``: the triggers' causal
  ordering (``triggers:*``);
- ``PREFECT_SERVER_DOCKET_URL=redis://...``: the docket of scheduled service tasks
  (``<PREFECT_SERVER_DOCKET_NAME>:*``, default ``prefect-server:*``).

The settings are read the way the server reads them (environment, profile, ``prefect.toml``,
``.env``) by Prefect's own loader, in a child Python with Prefect; when nothing in those sources
mentions Redis the defaults are known without starting it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from prefect_dr.errors import DRError, SetupError, UsageError

MEMORY_LEASES = "prefect.server.concurrency.lease_storage.memory"
MEMORY_MESSAGING = "prefect.server.utilities.messaging.memory"
MEMORY_ORDERING = "prefect.server.events.ordering.memory"
MEMORY_DOCKET = "memory://"
DOCKET_NAME = "prefect-server"

_PROBE = r"""
import json
from urllib.parse import urlsplit
from prefect.settings import get_current_settings

def bare(url):
    if not url:
        return url
    p = urlsplit(url)
    host = p.hostname or ""
    return p._replace(netloc=host + (f":{p.port}" if p.port else "")).geturl()

s = get_current_settings()
events = s.server.events
out = {
    "lease_storage": s.server.concurrency.lease_storage,
    "messaging_broker": events.messaging_broker,
    "messaging_cache": events.messaging_cache,
    "causal_ordering": getattr(events, "causal_ordering", None),
    "docket_url": bare(getattr(getattr(s.server, "docket", None), "url", None)),
    "docket_name": getattr(getattr(s.server, "docket", None), "name", None),
    "redis_url": None,
}
try:
    from prefect_redis.client import RedisMessagingSettings
    r = RedisMessagingSettings()
    out["redis_url"] = bare(r.url) if r.url else f"redis://{r.host}:{r.port}/{r.db}"
except Exception:
    pass
print(json.dumps(out))
"""


@dataclass(frozen=True)
class KeyFamily:
    """Prefect's keys of one kind in Redis."""

    name: str
    setting: str
    patterns: tuple[str, ...]


@dataclass(frozen=True)
class RuntimeSettings:
    """The settings that decide where Prefect's runtime state lives (no credentials)."""

    lease_storage: str = MEMORY_LEASES
    messaging_broker: str = MEMORY_MESSAGING
    messaging_cache: str = MEMORY_MESSAGING
    causal_ordering: str = MEMORY_ORDERING
    docket_url: str = MEMORY_DOCKET
    docket_name: str = DOCKET_NAME
    #: the Redis prefect_redis connects to (host:port/db, no password), when it is installed
    redis_url: str | None = None
    source: str = "Prefect's defaults"

    def in_redis(self) -> list[KeyFamily]:
        """The key families these settings keep in Redis."""
        uses = {
            "lease storage": "prefect_redis" in self.lease_storage,
            "messaging": "prefect_redis" in (self.messaging_broker + self.messaging_cache),
            "causal ordering": "prefect_redis" in self.causal_ordering,
            "docket": self.docket_url.split("://")[0].startswith("redis"),
        }
        return [f for f in all_families(self.docket_name) if uses[f.name]]


def all_families(docket_name: str = DOCKET_NAME) -> list[KeyFamily]:
    """Every family of keys Prefect keeps in Redis (plain and Redis Cluster hash-tagged)."""
    return [
        KeyFamily("lease storage", "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE",
                  ("prefect:concurrency:*", "{prefect:concurrency}:*")),
        KeyFamily("messaging", "PREFECT_MESSAGING_BROKER / PREFECT_MESSAGING_CACHE",
                  ("message:*", "{message:*", "dlq:*")),
        KeyFamily("causal ordering", "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING",
                  ("triggers:*", "{triggers}:*")),
        KeyFamily("docket", "PREFECT_SERVER_DOCKET_URL",
                  (f"{docket_name}:*", f"{{{docket_name}}}:*")),
    ]


def _mentions_redis(env: Mapping[str, str]) -> bool:
    """Whether any source of Prefect's settings mentions Redis (else the defaults hold)."""
    if any("redis" in f"{k}={v}".lower() for k, v in env.items()
           if k.startswith("PREFECT_") and not k.startswith("PREFECT_DR_")
           and not k.endswith(("_HOME", "_PATH"))):  # a folder's name is not a setting
        return True
    home = Path(env.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    files = [Path(env.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser(),
             Path(".env"), Path("prefect.toml")]
    for path in files:
        try:
            if "redis" in path.read_text(errors="replace").lower():
                return True
        except OSError:
            continue
    try:  # only its [tool.prefect] table is Prefect's
        with Path("pyproject.toml").open("rb") as f:
            tool = tomllib.load(f).get("tool", {}).get("prefect", {})
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return "redis" in str(tool).lower()


def read(env: Mapping[str, str], python: str | None = None) -> RuntimeSettings:
    """Prefect's runtime-state settings as the server with ``env`` reads them. Raises
    SetupError when they mention Redis but no Python with Prefect can read them."""
    if not _mentions_redis(env):
        return RuntimeSettings(source="Prefect's defaults: no Prefect setting mentions Redis")
    interpreter = python or sys.executable
    if python is None and importlib.util.find_spec("prefect") is None:
        raise SetupError("Prefect's settings mention Redis, but reading them needs Prefect "
                         "installed beside prefect-dr")
    try:
        proc = subprocess.run([interpreter, "-c", _PROBE], env=dict(env), capture_output=True,
                              text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"could not read Prefect's settings: {exc}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SetupError(f"could not read Prefect's settings: {last}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return RuntimeSettings(
        lease_storage=data["lease_storage"] or MEMORY_LEASES,
        messaging_broker=data["messaging_broker"] or MEMORY_MESSAGING,
        messaging_cache=data["messaging_cache"] or MEMORY_MESSAGING,
        causal_ordering=data["causal_ordering"] or MEMORY_ORDERING,
        docket_url=data["docket_url"] or MEMORY_DOCKET,
        docket_name=data["docket_name"] or DOCKET_NAME,
        redis_url=data["redis_url"], source="Prefect's settings")


def notes(runtime: RuntimeSettings, flush_url: str | None) -> list[str]:
    """What must happen to Prefect's state in Redis after the restore, one line each."""
    families = runtime.in_redis()
    if not families:
        return [f"Redis: not used ({runtime.source}): restarting every server resets leases, "
                "messaging and the docket"]
    keys = "; ".join(f"{f.name} ({f.setting}): {', '.join(f.patterns)}" for f in families)
    where = runtime.redis_url or "the Redis prefect_redis uses"
    if flush_url:
        return [f"Redis: the restore deletes Prefect's stale keys at {describe(flush_url)} "
                f"after the swap — {keys}"]
    return [f"Redis ({runtime.source}): these keys at {where} name the world the restore "
            f"replaced and must be deleted before Prefect starts — {keys}; '--flush-redis "
            "URL' does it"]


def describe(url: str) -> str:
    """host:port/db of a Redis URL, without credentials."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"


def check_url(url: str) -> None:
    """A --flush-redis URL: redis:// or rediss://, no password in it. Raises UsageError."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise UsageError("--flush-redis takes a redis:// or rediss:// URL "
                         "(redis://host:6379/0)")
    if parts.password or "password" in parts.query.lower():
        raise UsageError("--flush-redis: put the password in PREFECT_DR_REDIS_PASSWORD, not "
                         "in the URL (command lines are visible to every user)")


def flush(url: str, families: list[KeyFamily], env: Mapping[str, str]) -> dict[str, int]:
    """Delete every key of ``families`` in the Redis at ``url`` (password from
    PREFECT_DR_REDIS_PASSWORD). Returns keys deleted per family. Raises DRError."""
    check_url(url)
    try:
        import redis
    except ImportError:
        raise SetupError("--flush-redis needs the redis package (pip install redis)") from None
    password = env.get("PREFECT_DR_REDIS_PASSWORD") or None
    try:
        client = redis.Redis.from_url(url, password=password, socket_timeout=30)
        done: dict[str, int] = {}
        try:
            for family in families:
                deleted = 0
                for pattern in family.patterns:
                    batch: list[bytes] = []
                    for key in client.scan_iter(match=pattern, count=1000):
                        batch.append(key)
                        if len(batch) >= 1000:
                            deleted += int(client.unlink(*batch))
                            batch = []
                    if batch:
                        deleted += int(client.unlink(*batch))
                done[family.name] = deleted
        finally:
            client.close()
    except redis.RedisError as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DRError(f"flushing Prefect's keys in Redis at {describe(url)} failed: "
                      f"{message}") from None
    return done
