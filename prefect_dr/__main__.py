"""`python -m prefect_dr` and the `prefect-dr` command.

A stop signal can come at any time, also while Python imports the command line (half a second
of typer, rich and the core): until the command installs its own handlers, SIGTERM and SIGINT
end the process at once with exit 130, as nothing has started yet (docs/exit-codes.md); once
the command has ended, they are blocked, so its exit code stands.
"""

import os
import signal


def _early_stop(signum: int, frame: object) -> None:
    os._exit(130)


def main() -> int:
    """Install the early stop handlers, run the command line, return its exit code."""
    signal.signal(signal.SIGTERM, _early_stop)
    signal.signal(signal.SIGINT, _early_stop)
    from prefect_dr.cli import main as cli_main

    code = cli_main()
    finished()
    return code


def finished() -> None:
    """The run is over: a stop signal from now on must not turn its exit code into a death by
    signal (Python restores the default handlers while it shuts down), so block them."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})


if __name__ == "__main__":
    raise SystemExit(main())
