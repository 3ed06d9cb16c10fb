"""Run the prefect-dr CLI with a failpoint: SIGKILL itself right before or after the N-th call
of one named function of the package.

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
from typing import Any


def _arm(spec: str, mark: str | None) -> None:
    module_name, func_name, when, nth_text = spec.split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, func_name, None)
    if original is None or when not in ("before", "after"):
        sys.stderr.write(f"failpoint: no {func_name} in {module_name} (or bad {when!r})\n")
        sys.exit(97)
    nth = int(nth_text)
    calls = [0]

    def die() -> None:
        if mark:
            with open(mark, "w", encoding="utf-8") as fh:
                fh.write(spec)
        os.kill(os.getpid(), signal.SIGKILL)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if when == "before" and calls[0] == nth:
            die()
        result = original(*args, **kwargs)
        if when == "after" and calls[0] == nth:
            die()
        return result

    setattr(module, func_name, wrapper)


def main() -> int:
    spec = os.environ.pop("PREFECT_DR_CHAOS_FAILPOINT", "")
    mark = os.environ.pop("PREFECT_DR_CHAOS_FAILPOINT_MARK", None)  # written when it fires
    if spec:
        _arm(spec, mark)
    from prefect_dr.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
