"""One definition per concept (issue 24): verification results, artifact names and verify's
exit codes come from one place, and the places that used to spell them out ask it."""

from __future__ import annotations

import re
from pathlib import Path

from prefect_dr import console, errors, verify
from prefect_dr.checks import Check
from prefect_dr.kinds import Result

PACKAGE = Path(__file__).resolve().parents[1] / "prefect_dr"


def _report(*oks: bool, key_error: bool = False) -> verify.VerificationReport:
    report = verify.VerificationReport("20260101T020000Z-abcdef", "2026-01-01T02:00:00+00:00")
    report.checks = [Check(f"c{i}", ok, "d") for i, ok in enumerate(oks)]
    report.key_error = key_error
    return report


def test_verify_exit_code_is_the_use_cases() -> None:
    assert verify.exit_code([_report(True), _report(True)]) == errors.OK
    assert verify.exit_code([_report(True), _report(False)]) == errors.VERIFICATION_FAILED
    assert verify.exit_code([_report(False), _report(False, key_error=True)]) == errors.KEY_ERROR
    assert _report(True).to_record()["result"] == Result.PASSED == "passed"
    assert _report(True, False).to_record()["result"] == "failed"


def test_recovered_only_after_a_failed_verification() -> None:
    passed, failed = [_report(True)], [_report(False)]
    assert verify.recovered({"result": "failed"}, passed)
    assert not verify.recovered({"result": "passed"}, passed)
    assert not verify.recovered(None, passed)
    assert not verify.recovered({"result": "failed"}, failed)


def test_every_status_word_a_table_shows_has_its_colour() -> None:
    # the lookup lower-cases; an upper-case key could never match (REFUSED was uncoloured)
    assert all(key == key.lower() for key in console.STATUS_STYLE)
    assert console.styled("REFUSED") == "[bold red]REFUSED[/]"
    assert console.styled("FAILED") == "[bold red]FAILED[/]"


def test_artifact_names_and_results_are_not_spelled_out_elsewhere() -> None:
    # restore_stream.py still names its checks' artifact "dump" (left for issue 25's merge)
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for n, line in enumerate(text.splitlines(), 1):
            if re.search(r"\.artifact\(\"|_artifact\(\"|\"result\": \"|"
                         r"get\(\"result\"\) == \"", line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}")
    assert offenders == []
