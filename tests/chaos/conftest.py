"""Fixtures of the chaos suite (tests/chaos): its own stack with recognisable secrets, a seeded
random generator per test, the figures every scenario reports.

Modes: by default (CI) each scenario runs a handful of trials; with PREFECT_DR_CHAOS_SOAK=1
(`scripts/chaos --soak`) the long counts. The seed is PREFECT_DR_CHAOS_SEED or random, printed
in the summary and in every failure, so a failing trial can be replayed. The figures are
written as JSON to PREFECT_DR_CHAOS_FIGURES when set.
"""

from __future__ import annotations

import base64
import os
import random
import secrets as pysecrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .figures import Figures
from .harness import (
    ROOT,
    ArgvSampler,
    ChaosStack,
    make_bulky,
    scrub_env,
    seed_from,
    start_stack,
)

SOAK = os.environ.get("PREFECT_DR_CHAOS_SOAK") == "1"
SEED = int(os.environ.get("PREFECT_DR_CHAOS_SEED") or random.SystemRandom().randrange(2**31))
FIGURES = Figures(SEED, SOAK)
BULKY = "prefect_bulky"  # the Prefect database + ~20 MB of incompressible ballast
CHANGED = "prefect_changed"  # the Prefect database + a small table: restores change something
RETRY_DEADLINE = 3  # PREFECT_DR_S3_RETRY_DEADLINE of every chaos run: outages fail fast


def count(ci: int, soak: int) -> int:
    """A trial count: ``ci`` in CI mode, ``soak`` in soak mode (PREFECT_DR_CHAOS_TRIALS_SCALE
    scales the soak counts, e.g. 0.2 to estimate the soak's duration)."""
    if not SOAK:
        return ci
    scale = float(os.environ.get("PREFECT_DR_CHAOS_TRIALS_SCALE") or 1)
    return max(1, round(soak * scale))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get("PREFECT_DR_CHAOS_FIGURES")
    if target and any(s.trials for s in FIGURES.scenarios.values()):
        FIGURES.write(Path(target), int(exitstatus))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if any(s.trials for s in FIGURES.scenarios.values()):
        terminalreporter.section("chaos figures")
        for line in FIGURES.lines():
            terminalreporter.write_line(line)


def _fernet_key_reading(text: str) -> str:
    """A valid Fernet key (urlsafe base64 of 32 bytes) that starts with ``text``."""
    body = (text + pysecrets.token_urlsafe(48)).replace("-", "x").replace("_", "y")[:42]
    body += "A"  # the 43rd character carries 2 padding bits: must be one whose low bits are 0
    key = body + "="
    assert len(base64.urlsafe_b64decode(key)) == 32
    return key


