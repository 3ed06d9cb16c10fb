"""README's quick start runs as written (issue 23): its shell block, after the lines that make
the venv, start the stack and seed it (what ``scripts/test`` has just done), in a shell of its
own with a fresh home. It once broke silently when ``keygen`` began printing two keys."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.integration
DONE_BY_THE_TEST_RUN = ("./scripts/bootstrap", "eval \"$(./scripts/stack up", "./scripts/seed")


def quick_start() -> list[str]:
    """The command lines of README's quick-start block (comments kept: bash ignores them)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start: five minutes", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README's quick start has no sh block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_quick_start_runs_as_written(stack_env: dict[str, str], tmp_path: Path) -> None:
    lines = quick_start()
    assert all(ln.startswith(DONE_BY_THE_TEST_RUN) for ln in lines[:3]), \
        "the quick start's first three lines changed: update this test"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_DR_", "AWS_", "PG", "PREFECT_", "VIRTUAL_ENV"))}
    env.update(stack_env, HOME=str(tmp_path), PREFECT_DR_S3_PREFIX=f"qs-{uuid.uuid4().hex[:8]}")
    for key in ("PREFECT_DR_AGE_RECIPIENTS", "PREFECT_DR_AGE_IDENTITY_FILE",
                "PREFECT_DR_SIGNING_KEY_FILE", "PREFECT_DR_VERIFY_KEY"):
        env.pop(key, None)  # the block makes its own keys
    script = "set -euo pipefail\n" + "\n".join(lines[3:]) + "\n"
    proc = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "dr.key").exists() and (tmp_path / "dr.signing.pem").exists()
    assert "passed" in proc.stdout, proc.stdout[-3000:]
