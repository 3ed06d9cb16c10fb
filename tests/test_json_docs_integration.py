"""docs/json.md against the real output (issue 23): every command marked *tested* there is run
with --json on the stack, and its document's keys (and those of its items) are the ones the
table lists; every document carries ok and schema_version, and names a backup backup_id."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from conftest import clean_cli_env, run_cli

pytestmark = pytest.mark.integration
DOC = Path(__file__).resolve().parent.parent / "docs" / "json.md"
TICKED = re.compile(r"`([a-z_0-9]+)`")


def _table() -> dict[str, tuple[set[str], dict[str, set[str]], bool]]:
    """command -> (top-level keys, {list key: item keys}, tested) from docs/json.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or (not cells[0].startswith("`") and cells[0] != "an error"):
            continue
        command = cells[0].strip("`")
        keys = cells[1].split("(refused")[0].split("(and `signature`")[0]
        keys = keys.split("(history")[0]
        items: dict[str, set[str]] = {}
        if ":" in cells[2] and "as `copy`" not in cells[2]:
            name, _, rest = cells[2].partition(":")
            items[name.strip("` ")] = set(TICKED.findall(rest.split("(history")[0]))
        rows[command] = (set(TICKED.findall(keys)), items, cells[3] == "tested")
    return rows


@pytest.fixture(scope="module")
def env(stack_env: dict[str, str], identity: tuple[Path, str]) -> dict[str, str]:
    return clean_cli_env(stack_env, identity, PREFECT_DR_S3_PREFIX=f"json-{uuid.uuid4().hex[:8]}")


def test_every_tested_document_has_the_documented_keys(env: dict[str, str],
                                                        tmp_path: Path) -> None:
    made = run_cli(["backup", "--kind", "config-only", "--json"], env)
    assert made.returncode == 0, made.stderr
    backup_id = json.loads(made.stdout)["backup_id"]
    (tmp_path / "copy").mkdir()
    runs = {
        "backup": (["backup", "--kind", "config-only", "--label", "why=json"], 0),
        "list": (["list"], 0),
        "show": (["show", backup_id[:19]], 0),
        "copy": (["copy", backup_id, "--to", f"file://{tmp_path / 'copy'}"], 0),
        "verify": (["verify", backup_id[-6:]], 0),
        "status": (["status", "--kind", "config-only"], 0),
        "prune": (["prune", "--dry-run", "--keep-last", "5"], 0),
        "doctor": (["doctor"], None),
        "config show": (["config", "show"], 0),
        "keygen": (["keygen", "-o", str(tmp_path / "new.key")], 0),
        "block-key": (["block-key", backup_id, "-o", str(tmp_path / "block.key")], 0),
        "restore --dry-run": (["restore", backup_id, "--dry-run", "--kind", "config-only"],
                              None),
        "restore-config --dry-run": (["restore-config", backup_id, "--dry-run"], 0),
        "rollback --list": (["rollback", "--list"], 0),
        "an error": (["show", "20001231"], 10),
    }
    table = _table()
    tested = {c for c, (_, _, t) in table.items() if t}
    assert tested == set(runs), "docs/json.md's tested rows and this test disagree"
    for command, (args, code) in runs.items():
        proc = run_cli([*args, "--json"], env)
        assert code is None or proc.returncode == code, (command, proc.stderr)
        doc = json.loads(proc.stdout)
        keys, items, _ = table[command]
        assert doc["schema_version"] == 1 and isinstance(doc["ok"], bool), command
        if command == "show":  # a manifest: its optional fields only when present
            optional = {"signature", "repository", "runtime", "privileges"}
            assert keys <= set(doc) <= keys | optional, (command, sorted(doc))
        elif command == "restore --dry-run" and "error" in doc:
            assert set(doc) == keys | {"error", "exit_code"}, (command, sorted(doc))
        else:
            assert set(doc) == keys, (command, sorted(doc))
        for name, item_keys in items.items():
            assert doc[name], (command, name)
            for item in doc[name]:
                extra = {"table", "columns", "rows"} if command == "show" else set()
                assert item_keys <= set(item) <= item_keys | extra, (command, sorted(item))
                if "backup_id" in item_keys:
                    assert item["backup_id"]
