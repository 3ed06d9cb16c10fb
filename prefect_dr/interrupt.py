"""Remembers that SIGINT/SIGTERM arrived, for code where the signal's exception gets lost.

The CLI's handler calls ``note`` and then raises Interrupted. If that exception surfaces
inside a native library (pyrage checks signals and reports them as its own error), the caller
uses ``raise_if_noted`` to turn the library's error back into Interrupted. botocore does the
same (it wraps any exception raised inside an HTTP request as HTTPClientError), so the retry
loop and the S3 error mapping consult ``pending`` too.

The rule (enforced by tests/test_interrupt.py): a handler that catches DRError, Exception or
BaseException and carries on instead of raising calls ``raise_if_noted`` first, because
Interrupted is a DRError and a wrapped signal may be any error. Clean-up on a path that is
already failing, and the CLI's top level, are the exceptions.
"""

from __future__ import annotations

from prefect_dr.errors import Interrupted

_noted: str | None = None


def note(signal_name: str) -> Interrupted:
    """Record that ``signal_name`` arrived; return the exception to raise."""
    global _noted
    _noted = signal_name
    return Interrupted(f"stopped by signal {signal_name}")


def pending() -> Interrupted | None:
    """The Interrupted to raise when a stop signal has arrived, else None."""
    return Interrupted(f"stopped by signal {_noted}") if _noted is not None else None


def raise_if_noted() -> None:
    """Raise Interrupted when a stop signal has arrived."""
    stop = pending()
    if stop is not None:
        raise stop
