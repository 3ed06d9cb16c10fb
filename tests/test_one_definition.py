"""One definition per concept (issue 24): verification results, artifact names and verify's
exit codes come from one place, and the places that used to spell them out ask it."""

from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path

import pytest

from prefect_dr import config, console, errors, k8s, kinds, manifest, retention, verify
from prefect_dr.checks import Check
from prefect_dr.k8s import options as k8s_options
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


ARTIFACT_NAMES = {value for name, value in vars(manifest).items() if name.startswith("ARTIFACT_")}


def _artifact_spellings(tree: ast.AST) -> list[ast.Constant]:
    """The string literals of ``tree`` that spell an artifact name: the dump's anywhere (no
    other "dump" is a string of the package), any name compared with a ``.name`` or given to a
    check (``checks.run(...)``, ``Check(...)``) as its label."""
    def named(node: ast.AST) -> list[ast.Constant]:
        return [node] if isinstance(node, ast.Constant) and node.value in ARTIFACT_NAMES else []

    found: list[ast.Constant] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value == manifest.ARTIFACT_DUMP:
            found.append(node)  # (again below when it is a label too: counted once)
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(side, ast.Attribute) and side.attr == "name" for side in sides):
                found += [c for side in sides for c in named(side)]
        elif isinstance(node, ast.Call):
            callee = node.func
            name = callee.attr if isinstance(callee, ast.Attribute) else getattr(callee, "id", "")
            if name in ("run", "Check"):
                found += [c for arg in (*node.args, *(k.value for k in node.keywords))
                          for c in named(arg)]
    return sorted({id(c): c for c in found}.values(), key=lambda c: (c.lineno, c.col_offset))


def test_artifact_names_and_results_are_not_spelled_out_elsewhere() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(PACKAGE)
        for n, line in enumerate(text.splitlines(), 1):
            if re.search(r"\.artifact\(\"|_artifact\(\"|\"result\": \"|"
                         r"get\(\"result\"\) == \"", line):
                offenders.append(f"{where}:{n}: {line.strip()}")
        if str(where) != "manifest.py":  # where the names are defined
            offenders += [f"{where}:{c.lineno}: {c.value!r}"
                          for c in _artifact_spellings(ast.parse(text))]
    assert offenders == []


def test_the_artifact_name_scan_sees_the_old_spellings() -> None:
    old = """
if artifact.name == "dump" or artifact.table:
    pass
if artifact.name == "config":
    pass
with checks.run("restore", "block-key") as out:
    pass
checks.report.checks.append(Check("integrity", True, "ok",
                                  round(time.monotonic() - start, 3), "dump"))
"""
    assert [c.lineno for c in _artifact_spellings(ast.parse(old))] == [2, 4, 6, 9]
    fixed = old.replace('"dump"', "ARTIFACT_DUMP").replace('"config"', "ARTIFACT_CONFIG")
    fixed = fixed.replace('"block-key"', "ARTIFACT_BLOCK_KEY")
    assert _artifact_spellings(ast.parse(fixed)) == []


def test_every_kind_has_one_row_that_settings_prune_and_k8s_ask() -> None:
    assert set(kinds.KIND_TABLE) == set(kinds.Kind)
    render_fields = {f.name for f in fields(k8s.RenderOptions)}
    assert kinds.POLICY_KINDS == ("full", "config-only")  # an increment goes with its base
    assert not any("incremental" in name for name in config.SPEC_BY_NAME)
    for row in kinds.POLICY_ROWS:
        kind = row.kind
        spec = config.SPEC_BY_NAME[row.retention_setting]
        assert (spec.env, spec.toml) == (row.retention_env, row.retention_toml)
        assert retention.SETTING_OF_KIND[kind] == row.retention_setting
        assert row.retention_setting in render_fields
        assert dict(k8s_options.FROM_SETTINGS)[row.retention_setting] == row.retention_setting
        assert row.retention_env in k8s_options.managed_env()
        retention.parse_policy(row.retention_example)
    for row in kinds.KIND_TABLE.values():
        assert row.loses_history is not row.history
    assert kinds.holds_history("full") and not kinds.holds_history("config-only")
    assert kinds.holds_history("incremental") and not kinds.loses_history("incremental")
    assert kinds.loses_history("config-only") and not kinds.loses_history("full")
    assert not kinds.holds_history("from-the-future") and not kinds.loses_history(None)


def test_a_policy_for_every_kind_reaches_the_configmap() -> None:
    options = k8s.RenderOptions(**{row.retention_setting: "keep-last=3"
                                   for row in kinds.POLICY_ROWS})
    env = k8s.config_env(options)
    for row in kinds.POLICY_ROWS:
        assert env[row.retention_env] == "keep-last=3"


def test_unknown_kinds_are_named_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown backup kind 'weekly' \(full, config-only "
                       r"or incremental\)"):
        kinds.parse("weekly")
    with pytest.raises(retention.PolicyError, match="full, config-only or incremental"):
        retention.policies_for({}, "weekly")
    with pytest.raises(retention.PolicyError, match="pruned with their chain's base"):
        retention.policies_for({}, "incremental")


FORMAT = (PACKAGE.parent / "docs" / "format.md").read_text(encoding="utf-8")


def test_the_format_documents_every_result_and_artifact_name() -> None:
    from prefect_dr import manifest

    record = FORMAT[FORMAT.index("## Verification records"):]
    assert f'"result": "{Result.PASSED}" | "{Result.FAILED}"' in record
    for shown in (Result.UNSIGNED, Result.FORGED):
        assert f"`{shown}`" in record
    for name in (manifest.ARTIFACT_DUMP, manifest.ARTIFACT_CONFIG, manifest.ARTIFACT_BLOCK_KEY,
                 manifest.history_artifact("events")):
        assert f'"name": "{name}"' in FORMAT
