"""prune through the CLI against the real stack: plan, dry run, real run, policy from env."""

from __future__ import annotations

import json
import uuid

import pytest
from conftest import run_cli

pytestmark = pytest.mark.integration


def test_prune_cli_dry_run_then_real(cli_env: dict[str, str]) -> None:
    env = dict(cli_env, PREFECT_DR_S3_PREFIX=f"p-{uuid.uuid4().hex[:10]}")
    ids = []
    for _ in range(3):
        proc = run_cli(["backup", "--kind", "config-only", "--json"], env)
        assert proc.returncode == 0, proc.stderr
        ids.append(json.loads(proc.stdout)["backup_id"])
    assert run_cli(["verify", ids[0]], env).returncode == 0  # the oldest is the verified one

    missing = run_cli(["prune"], env)
    assert missing.returncode == 2 and "no retention policy" in missing.stderr
    bad = run_cli(["prune"], dict(env, PREFECT_DR_RETENTION_CONFIG_ONLY="keep-dayly=3"))
    assert bad.returncode == 2 and "keep-daily" in bad.stderr and "Traceback" not in bad.stderr

    policy_env = dict(env, PREFECT_DR_RETENTION_CONFIG_ONLY="keep-last=1")
    dry = run_cli(["prune", "--dry-run", "--json"], policy_env)
    assert dry.returncode == 0, dry.stderr
    actions = {r["backup_id"]: r["action"] for r in json.loads(dry.stdout)["backups"]}
    # newest kept by keep-last, oldest kept as the newest verified, the middle one removed
    assert actions == {ids[2]: "keep", ids[1]: "remove", ids[0]: "keep"}
    listed = {b["backup_id"]
              for b in json.loads(run_cli(["list", "--json"], env).stdout)["backups"]}
    assert listed == set(ids)  # dry run deleted nothing

    real = run_cli(["prune", "--json"], policy_env)
    assert real.returncode == 0, real.stderr
    assert json.loads(real.stdout)["counts"]["removed"] == 1
    listed = json.loads(run_cli(["list", "--json"], env).stdout)["backups"]
    assert {b["backup_id"]: b["status"] for b in listed} == {ids[2]: "complete", ids[0]: "complete"}
