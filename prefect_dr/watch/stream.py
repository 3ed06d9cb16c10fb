"""Prefect's event stream, reduced to "a configuration change was announced".

The protocol is the one the Prefect client's events subscriber speaks
(``prefect.events.clients.PrefectEventSubscriber``, Prefect 3.1-3.9): a websocket to
``<PREFECT_API_URL>/events/out`` with the ``prefect`` subprotocol; the first message is
``{"type": "auth", "token": ...}`` (the API key, else ``PREFECT_API_AUTH_STRING``, else null),
answered by ``{"type": "auth_success"}``; the second is ``{"type": "filter", "filter": ...,
"backfill": false}`` (an ``EventFilter``: event name prefixes and an ``occurred`` window);
then the server sends ``{"type": "event", "event": {...}}`` for every matching event.

Which events mean a configuration change: ``prefect.<kind>.created|updated|deleted`` for the
kinds in :data:`KINDS`. Prefect 3.9.1 announces them for every configuration object
(variables, blocks, deployments, work pools and queues, automations, concurrency limits,
flows; lifecycle events came in the 3.7 series); 3.1.15 and 3.4.25 announce none (only
deployment, work-pool and work-queue status changes, which are not configuration), which is
why ``watch`` keeps polling the tables too (:mod:`.poll`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from prefect_dr import redact
from prefect_dr.errors import DRError

log = logging.getLogger(__name__)

#: The resource kinds whose lifecycle events are configuration changes.
KINDS: tuple[str, ...] = (
    "block-document", "block-type", "block-schema", "deployment", "work-pool", "work-queue",
    "variable", "automation", "concurrency-limit", "flow",
)
#: The lifecycle actions that change configuration (status events such as
#: ``prefect.work-pool.ready`` come from workers polling and are not changes).
ACTIONS: tuple[str, ...] = ("created", "updated", "deleted")
#: Seconds to open the connection and complete the handshake.
CONNECT_TIMEOUT_S = 10.0
#: Seconds a close may take; a stop must not wait for a dead server.
CLOSE_TIMEOUT_S = 2.0
API_KEY_ENV = "PREFECT_API_KEY"
AUTH_STRING_ENV = "PREFECT_API_AUTH_STRING"


class StreamDown(DRError):
    """The event stream cannot be opened or was lost."""


def is_config_change(event_name: str) -> bool:
    """Whether event ``event_name`` announces a configuration change."""
    parts = event_name.split(".")
    return (len(parts) == 3 and parts[0] == "prefect" and parts[1] in KINDS
            and parts[2] in ACTIONS)


def socket_url(api_url: str) -> str:
    """The websocket URL of the event stream of the API at ``api_url`` (as Prefect builds it)."""
    base = api_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base.removeprefix("https://")
    elif base.startswith("http://"):
        base = "ws://" + base.removeprefix("http://")
    return base + "/events/out"


def filter_message(now: dt.datetime) -> dict[str, Any]:
    """The filter message: the configuration kinds' events from now on, no backfill."""
    return {
        "type": "filter", "backfill": False,
        "filter": {
            "occurred": {"since": now.isoformat(),
                         "until": (now + dt.timedelta(days=3650)).isoformat()},
            "event": {"prefix": [f"prefect.{kind}." for kind in KINDS]},
        },
    }


def token_from(env: Mapping[str, str]) -> str | None:
    """The auth message's token, as the Prefect client picks it: the API key, else the auth
    string (``user:password`` of a self-hosted server), else none. Registered for redaction."""
    token = env.get(API_KEY_ENV) or env.get(AUTH_STRING_ENV) or None
    if token:
        redact.register(token)
    return token


class EventStream:
    """One connection to the event stream; :meth:`next_change` waits for the next
    configuration change. Every failure is :class:`StreamDown` (the caller falls back to
    polling and reconnects later)."""

    def __init__(self, api_url: str, env: Mapping[str, str] | None = None) -> None:
        self.url = socket_url(api_url)
        self._env = os.environ if env is None else env
        self._ws: Any = None

    def open(self) -> None:
        """Connect, authenticate and subscribe. Raises StreamDown."""
        from websockets.exceptions import ConnectionClosed, WebSocketException
        from websockets.sync.client import connect
        from websockets.typing import Subprotocol

        token = token_from(self._env)
        headers = {"Authorization": f"bearer {token}"} if self._env.get(API_KEY_ENV) else None
        try:
            ws = connect(self.url, subprotocols=[Subprotocol("prefect")],
                         additional_headers=headers, open_timeout=CONNECT_TIMEOUT_S,
                         close_timeout=CLOSE_TIMEOUT_S, max_size=2**24)
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise StreamDown(f"event stream {self.url} unavailable: {_why(exc)}") from None
        self._ws = ws
        try:
            ws.send(json.dumps({"type": "auth", "token": token}))
            try:
                answer = json.loads(ws.recv(timeout=CONNECT_TIMEOUT_S))
            except ConnectionClosed as exc:  # how a server with an auth string refuses
                rcvd = getattr(exc, "rcvd", None)
                answer = {"type": "closed", "reason": getattr(rcvd, "reason", "") or ""}
            if not isinstance(answer, dict) or answer.get("type") != "auth_success":
                reason = answer.get("reason", "") if isinstance(answer, dict) else ""
                raise StreamDown(f"event stream {self.url} refused authentication"
                                 + (f": {reason}" if reason else "")
                                 + f" (check {API_KEY_ENV} / {AUTH_STRING_ENV})")
            ws.send(json.dumps(filter_message(dt.datetime.now(dt.UTC))))
        except StreamDown:
            self.close()
            raise
        except (OSError, TimeoutError, ValueError, WebSocketException) as exc:
            self.close()
            raise StreamDown(f"event stream {self.url} handshake failed: {_why(exc)}"
                             ) from None
        log.info("event stream connected: %s", self.url)

    def next_change(self, timeout: float) -> str | None:
        """Wait up to ``timeout`` seconds for a configuration change; return its event name,
        or None when none came. Raises StreamDown when the connection is lost."""
        from websockets.exceptions import WebSocketException

        if self._ws is None:
            raise StreamDown("event stream not connected")
        try:
            raw = self._ws.recv(timeout=max(timeout, 0.0))
        except TimeoutError:
            return None
        except (OSError, WebSocketException) as exc:
            self.close()
            raise StreamDown(f"event stream lost: {_why(exc)}") from None
        try:
            message = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(message, dict) or message.get("type") != "event":
            return None
        event = message.get("event")
        name = event.get("event") if isinstance(event, dict) else None
        return name if isinstance(name, str) and is_config_change(name) else None

    def close(self) -> None:
        """Close the connection (bounded by :data:`CLOSE_TIMEOUT_S`). Never raises."""
        from websockets.exceptions import WebSocketException

        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close()
            except (OSError, RuntimeError, WebSocketException) as exc:  # a lost connection
                log.debug("closing the event stream: %s", exc)


def _why(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return redact.redact(text)
