"""One table of exit codes (errors.EXIT_CODES): the docs, notifications and the Kubernetes
Jobs' podFailurePolicy all agree with it."""

from __future__ import annotations

import re
from pathlib import Path

from prefect_dr import errors, k8s, notify

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "exit-codes.md").read_text(encoding="utf-8")


def test_the_documented_table_is_errors_table() -> None:
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|", DOC, re.MULTILINE)
    assert {int(code): name for code, name in rows} == {
        code: name for code, (name, _) in errors.EXIT_CODES.items()}


def test_the_documented_no_retry_codes_are_errors_own() -> None:
    block = re.search(r"<!-- no-retry-codes.*?-->\s*`([^`]*)`", DOC, re.S)
    assert block, "docs/exit-codes.md lost its no-retry-codes block"
    documented = tuple(int(c) for c in block[1].split(","))
    assert documented == errors.NO_RETRY_EXIT_CODES
    assert errors.SETUP in documented and errors.STALE in documented
    assert errors.FAILURE not in documented and errors.INTERRUPTED not in documented


def test_every_rendered_job_fails_at_once_on_exactly_those_codes() -> None:
    options = k8s.RenderOptions(restore_backup_id="20260101T020000Z-abcdef")
    jobs = [o["spec"]["jobTemplate"]["spec"] for o in k8s.render(options)
            if o["kind"] == "CronJob"]
    jobs += [k8s.restore_job(options)["spec"], k8s.pre_upgrade_hook(options)["spec"]]
    for spec in jobs:
        [fail] = [r for r in spec["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
        assert tuple(fail["onExitCodes"]["values"]) == errors.NO_RETRY_EXIT_CODES


def test_notifications_name_every_code_as_the_table_does() -> None:
    for code, (name, _) in errors.EXIT_CODES.items():
        if code == errors.OK:
            continue
        outcome = notify.Outcome(command="backup", exit_code=code, run_id="r", host="h")
        _, body, _ = notify.message(outcome)
        assert f"(exit {code}: {name})" in body.splitlines()[0]