@dataclass
class Chaos:
    """Everything a chaos test needs."""

    stack: ChaosStack
    identity_file: Path
    recipient: str
    secrets: dict[str, str]  # name -> recognisable secret value
    tmp: Path
    sampler: ArgvSampler
    verify_key: str = ""  # the public half of the signing key beside identity_file
    metrics_files: list[Path] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)

    def env(self, name: str, **extra: str) -> dict[str, str]:
        """A clean CLI environment on the chaos stack, with a repository prefix of its own and
        a metrics file (both remembered for the secrets scan)."""
        prefix = f"chaos-{name}-{uuid.uuid4().hex[:8]}"
        metrics = self.tmp / f"{prefix}.prom"
        self.prefixes.append(prefix)
        self.metrics_files.append(metrics)
        x = self.stack.exports
        env = scrub_env(dict(os.environ))
        env.update({
            "PREFECT_DR_DATABASE_URL": self.stack.url(),
            "PGPASSWORD": x["PGPASSWORD"],
            "AWS_ACCESS_KEY_ID": x["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": x["AWS_SECRET_ACCESS_KEY"],
            "AWS_EC2_METADATA_DISABLED": "true",
            "PREFECT_DR_S3_BUCKET": x["PREFECT_DR_S3_BUCKET"],
            "PREFECT_DR_S3_ENDPOINT_URL": x["PREFECT_DR_S3_ENDPOINT_URL"],
            "PREFECT_DR_S3_REGION": x["PREFECT_DR_S3_REGION"],
            "PREFECT_DR_S3_PREFIX": prefix,
            "PREFECT_DR_S3_RETRY_DEADLINE": str(RETRY_DEADLINE),
            "PREFECT_DR_AGE_RECIPIENTS": self.recipient,
            "PREFECT_DR_AGE_IDENTITY_FILE": str(self.identity_file),
            # signed by default, as keygen and the quick start set it up (issue 27)
            "PREFECT_DR_SIGNING_KEY_FILE": str(self.identity_file.with_name(
                self.identity_file.stem + ".signing.pem")),
            "PREFECT_DR_VERIFY_KEY": self.verify_key,
            "PREFECT_DR_METRICS_FILE": str(metrics),
            "PREFECT_SERVER_ENCRYPTION_KEY": self.secrets["fernet_env_key"],
            "COLUMNS": "200",
        })
        env.update(extra)
        return env

    def url(self, db: str) -> str:
        return self.stack.url(db)


@pytest.fixture(scope="session")
def chaos(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Chaos]:
    """The chaos stack (started fresh in .stack-chaos, stopped at the end), seeded with a copy
    of the main stack's Prefect database and a bulky copy of it."""
    tag = pysecrets.token_hex(4)
    values = {
        "pg_password": f"ChaosPgUserPw{tag}{pysecrets.token_hex(6)}",
        "pg_admin_password": f"ChaosPgAdminPw{tag}{pysecrets.token_hex(6)}",
        "s3_access_key_id": f"CHAOSAKID{pysecrets.token_hex(5).upper()}",
        "s3_secret_access_key": f"ChaosS3SecretKey{tag}{pysecrets.token_hex(8)}",
    }
    directory = Path(os.environ.get("PREFECT_DR_CHAOS_STACK_DIR") or ROOT / ".stack-chaos")
    stack = start_stack(directory, values)
    sampler = ArgvSampler()
    try:
        seed_from(stack, stack_env)
        make_bulky(stack, BULKY)
        make_bulky(stack, CHANGED, megabytes=0)
        tmp = tmp_path_factory.mktemp("chaos")
        identity = tmp / "identity.txt"
        recipient, verify_key = subprocess.run(
            [sys.executable, "-m", "prefect_dr", "keygen", "-o", str(identity)],
            capture_output=True, text=True, check=True).stdout.split()
        with stack.connect() as conn:
            db_key = conn.execute("SELECT value->>'fernet_key' FROM configuration "
                                  "WHERE key = 'ENCRYPTION_KEY'").fetchone()[0]
        known = {
            "pg_password": values["pg_password"],
            "pg_admin_password": values["pg_admin_password"],
            "s3_secret_access_key": values["s3_secret_access_key"],
            "age_identity": next(ln for ln in identity.read_text().splitlines()
                                 if ln.startswith("AGE-SECRET-KEY-")),
            "fernet_env_key": _fernet_key_reading("ChaosFernetEnvKey"),
            "block_key_in_database": db_key,
            "block_secret_value": "s3cr3t-dr-seed-value",
            "default_signing_key": "".join(
                ln for ln in identity.with_name("identity.signing.pem").read_text().splitlines()
                if not ln.startswith("-----")),
        }
        sampler.start()
        yield Chaos(stack, identity, recipient, known, tmp, sampler, verify_key)
    finally:
        sampler.stop()
        if os.environ.get("PREFECT_DR_CHAOS_KEEP_STACK") != "1":
            stack.stack("down", check=False)
            import shutil

            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture()
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A generator seeded from the session seed and the test's name (replayable alone)."""
    return random.Random(f"{SEED}/{request.node.name}")


def replay(request: pytest.FixtureRequest) -> str:
    return f"replay: PREFECT_DR_CHAOS_SEED={SEED} pytest '{request.node.nodeid}'"
