"""Help as a newcomer needs it: commands grouped by task, whole one-line descriptions, one to
three examples per command, and placeholders as words (``--label KEY=VALUE``, not a Python
type). Used by :mod:`prefect_dr.cli.application` when it registers the commands."""

from __future__ import annotations

from typing import Any

import typer.core

#: The top-level commands by task, in the order a newcomer meets them.
TASKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Set up", ("keygen", "doctor", "config", "k8s")),
    ("Back up", ("backup", "watch", "list", "show", "copy")),
    ("Prove", ("verify", "rehearse-upgrade")),
    ("Restore", ("restore", "rollback", "restore-config", "block-key")),
    ("Operate", ("status", "prune")),
)

#: One to three examples per command (the key is the command path after ``prefect-dr``).
EXAMPLES: dict[str, tuple[str, ...]] = {
    "keygen": ("prefect-dr keygen -o ~/.config/prefect-dr/age.key",
               "prefect-dr keygen --signing -o signing.pem"),
    "doctor": ("prefect-dr doctor", "prefect-dr doctor --json | jq '.checks[] | select("
               ".status==\"fail\")'"),
    "config show": ("prefect-dr config show", "prefect-dr config show --json"),
    "k8s render": ("prefect-dr k8s render --namespace prefect -o prefect-dr.yaml",),
    "backup": ("prefect-dr backup", "prefect-dr backup --label trigger=pre-upgrade",
               "prefect-dr backup --kind config-only --copy-to s3://offsite/prefect"),
    "list": ("prefect-dr list", "prefect-dr list --kind full -o wide",
             "prefect-dr list --no-headers | awk '{print $1}'"),
    "show": ("prefect-dr show 20261126T153000Z-a1b2c3", "prefect-dr show a1b2c3",
             "prefect-dr show --latest --json"),
    "copy": ("prefect-dr copy --latest --to s3://offsite/prefect",
             "prefect-dr copy --all --to file:///mnt/backups"),
    "verify": ("prefect-dr verify --latest", "prefect-dr verify 20261126T15 --restore"),
    "rehearse-upgrade": ("prefect-dr rehearse-upgrade --latest --prefect-version 3.6.4",),
    "restore": ("prefect-dr restore --latest --dry-run", "prefect-dr restore a1b2c3",
                "prefect-dr restore --latest --yes --target prefect"),
    "rollback": ("prefect-dr rollback --list", "prefect-dr rollback"),
    "restore-config": ("prefect-dr restore-config --latest --dry-run",
                       "prefect-dr restore-config a1b2c3 --yes"),
    "block-key": ("prefect-dr block-key --latest -o block.key",),
    "status": ("prefect-dr status --cron '0 2 * * *'",
               "prefect-dr status --max-age 8d --kind config-only",
               "prefect-dr status --json | jq .ok"),
    "watch": ("prefect-dr watch --metrics-port 9464",
              "prefect-dr watch --debounce 10s --max-delay 40s"),
    "prune": ("prefect-dr prune --dry-run",
              "prefect-dr prune --keep-daily 7 --keep-weekly 4 --dry-run"),
}

#: Words for the values of options whose type alone would say ``<str>``.
_WORDS = {"grace": "DURATION", "keep_within": "DURATION", "keep_safety_within": "DURATION",
          "max_age": "DURATION", "older_than": "DURATION", "label": "KEY=VALUE",
          "keep_label": "KEY[=VALUE]", "cron": "CRON", "verify_cron": "CRON",
          "target": "DATABASE", "database_url": "URL", "repository": "URL", "to": "URL",
          "copy_to": "URL", "endpoint_url": "URL", "pushgateway": "URL", "prefix": "PREFIX",
          "bucket": "BUCKET", "region": "REGION", "namespace": "NAMESPACE",
          "metrics_instance": "NAME", "prefect_version": "VERSION", "jobs": "N",
          "output": "FILE"}


def examples_epilog(path: str) -> str:
    """The 'Examples:' block of a command's help (empty when it has none)."""
    lines = EXAMPLES.get(path, ())
    return ("\b\nExamples:\n" + "\n".join(f"  {x}" for x in lines) + "\n\n") if lines else ""


def _kind(param: Any) -> str:
    """'choice', 'int', 'path' or 'text': from typer's type descriptor (typer 0.2x) or the
    click type (the older typer some Prefect versions pin)."""
    desc = getattr(param, "type_descriptor", None)
    if desc is not None:
        if desc.is_choice:
            return "choice"
        if desc.is_path:
            return "path"
        inner = [a for a in getattr(desc.annotation, "__args__", ()) if a is not type(None)]
        annotation = inner[0] if inner else desc.annotation
        return "int" if annotation is int else "text"
    kind = getattr(getattr(param, "type", None), "name", "") or ""
    if hasattr(getattr(param, "type", None), "choices"):
        return "choice"
    return {"integer": "int", "path": "path", "filename": "path"}.get(kind, "text")


def _word(param: Any) -> str | None:
    """The placeholder for an option's value, as a word (None: leave typer's choice)."""
    name = param.name or ""
    kind = _kind(param)
    if kind == "choice":
        return None  # an enum shows its values
    if name in _WORDS:
        return _WORDS[name]
    return {"int": "N", "path": "PATH"}.get(kind, name.upper())


def name_placeholders(params: list[Any]) -> None:
    """Give every value-taking option without a metavar a word for its value."""
    for param in params:
        if getattr(param, "param_type_name", "") == "argument":
            if hasattr(param, "display_type_rich"):  # typer 0.2x: 'BACKUP', not 'BACKUP <str>'
                param.display_type_rich = lambda ctx: None
            continue
        if getattr(param, "param_type_name", "") != "option" or param.metavar:
            continue
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            continue
        param.metavar = _word(param)


class WordsCommand(typer.core.TyperCommand):
    """A command whose options' placeholders are words (``--grace DURATION``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        name_placeholders(self.params)


class TaskGroup(typer.core.TyperGroup):
    """The top-level command list, grouped by task (:data:`TASKS`), each description whole
    (its first sentence, wrapped), not cut at the terminal's width."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        name_placeholders(self.params)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """One section per task; anything not in :data:`TASKS` goes under 'Other'."""
        shown = {name: cmd for name in self.list_commands(ctx)
                 if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden}
        placed: set[str] = set()
        sections = []
        for task, names in TASKS:
            rows = [(n, shown[n].get_short_help_str(limit=300)) for n in names if n in shown]
            placed.update(names)
            if rows:
                sections.append((task, rows))
        rest = [(n, c.get_short_help_str(limit=300)) for n, c in shown.items()
                if n not in placed]
        if rest:
            sections.append(("Other", rest))
        for task, rows in sections:
            with formatter.section(task):
                formatter.write_dl(rows)
