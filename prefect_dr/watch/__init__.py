"""``watch``: config-only backups within a minute of a configuration change.

The package keeps the long-running command's parts apart, none of which knows of typer or rich:

- :mod:`.state`: the pure decisions, driven by a clock the caller passes (the debounce of a
  burst of changes into one backup, with a maximum delay; retry after a failed backup; the
  stream's reconnection backoff; what ``/metrics`` reports);
- :mod:`.stream`: Prefect's event stream (``/api/events/out``, the websocket the Prefect
  client's events subscriber uses), reduced to "a configuration change was announced";
- :mod:`.poll`: the configuration tables read directly, read-only and cheaply, to notice a
  change the stream does not announce (Prefect before 3.7, or the stream down);
- :mod:`.loop`: the loop that ties them to ``backup.run`` until a stop signal;
- :mod:`.metrics`: the Prometheus view of the loop's :class:`.state.Status`.
"""
