"""Help as a newcomer needs it (issue 23): -h, commands grouped by task with whole
descriptions, examples for every command, every option described, placeholders as words."""

from __future__ import annotations

import re

import typer
from terminal import in_pipe, in_terminal

import prefect_dr.cli  # noqa: F401  (registers every command)
from prefect_dr.cli import application, helptext


def _commands() -> list[tuple[str, object]]:
    """(path, click command) of every leaf command."""
    found = []

    def walk(cmd: object, path: list[str]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            found.append((" ".join(path), cmd))

    walk(typer.main.get_command(application.app), [])
    return found


def test_every_command_has_examples_and_every_option_a_description() -> None:
    commands = _commands()
    assert {path for path, _ in commands} == set(helptext.EXAMPLES)
    for path, cmd in commands:
        assert 1 <= len(helptext.EXAMPLES[path]) <= 3, path
        for param in cmd.params:  # type: ignore[attr-defined]
            assert param.help, f"{path} {param.name} has no description"
    grouped = [n for _, names in helptext.TASKS for n in names]
    top = typer.main.get_command(application.app).commands  # type: ignore[attr-defined]
    assert sorted(grouped) == sorted(top)


def test_help_at_80_columns_groups_by_task_and_shows_words(tmp_path: object) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    code, screen = in_terminal(["-h"], env, 80)
    assert code == 0, screen
    headings = [line.rstrip(":") for line in screen.splitlines()
                if line.endswith(":") and not line.startswith(" ")]
    assert headings[-5:] == ["Set up", "Back up", "Prove", "Restore", "Operate"], screen
    commands = screen.split("\nSet up:")[1]
    assert commands.index("  keygen ") < commands.index("  backup ")
    assert "..." not in commands  # descriptions whole, wrapped
    assert all(len(line) <= 80 for line in screen.splitlines())
    for path, _ in _commands():
        code, text = in_terminal([*path.split(), "-h"], env, 80)
        assert code == 0, text
        assert "Examples:" in text and helptext.EXAMPLES[path][0] in text, path
        assert not re.search(r"<(str|int|path|list\[str\])>", text), (path, text)
    piped = in_pipe(["prune", "--help"], env)
    assert "--keep-daily N" in piped.stdout and "Keep the newest backup of each" in \
        piped.stdout
    assert "--label KEY=VALUE" in in_pipe(["backup", "-h"], env).stdout


def test_every_missing_setting_is_reported_at_once() -> None:
    """Issue 23: a missing repository hid the other missing settings. On a terminal they
    are a list; in a pipe (scripts, logs) one line."""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    code, screen = in_terminal(["backup"], env, 80)
    assert code == 2, screen
    lines = [line for line in screen.splitlines() if line.strip()]
    assert lines[0] == "error: invalid configuration (3 problems):", screen
    assert [line.split()[1] for line in lines[1:4]] == ["no", "PREFECT_DR_DATABASE_URL", "no"]
    assert "no repository" in lines[1] and "no age recipient" in lines[3]
    piped = in_pipe(["backup"], env)
    assert piped.returncode == 2 and len(piped.stderr.strip().splitlines()) == 1
    assert "(3 problems)" in piped.stderr and "no repository" in piped.stderr
    verify = in_pipe(["verify", "--latest"], env)
    assert "(3 problems)" in verify.stderr and "PREFECT_DR_AGE_IDENTITY_FILE" in verify.stderr
