"""Secrets: the whole chaos suite runs with recognisable secret values (the stack's database
and S3 passwords, the age identity, a Prefect block key in PREFECT_SERVER_ENCRYPTION_KEY, the
database's own block key, a block's secret value, the signing key). This test runs last: a backup
with the password inside PREFECT_DR_DATABASE_URL while `ps` is sampled, a verify and a restore;
then it scans everything the session produced: every CLI stdout and stderr (the logs are JSON
lines on stderr), every plaintext object the chaos repositories hold (manifests, status and
verification records, locks), the metrics files, and the command line of every process seen
during the session. No secret may appear anywhere; every encrypted object must be age
ciphertext.
"""

from __future__ import annotations

import subprocess
import time
from urllib.parse import urlsplit

import pytest

from .conftest import BULKY, FIGURES, SEED, Chaos
from .harness import RECORDER, Proc, cli, keys
from .netfault import FaultProxy

pytestmark = pytest.mark.integration

SCENARIO = FIGURES.scenario(
    "secrets", group="Secrets", title="recognisable secrets in every output of the suite",
    invariant="no secret in stdout, stderr/logs, manifests, status, verification records, "
              "locks, metrics or process arguments; artifacts are age ciphertext")
AGE_HEADER = b"age-encryption.org/v1\n"


@pytest.mark.timeout(600)
def test_no_secret_anywhere(chaos: Chaos) -> None:
    stack = chaos.stack
    pw = stack.password
    parts = urlsplit(chaos.url(BULKY))
    with_pw = parts._replace(netloc=f"prefect:{pw}@{parts.hostname}:{parts.port}").geturl()
    env = chaos.env("secrets", PREFECT_DR_DATABASE_URL=with_pw)
    env.pop("PGPASSWORD")  # the password comes from the URL only
    proxy = FaultProxy(stack.s3_endpoint, rate=4_000_000)
    ps_seen: set[str] = set()
    with SCENARIO.trial(seed=SEED, step="ps during a backup") as t:
        try:
            proc = Proc(["backup", "--json"], dict(env, PREFECT_DR_S3_ENDPOINT_URL=proxy.url))
            while proc.popen.poll() is None:
                out = subprocess.run(["ps", "-eww", "-o", "args="], capture_output=True, text=True,
                                     check=False).stdout
                ps_seen.update(out.splitlines())
                chaos.sampler.sample()
                time.sleep(0.05)
            run = proc.wait()
        finally:
            proxy.close()
        t.check(run.returncode == 0, run.describe())
        dumps = [ln for ln in ps_seen if "pg_dump" in ln and "--snapshot" in ln
                 and f":{stack.pg_port}/{BULKY}" in ln]
        t.check(bool(dumps), "ps never showed the backup's pg_dump: sampling proves nothing")
        t.outcome(f"{len(ps_seen)} process lines sampled during the backup")
        for step in (["verify", "--latest", "--json"], ["list", "--json"],
                     ["show", "--latest", "--json"], ["config", "show", "--json"],
                     ["restore", "--latest", "--dry-run", "--json"]):
            done = cli(step, env)
            t.check(done.returncode == 0, done.describe())

    with SCENARIO.trial(seed=SEED, step="scan") as t:
        secrets = {**chaos.secrets, "database url with password": with_pw}
        sources: list[tuple[str, bytes]] = []
        sources += [(what, text.encode()) for what, text in RECORDER.outputs]
        sources += [(f"process arguments: {line[:80]}", line.encode())
                    for line in ps_seen | chaos.sampler.seen]
        sources += [(f"metrics file {p.name}", p.read_bytes())
                    for p in chaos.metrics_files if p.exists()]
        s3 = stack.s3()
        encrypted = plaintext = 0
        for prefix in sorted(set(chaos.prefixes)):
            for key in keys(stack, f"{prefix}/"):
                if key.endswith(".age"):
                    head = s3.get_object(Bucket=stack.bucket, Key=key,
                                         Range="bytes=0-63")["Body"].read()
                    t.check(head.startswith(AGE_HEADER), f"{key} is not age ciphertext")
                    encrypted += 1
                else:
                    sources.append((f"object {key}",
                                    s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()))
                    plaintext += 1
        t.check(plaintext > 0 and len(RECORDER.outputs) > 0, "nothing to scan")
        for name, value in secrets.items():
            needle = value.encode()
            hits = [what for what, data in sources if needle in data]
            t.check(not hits, f"secret {name} found in {hits[:5]}")
        hits = [what for what, data in sources if b"AGE-SECRET-KEY-1" in data]
        t.check(not hits, f"an age secret key found in {hits[:5]}")
        t.outcome(f"scanned {len(RECORDER.outputs)} outputs, {plaintext} plaintext objects, "
                  f"{encrypted} encrypted objects, {len(ps_seen | chaos.sampler.seen)} process "
                  f"command lines ({chaos.sampler.samples} samples), "
                  f"{sum(p.exists() for p in chaos.metrics_files)} metrics files; "
                  f"{len(secrets)} secrets")
