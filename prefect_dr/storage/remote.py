"""What the stores reached over a network (S3, Azure Blob) share: every call retried on
transient errors until a deadline, the service's error codes that are answers ("no such key",
"the key is taken") turned into values, every other error into a one-line DRError (the stop
after a signal), ``put_if_absent`` by the lost-answer rule (``base.put_if_absent_retried``),
and the rule their uploads' part sizes follow. A backend keeps its client library's calls and
its error words.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

from prefect_dr import interrupt, retry
from prefect_dr.errors import DRError
from prefect_dr.storage.base import Storage, put_if_absent_retried


@dataclass(frozen=True)
class PartSizes:
    """The part sizes of an upload in parts: part ``n`` (1-based) is ``first`` bytes, doubling
    every ``step`` parts, at most ``cap``; an upload has at most ``most`` parts."""

    first: int
    cap: int
    step: int
    most: int

    def size(self, number: int) -> int:
        """Size of part ``number`` (1-based)."""
        return min(self.cap, self.first * 2 ** ((number - 1) // self.step))


class RemoteStorage(Storage):
    """A :class:`Storage` behind a network, on a client library whose errors carry codes."""

    #: seconds transient errors are retried (each backend's ``__init__`` sets it)
    retry_deadline_s: float = 120.0
    #: the client library's errors: every call's are caught, and answered or wrapped
    client_errors: tuple[type[BaseException], ...] = ()
    #: those of them that are the service's own answers (the others are the client's: after a
    #: stop signal they are the stop, which a library may have wrapped)
    answer_errors: tuple[type[BaseException], ...] = ()
    #: the error codes of a conditional write's "the key is taken"
    taken_codes: tuple[str, ...] = ()
    #: what names the service in retry messages ("S3 " makes "S3 stat")
    retry_prefix: str = ""

    @staticmethod
    @abc.abstractmethod
    def is_transient(exc: BaseException) -> bool:
        """Whether ``exc`` is worth retrying (network trouble, throttling, 5xx)."""

    @staticmethod
    @abc.abstractmethod
    def error_code(exc: BaseException) -> str:
        """The service's error code of ``exc`` ('' when it has none)."""

    @abc.abstractmethod
    def describe_error(self, exc: BaseException, doing: str) -> DRError:
        """The one-line error (no secrets, no trace) for ``exc``, raised while ``doing`` (an
        action and the object it was on: ``stat s3://bucket/key``)."""

    @abc.abstractmethod
    def _create(self, key: str, data: bytes, content_type: str) -> object:
        """One attempt to write ``data`` at ``key`` only if no object has it (the service
        answers one of ``taken_codes`` otherwise). Raises the client library's errors."""

    def wrap_error(self, exc: BaseException, action: str, key: str = "") -> DRError:
        """``exc`` as a DRError for ``action`` on ``key`` (``describe_error``); after a stop
        signal a client-side error is the stop (Interrupted)."""
        stop = interrupt.pending()
        if stop is not None and not isinstance(exc, self.answer_errors):
            return stop
        where = f"{self.description}/{key}" if key else self.description
        return self.describe_error(exc, f"{action} {where}")

    def _call(self, what: str, key: str, fn: Any, *, answers: dict[str, Any] | None = None,
              deadline_s: float | None = None, **kwargs: Any) -> Any:
        """``fn(**kwargs)`` with transient errors retried until the deadline (default: the
        configured one). An error code listed in ``answers`` is an answer, not an error: its
        value is returned. Raises the DRError of ``wrap_error`` for every other error."""
        try:
            return retry.call(lambda: fn(**kwargs), transient=self.is_transient,
                              what=f"{self.retry_prefix}{what}",
                              deadline_s=self.retry_deadline_s if deadline_s is None
                              else deadline_s)
        except self.client_errors as exc:
            code = self.error_code(exc)
            if answers and code in answers:
                return answers[code]
            raise self.wrap_error(exc, what, key) from None

    def put_if_absent(self, key: str, data: bytes,
                      content_type: str = "application/json") -> bool:
        taken = object()
        return put_if_absent_retried(
            lambda: self._create(key, data, content_type),
            lambda attempt: self._call("write", key, attempt, answers=dict.fromkeys(
                self.taken_codes, taken)) is not taken,
            lambda: self._holds(key, data))

    def _holds(self, key: str, data: bytes) -> bool:
        """Whether the object at ``key`` holds exactly ``data`` (read whole)."""
        return self.get_bytes(key) == data
