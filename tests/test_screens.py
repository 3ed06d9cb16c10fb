"""What a person at a terminal (80 and 120 columns) and a script reading a pipe get from the
real binary, compared with committed captures in tests/golden/screens (issue 23).

The repository is a file:// one with fixed backups (tests/screen_repo.py); only the ages
('398d ago') change with the date, so their digits are compared as 9s. After a deliberate
layout change, rewrite the captures with ``PREFECT_DR_UPDATE_SCREENS=1`` and review the diff.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import screen_repo
from terminal import in_pipe, in_terminal

GOLDEN = Path(__file__).parent / "golden" / "screens"
AGE = re.compile(r"\d+(?=[smhd] ago)")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The CLI's environment, pointed at the fixed repository."""
    return screen_repo.make(tmp_path_factory.mktemp("screens") / "repo")


def _same_as_capture(name: str, text: str) -> None:
    text = AGE.sub(lambda m: "9" * len(m.group()), text).strip("\n") + "\n"
    path = GOLDEN / name
    if os.environ.get("PREFECT_DR_UPDATE_SCREENS") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed:\n{text}"


@pytest.mark.parametrize("width", [80, 120])
def test_list_and_show_fit_the_terminal(env: dict[str, str], width: int) -> None:
    code, screen = in_terminal(["list"], env, width)
    assert code == 0, screen
    assert all(len(line) <= width for line in screen.splitlines()), screen
    _same_as_capture(f"list-{width}.txt", screen)
    code, screen = in_terminal(["show", "a1b2c3"], env, width)  # the suffix names it
    assert code == 0, screen
    assert all(len(line) <= width for line in screen.splitlines()), screen
    assert "team=data-platform,ticket=OPS-12345,trigger=nightly-schedule" in screen
    _same_as_capture(f"show-{width}.txt", screen)


def test_in_a_pipe_nothing_is_cut_or_padded(env: dict[str, str]) -> None:
    """`prefect-dr list | grep pre-upgrade` finds its backup; every column, one row a line."""
    listed = in_pipe(["list"], env)
    assert listed.returncode == 0, listed.stderr
    _same_as_capture("list-pipe.txt", listed.stdout)
    lines = listed.stdout.splitlines()
    assert all(line == line.rstrip() for line in lines)
    assert "labels" in lines[1] and "verified / error" in lines[1]
    [row] = [line for line in lines if "pre-upgrade" in line]
    assert row.startswith("20251102T140000Z-0a9b8c ")
    quiet = in_pipe(["list", "--no-headers"], env)
    assert [line.split()[0] for line in quiet.stdout.splitlines()] == [
        bid for bid, _, _ in screen_repo.BACKUPS]
    wide = in_terminal(["list", "-o", "wide"], env, 80)[1]
    assert "trigger=nightly-schedule" in wide and "verified / error" in wide
    bad = in_pipe(["list", "-o", "yaml"], env)
    assert bad.returncode == 2 and "the only output format is 'wide'" in bad.stderr


def test_config_show_never_cuts_values_or_sources(env: dict[str, str]) -> None:
    url = env["PREFECT_DR_REPOSITORY"]
    piped = in_pipe(["config", "show"], env).stdout
    [row] = [line for line in piped.splitlines() if line.startswith("repository ")]
    assert url in row and row.endswith("env PREFECT_DR_REPOSITORY")
    code, screen = in_terminal(["config", "show"], env, 80)
    assert code == 0 and "…" not in screen, screen
    assert all(len(line) <= 80 for line in screen.splitlines()
               if not line.startswith("Repository:")), screen  # a plain line may wrap
    joined = "".join(line.strip() for line in screen.splitlines())
    assert url.replace(" ", "") in joined


def test_an_ambiguous_prefix_lists_the_candidates(env: dict[str, str]) -> None:
    shown = in_pipe(["show", "20251102", "--json"], env)
    assert shown.returncode == 2, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["ok"] is False and "20251102T020000Z-d4e5f6, 20251102T140000Z-0a9b8c" in \
        doc["error"]
    one = in_pipe(["show", "20251102T14", "--json"], env)
    assert one.returncode == 0 and json.loads(one.stdout)["backup_id"] == \
        "20251102T140000Z-0a9b8c"
    short = in_pipe(["show", "2025110"], env)
    assert short.returncode == 10 and "its first 8 or more characters" in short.stderr
