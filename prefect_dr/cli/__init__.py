"""The prefect-dr command line: parse, confirm, call the core, map errors to exit codes, render.

No logic lives here beyond that; every command calls the core. Layout:
- ``application``: the typer application, global options (before or after the command), the mapping
  of every outcome to an exit code (docs/exit-codes.md), signals and run metrics;
- ``common``: settings, repository, backup selection, confirmation, shared option types;
- ``render``: tables fitted to the terminal;
- one module per command group: ``backups`` (backup, copy, list, show, block-key), ``verify_cmd``,
  ``restore_cmds`` (restore, restore-config, rollback), ``ops`` (prune, status),
  ``setup_cmds`` (keygen, doctor, config show, k8s render), ``rehearse_cmd``
  (rehearse-upgrade), ``watch_cmd`` (watch).
"""

from prefect_dr.cli import (
    backups,
    ops,
    rehearse_cmd,
    restore_cmds,
    setup_cmds,
    verify_cmd,
    watch_cmd,
)
from prefect_dr.cli.application import _after_signal, app, hoist_globals, main, state

__all__ = ["_after_signal", "app", "backups", "hoist_globals", "main", "ops", "rehearse_cmd",
           "restore_cmds", "setup_cmds", "state", "verify_cmd", "watch_cmd"]
