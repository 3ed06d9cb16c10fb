"""Run the prefect-dr CLI with a failpoint: SIGKILL itself (or send itself the signal
``PREFECT_DR_CHAOS_FAILPOINT_SIGNAL`` names: TERM, INT) right before or after the N-th call of
one named function (``func`` or ``Class.method``) of the package.

    PREFECT_DR_CHAOS_FAILPOINT=prefect_dr.pg.swap:rename:after:1 python failpoint.py restore ...

Random time-based kills cannot hit steps that last a millisecond (the renames of a restore's
swap); a failpoint stops the process exactly between two such steps. The process dies by a real
SIGKILL, so nothing of its own cleanup runs: what is left is what a crash there would leave.
The variables are removed before the CLI reads its settings.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys
import threading
from typing import Any


def _arm(spec: str, mark: str | None, signame: str = "KILL") -> None:
    module_name, func_name, when, nth_text = spec.split(":")
    owner: Any = importlib.import_module(module_name)
    class_name, _, func_name = func_name.rpartition(".")  # "Class.method" arms a method
    if class_name:
        owner = getattr(owner, class_name, None)
    original = getattr(owner, func_name, None)
    if original is None or when not in ("before", "after"):
        sys.stderr.write(f"failpoint: no {func_name} in {module_name} (or bad {when!r})\n")
        sys.exit(97)
    nth = int(nth_text)
    calls = [0]
    lock = threading.Lock()
    sig = getattr(signal, f"SIG{signame}")

    def die() -> None:
        if mark:
            with open(mark, "w", encoding="utf-8") as fh:
                fh.write(spec)
        os.kill(os.getpid(), sig)  # SIGTERM/SIGINT: the CLI's handler runs right here

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with lock:  # the call's own number: calls may overlap (a backfill's loads in threads)
            calls[0] += 1
            mine = calls[0]
        if when == "before" and mine == nth:
            die()
        result = original(*args, **kwargs)
        if when == "after" and mine == nth:
            die()
        return result

    setattr(owner, func_name, wrapper)


def main() -> int:
    from prefect_dr import __main__ as entry  # as the real command: early handlers first

    signal.signal(signal.SIGTERM, entry._early_stop)
    signal.signal(signal.SIGINT, entry._early_stop)
    spec = os.environ.pop("PREFECT_DR_CHAOS_FAILPOINT", "")
    mark = os.environ.pop("PREFECT_DR_CHAOS_FAILPOINT_MARK", None)  # written when it fires
    signame = os.environ.pop("PREFECT_DR_CHAOS_FAILPOINT_SIGNAL", "KILL")  # or TERM, INT
    if spec:
        _arm(spec, mark, signame)
    from prefect_dr.cli import main as cli_main

    code = cli_main(sys.argv[1:])
    entry.finished()
    return code


if __name__ == "__main__":
    sys.exit(main())
