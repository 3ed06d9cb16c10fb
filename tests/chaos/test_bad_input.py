"""Bad input: malformed config files and environment values, unknown flags, wrong or missing
keys, backup ids that do not exist, a bucket in another region, a database that is not a
Prefect database.

Every case must end with its documented exit code (docs/exit-codes.md), exactly one `error:`
line on stderr (other stderr lines are JSON log records), no traceback, no secret echoed, and
nothing written: no object in the repository, no new database. The fixed cases run in-process
(cli.main, fast: in soak mode all of them, in CI a random half, a different one each run by its
seed) and as real processes (soak: all of them; CI: a random sample). A
fuzzer mutates a valid config file and environment values at random (`config show`): exit 0 with
JSON, or exit 2 with one error line; the password inside the config never shows.
(The manifest and export parsers are fuzzed by tests/test_fuzz.py.)
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest

from .conftest import FIGURES, SEED, SOAK, Chaos, count
from .harness import RECORDER, Run, cli, databases, error_problem, keys, need, prefix_root
from .netfault import RegionEndpoint

pytestmark = pytest.mark.integration

FUZZ = count(40, 400)
PROCESS_SAMPLE = 6  # fixed cases also run as real processes in CI (all of them in soak)
IN_PROCESS_SHARE = 0.5  # of the fixed cases run in process in CI (all of them in soak)
SCENARIO = FIGURES.scenario(
    "bad-input", group="Bad input", title="malformed config, env, flags, keys, ids, region, "
    "database", invariant="documented exit code, one error line, no traceback, no secret, "
    "nothing written")
FUZZED = FIGURES.scenario(
    "bad-input-fuzz", group="Bad input", title="fuzzed config files and environment values",
    invariant="exit 0 with JSON or exit 2 with one error line; no traceback; the password in "
              "the file never shows")
CONFIG_PASSWORD = "ChaosTomlPw7c1e9a"
VALID_TOML = f"""\
[database]
url = "postgresql://prefect:{CONFIG_PASSWORD}@127.0.0.1:5432/prefect"

[s3]
bucket = "chaos-bucket"
prefix = "chaos/fuzz"
endpoint_url = "http://127.0.0.1:9"
region = "us-east-1"

[age]
recipients = ["age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq"]

[backup]
zstd_level = 3
lock_stale_hours = 12

[schedule]
backup_cron = "0 */6 * * *"
grace = "1h"
"""


@dataclass
class Case:
    """One bad input: the command, how the environment differs, what must happen."""

    name: str
    args: list[str]
    code: int
    needle: str | None = None
    env: dict[str, str | None] = field(default_factory=dict)  # None: remove
    config: str | bytes | None = None  # written to a file passed with --config
    repo: str = "empty"  # "empty": no backup; "one": one full backup; "config": one
    # config-only backup (all of the chaos stack's database, which holds run history)
    json_error: bool = False  # also expect the JSON error document on stdout
    secrets: tuple[str, ...] = ()  # values that must not be echoed


WRONG_PW = "ChaosWrongPgPw3f9d"
WRONG_AWS = "ChaosWrongAwsSecret5e2b"
FLAG_PW = "ChaosFlagPw8a4c"
NO_ID = "20200101T000000Z-abcdef"

CASES = [
    # config files
    Case("toml syntax error", ["backup"], 2, "not valid TOML", config="[s3\nbucket = 'x'\n"),
    Case("unknown setting", ["backup"], 2, "unknown setting 's3.buckett'",
         config="[s3]\nbuckett = 'x'\n"),
    Case("wrong type", ["backup"], 2, "expected a whole number",
         config="[backup]\nzstd_level = 'high'\n"),
    Case("list for a string", ["backup"], 2, "expected a string", config="[s3]\nbucket = ['a']\n"),
    Case("top-level value", ["backup"], 2, "must be a [section]", config="bucket = 'x'\n"),
    Case("binary garbage", ["backup"], 2, "not valid TOML",
         config=bytes(range(256)) * 4),
    Case("missing file", ["--config", "/nonexistent/prefect-dr.toml", "backup"], 2,
         "does not exist"),
    Case("directory as file", ["--config", "/", "backup"], 2, "cannot read config file"),
    Case("bad bucket in file", ["backup"], 2, "is not a valid bucket name",
         config="[s3]\nbucket = 'Not_A_Bucket'\n", env={"PREFECT_DR_S3_BUCKET": None}),
    Case("every problem at once", ["backup"], 2, "3 problems",
         config="[s3]\nbucket = 'Bad_Bucket'\nnope = 1\n[backup]\nzstd_level = 99\n",
         env={"PREFECT_DR_S3_BUCKET": None}),
    Case("file below the environment", ["backup"], 2, "PREFECT_DR_ZSTD_LEVEL",
         config="[backup]\nzstd_level = 5\n", env={"PREFECT_DR_ZSTD_LEVEL": "0"}),
    Case("password in file, error elsewhere", ["backup"], 2, "between 1 and 19",
         config=f"[database]\nurl = 'postgresql://u:{CONFIG_PASSWORD}@h/db'\n"
                "[backup]\nzstd_level = 0\n", secrets=(CONFIG_PASSWORD,)),
    # environment values
    Case("zstd not a number", ["backup"], 2, "expected a whole number",
         env={"PREFECT_DR_ZSTD_LEVEL": "abc"}),
    Case("zstd out of range", ["backup"], 2, "between 1 and 19",
         env={"PREFECT_DR_ZSTD_LEVEL": "99"}),
    Case("negative retry deadline", ["backup"], 2, "must not be negative",
         env={"PREFECT_DR_S3_RETRY_DEADLINE": "-1"}),
    Case("not a postgres url", ["backup"], 2, "must start with postgresql://",
         env={"PREFECT_DR_DATABASE_URL": "mysql://root@db/prefect"}),
    Case("endpoint without scheme", ["list"], 2, "http(s)://",
         env={"PREFECT_DR_S3_ENDPOINT_URL": "127.0.0.1:9000"}),
    Case("absolute prefix", ["list"], 2, "PREFECT_DR_S3_PREFIX",
         env={"PREFECT_DR_S3_PREFIX": "/abs/"}),
    Case("malformed recipient", ["backup"], 2, "not an age recipient",
         env={"PREFECT_DR_AGE_RECIPIENTS": "age1notakey"}),
    Case("lock stale hours zero", ["backup"], 2, "at least 1",
         env={"PREFECT_DR_LOCK_STALE_HOURS": "0"}),
    Case("bad cron", ["backup"], 2, "not a valid cron expression",
         env={"PREFECT_DR_BACKUP_CRON": "61 * * * *"}),
    Case("bad object lock mode", ["backup"], 2, "GOVERNANCE or COMPLIANCE",
         env={"PREFECT_DR_S3_OBJECT_LOCK_MODE": "FOREVER", "PREFECT_DR_S3_OBJECT_LOCK_DAYS": "1"}),
    Case("bad sse", ["backup"], 2, "AES256 or aws:kms", env={"PREFECT_DR_S3_SSE": "rot13"}),
    Case("bad retention policy", ["prune"], 2, "unknown rule 'keep-lots'",
         env={"PREFECT_DR_RETENTION_FULL": "keep-lots=3"}),
    Case("missing database url", ["backup"], 2, "PREFECT_DR_DATABASE_URL is not set",
         env={"PREFECT_DR_DATABASE_URL": None}),
    Case("missing bucket", ["list"], 2, "no repository: set PREFECT_DR_REPOSITORY",
         env={"PREFECT_DR_S3_BUCKET": None}),
    Case("repository with credentials", ["list"], 2, "must not carry credentials",
         env={"PREFECT_DR_REPOSITORY": "s3://AKIAEXAMPLE:hunter2@prefect-dr-test/p"},
         secrets=("hunter2",)),
    Case("unknown repository scheme", ["backup"], 2, "must start with s3://",
         env={"PREFECT_DR_REPOSITORY": "nfs://server/share"}),
    Case("copy to a bad URL", ["copy", "--latest", "--to", "azure://X/p"], 2,
         "not a valid container name"),
    # flags
    Case("label without value", ["backup", "--label", "novalue"], 2, "is not KEY=VALUE"),
    Case("bad grace", ["prune", "--keep-last", "1", "--grace", "5parsecs"], 2, None),
    Case("negative keep-last", ["prune", "--keep-last", "-3"], 2, "keep-last"),
    Case("bad since", ["verify", "--since", "yesterday"], 2, "--since"),
    Case("two selectors", ["verify", "--latest", "--all"], 2, "give one of"),
    Case("restore without id", ["restore", "--yes"], 2, "give a backup id or --latest"),
    Case("password on the command line", ["--database-url",
                                          f"postgresql://prefect:{FLAG_PW}@h/db", "list"], 2,
         "must not carry a password", secrets=(FLAG_PW,)),
    Case("scratch url with password", ["verify", "--latest", "--scratch-url",
                                       f"postgresql://prefect:{FLAG_PW}@h/db"], 2,
         "must not carry a password", secrets=(FLAG_PW,)),
    Case("restore without --yes and no terminal", ["restore", "--latest"], 2, "pass --yes",
         repo="one"),
    # keys
    Case("no identity configured", ["verify", "--latest"], 2,
         "PREFECT_DR_AGE_IDENTITY_FILE is not set", env={"PREFECT_DR_AGE_IDENTITY_FILE": None},
         repo="one"),
    Case("identity file missing", ["verify", "--latest"], 12, "does not exist",
         env={"PREFECT_DR_AGE_IDENTITY_FILE": "/nonexistent/identity.txt"}, repo="one"),
    Case("no recipient", ["backup"], 2, "no age recipient",
         env={"PREFECT_DR_AGE_RECIPIENTS": None}),
    Case("recipients file missing", ["backup"], 2, "does not exist",
         env={"PREFECT_DR_AGE_RECIPIENTS": None,
              "PREFECT_DR_AGE_RECIPIENTS_FILE": "/nonexistent/recipients.txt"}),
    Case("verify key garbage", ["list"], 12, "not a base64 Ed25519 public key",
         env={"PREFECT_DR_VERIFY_KEY": "garbage"}),
    Case("signing key garbage", ["backup"], 12, "is not a PEM Ed25519 private key",
         env={"PREFECT_DR_SIGNING_KEY_FILE": "@garbage"}),
    Case("no signing key", ["backup"], 2, "no signing key",
         env={"PREFECT_DR_SIGNING_KEY_FILE": None}),
    Case("no verify key", ["restore", "--latest", "--yes"], 13, "no verify key",
         env={"PREFECT_DR_VERIFY_KEY": None}, repo="one"),
    Case("wrong s3 secret", ["backup"], 1, "rejected the credentials",
         env={"AWS_SECRET_ACCESS_KEY": WRONG_AWS}, secrets=(WRONG_AWS,)),
    Case("wrong database password", ["backup"], 1, "cannot connect",
         env={"PGPASSWORD": WRONG_PW}, secrets=(WRONG_PW,)),
    # backup ids
    Case("show unknown id", ["show", NO_ID], 10, "no backup"),
    Case("verify unknown id", ["verify", NO_ID], 10, "no backup"),
    Case("restore unknown id", ["restore", NO_ID, "--yes"], 10, "no backup"),
    Case("malformed id", ["show", "../../etc/passwd"], 10, "is not a backup id"),
    Case("latest of an empty repository", ["restore", "--latest", "--yes"], 10,
         "no complete full backup"),
    Case("verify all of an empty repository", ["verify", "--all"], 10, "no complete backup"),
    Case("json error document", ["--json", "show", NO_ID], 10, "no backup", json_error=True),
    # bucket and database
    Case("bucket does not exist", ["list"], 10, "does not exist",
         env={"PREFECT_DR_S3_BUCKET": "no-such-bucket-chaos"}),
    Case("not a Prefect database", ["backup"], 1, "is not a Prefect database",
         env={"PREFECT_DR_DATABASE_URL": "@notprefect"}),
    Case("database does not exist", ["backup"], 1, "does not exist",
         env={"PREFECT_DR_DATABASE_URL": "@nosuchdb"}),
    # fixed bugs the suite found: usage errors, malformed values, records of key errors
    Case("unknown flag", ["backup", "--no-such-flag"], 2, "--no-such-flag"),
    Case("invalid choice", ["backup", "--kind", "weird"], 2, "weird"),
    Case("unknown flag, --json", ["--json", "list", "--no-such-flag"], 2, "--no-such-flag",
         json_error=True),
    Case("non-UTF-8 prefix", ["backup"], 2, "PREFECT_DR_S3_PREFIX",
         env={"PREFECT_DR_S3_PREFIX": "chaos-\udcff\udcfe"}),
    Case("unbalanced bracket in endpoint", ["list"], 2, "PREFECT_DR_S3_ENDPOINT_URL",
         env={"PREFECT_DR_S3_ENDPOINT_URL": "http://[127.0.0.1:9000"}),
    Case("infinity for a whole number", ["backup"], 2, "zstd_level",
         config="[backup]\nzstd_level = inf\n"),
    Case("unbalanced bracket in database url", ["backup"], 2, "PREFECT_DR_DATABASE_URL",
         env={"PREFECT_DR_DATABASE_URL": "postgresql://prefect@[::1/prefect"}),
    Case("malformed identity", ["verify", "--latest"], 12, "not an age secret key",
         env={"PREFECT_DR_AGE_IDENTITY_FILE": "@garbage-identity"}, repo="one"),
    Case("wrong identity", ["verify", "--latest"], 12, "none of the configured identities",
         env={"PREFECT_DR_AGE_IDENTITY_FILE": "@other-identity"}, repo="one"),
    # operator safety (issue 12): selectors, history loss, checks before heavy work
    Case("id with --latest", ["show", NO_ID, "--latest"], 2, "not both"),
    Case("restore id with --latest", ["restore", NO_ID, "--latest", "--yes"], 2, "not both"),
    Case("restore-config id with --latest", ["restore-config", NO_ID, "--latest"], 2,
         "not both", env={"PREFECT_API_URL": "http://127.0.0.1:9/api"}),
    Case("latest full of a config-only repository", ["restore", "--latest", "--yes"], 10,
         "no complete full backup", repo="config"),
    Case("config-only over run history", ["restore", "--latest", "--kind", "config-only",
                                          "--yes"], 2, "--allow-history-loss", repo="config"),
    Case("config-only over run history, dry run", ["restore", "--latest", "--kind",
                                                   "config-only", "--dry-run"], 2,
         "run history would be lost", repo="config"),
    Case("restore with the wrong identity", ["restore", "--latest", "--yes"], 12,
         "matches none of backup", env={"PREFECT_DR_AGE_IDENTITY_FILE": "@other-identity"},
         repo="one"),
    Case("restore with a missing identity", ["restore", "--latest", "--dry-run"], 12,
         "does not exist", env={"PREFECT_DR_AGE_IDENTITY_FILE": "/nonexistent/id.txt"},
         repo="one"),
    Case("block-key without a file", ["block-key", "--latest"], 2, "-o FILE", repo="one"),
    Case("block-key to stdout with --json", ["block-key", "--latest", "-o", "-", "--json"], 2,
         "cannot go with --json", repo="one"),
    Case("block-key with the wrong identity", ["block-key", "--latest", "-o",
                                               "/nonexistent/key"], 12, None,
         env={"PREFECT_DR_AGE_IDENTITY_FILE": "@other-identity"}, repo="one"),
    Case("malformed boolean", ["backup"], 2, "expected true or false",
         env={"PREFECT_DR_ALLOW_UNDECRYPTABLE_BLOCKS": "perhaps"}),
]


@dataclass
class World:
    chaos: Chaos
    envs: dict[str, dict[str, str]]  # repo kind -> env
    files: dict[str, str]  # @name -> path or URL


@pytest.fixture(scope="module")
def world(chaos: Chaos, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("bad")
    empty, one, config = chaos.env("bad-empty"), chaos.env("bad-one"), chaos.env("bad-config")
    for env in (empty, one, config):
        env.pop("PREFECT_DR_METRICS_FILE")  # nothing at all may be written
    made = cli(["backup", "--json"], one)
    need(made.returncode == 0, made.describe())
    made = cli(["backup", "--kind", "config-only", "--json"], config)
    need(made.returncode == 0, made.describe())
    garbage = tmp / "garbage.pem"
    garbage.write_text("garbage\n")
    bad_identity = tmp / "garbage-identity.txt"
    bad_identity.write_text("AGE-SECRET-KEY-1GARBAGE\n")
    other = tmp / "other-identity.txt"
    subprocess.run([sys.executable, "-m", "prefect_dr", "keygen", "-o", str(other)],
                   check=True, capture_output=True)
    with chaos.stack.connect("postgres") as conn:
        conn.execute("DROP DATABASE IF EXISTS notprefect")
        conn.execute("CREATE DATABASE notprefect")
    with chaos.stack.connect("notprefect") as conn:
        conn.execute("CREATE TABLE orders (id int)")
    files = {"@garbage": str(garbage), "@garbage-identity": str(bad_identity),
             "@other-identity": str(other), "@notprefect": chaos.url("notprefect"),
             "@nosuchdb": chaos.url("nosuchdb")}
    yield World(chaos, {"empty": empty, "one": one, "config": config}, files)


def _env_for(world: World, case: Case, tmp: Path) -> tuple[dict[str, str], list[str]]:
    env = dict(world.envs[case.repo])
    for name, value in case.env.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = world.files.get(value, value)
    args = list(case.args)
    if case.config is not None:
        path = tmp / "config.toml"
        (path.write_bytes if isinstance(case.config, bytes) else path.write_text)(case.config)
        args = ["--config", str(path), *args]
    return env, args


def _state(world: World) -> tuple[dict[str, dict[str, int]], set[str]]:
    stack = world.chaos.stack
    return ({kind: keys(stack, prefix_root(env)) for kind, env in world.envs.items()},
            set(databases(stack)))


def run_in_process(args: list[str], env: dict[str, str],
                   capsys: pytest.CaptureFixture[str]) -> Run:
    """cli.main(ARGS) in this process, with ``env`` as the whole environment."""
    from prefect_dr import cli as cli_mod

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    capsys.readouterr()
    start = time.monotonic()
    try:
        with mock.patch.dict(os.environ, env, clear=True):
            code = cli_mod.main(args)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    out, err = capsys.readouterr()
    RECORDER.add(f"stdout of {args[:2]} (in process)", out)
    RECORDER.add(f"stderr of {args[:2]} (in process)", err)
    return Run(args, code, out, err, time.monotonic() - start)


def _judge(t: object, world: World, case: Case, run: Run, before: tuple) -> None:
    check = t.check  # type: ignore[attr-defined]
    problem = error_problem(run, case.code, case.needle)
    check(problem is None, f"{case.name}: {problem}")
    if case.json_error:
        try:
            doc = json.loads(run.stdout)
        except ValueError:
            doc = None
        check(isinstance(doc, dict) and doc.get("ok") is False
              and doc.get("exit_code") == case.code,
              f"{case.name}: no JSON error document on stdout: {run.stdout!r}")
    text = run.stdout + run.stderr
    for name, value in [*world.chaos.secrets.items(), *((s, s) for s in case.secrets)]:
        check(value not in text, f"{case.name}: secret {name} echoed")
    check(_state(world) == before, f"{case.name}: something was written")


def _cases(rng: random.Random) -> list[tuple[Case, bool]]:
    """Soak: every case in process and as a real process. CI: a random share in process and a
    random sample as real processes."""
    every = range(len(CASES))
    inside = set(every) if SOAK else set(rng.sample(every, round(len(CASES) *
                                                                IN_PROCESS_SHARE)))
    chosen = set(every) if SOAK else set(rng.sample(every, PROCESS_SAMPLE))
    return ([(CASES[i], False) for i in sorted(inside)]
            + [(CASES[i], True) for i in sorted(chosen)])


@pytest.mark.timeout(1200)
def test_bad_input_fails_cleanly_and_writes_nothing(world: World, rng: random.Random,
                                                   capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    for i, (case, process) in enumerate(_cases(rng)):
        before = _state(world)
        env, args = _env_for(world, case, tmp_path)
        with SCENARIO.trial(seed=SEED, trial=i, case=case.name, process=process) as t:
            t.fault()
            run = cli(args, env, timeout=120) if process else run_in_process(args, env, capsys)
            _judge(t, world, case, run, before)
            t.outcome(f"exit {run.returncode}")


REGION = FIGURES.scenario(
    "bucket-region", group="Bad input", title="bucket in another region than configured",
    invariant="the S3 redirect is followed (as AWS and MinIO answer it): the backup is "
              "complete, verifies and lies in the bucket; or one clean error line")


@pytest.mark.parametrize("style", ["aws", "minio"])
def test_bucket_in_another_region(world: World, style: str) -> None:
    chaos = world.chaos
    endpoint = RegionEndpoint(chaos.stack.s3_endpoint, style=style)
    env = chaos.env(f"region-{style}", PREFECT_DR_S3_ENDPOINT_URL=endpoint.url,
                    PREFECT_DR_S3_REGION="us-east-1")
    try:
        with REGION.trial(seed=SEED, style=style) as t:
            t.fault()
            made = cli(["backup", "--json"], env)
            t.check("us-east-1" in endpoint.seen and "eu-west-1" in endpoint.seen,
                    f"the wrong region was never refused: {endpoint.seen}")
            if made.returncode != 0:
                t.check(error_problem(made, 1) is None, str(error_problem(made, 1)))
                t.check(not keys(chaos.stack, prefix_root(env)), "a failed run wrote")
                t.outcome(f"{style}: clean error")
                return
            checked = cli(["verify", made.json["backup_id"], "--json"], env)
            t.check(checked.returncode == 0, checked.describe(), lost=True)
            t.outcome(f"{style}: redirect followed")
    finally:
        endpoint.close()


# -- fuzzing -------------------------------------------------------------------------------------
_ALPHABET = (" \t\n\r=[]{}\"'#.,:-_0123456789abcdefghijklmnopqrstuvwxyzABCXYZ\\/@%$"
             "\u00e9\u2603\U0001f600\x00\x07\x7f")
_SETTINGS = ["PREFECT_DR_DATABASE_URL", "PREFECT_DR_S3_BUCKET", "PREFECT_DR_S3_PREFIX",
             "PREFECT_DR_S3_ENDPOINT_URL", "PREFECT_DR_ZSTD_LEVEL", "PREFECT_DR_AGE_RECIPIENTS",
             "PREFECT_DR_LOCK_STALE_HOURS", "PREFECT_DR_S3_RETRY_DEADLINE",
             "PREFECT_DR_BACKUP_CRON", "PREFECT_DR_STATUS_GRACE", "PREFECT_DR_S3_SSE",
             "PREFECT_DR_S3_OBJECT_LOCK_DAYS", "PREFECT_DR_RETENTION_FULL",
             "PREFECT_DR_S3_REGION", "PREFECT_DR_VERIFY_KEY"]


def _junk(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(n))


def _mutate(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randrange(len(text) + 1)
        lines = text.splitlines(keepends=True)
        if op == 0:  # delete a span
            text = text[:pos] + text[pos + rng.randint(1, 12):]
        elif op == 1:  # insert junk
            text = text[:pos] + _junk(rng, rng.randint(1, 8)) + text[pos:]
        elif op == 2 and lines:  # duplicate a line (duplicate keys, tables)
            i = rng.randrange(len(lines))
            lines.insert(rng.randrange(len(lines) + 1), lines[i])
            text = "".join(lines)
        elif op == 3 and len(lines) > 1:  # swap two lines
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            text = "".join(lines)
        elif op == 4:  # a value of another type
            value = rng.choice(["42", "-1", "true", "[1, 'a']", "{ x = 1 }", "1979-05-27",
                                "'''\nmulti\n'''", "inf", "''", f"'{_junk(rng, 5)}'"])
            lines = [ln for ln in lines]
            idx = [k for k, ln in enumerate(lines) if "=" in ln]
            if idx:
                k = rng.choice(idx)
                lines[k] = lines[k].split("=", 1)[0] + "= " + value + "\n"
            text = "".join(lines)
        elif op == 5:  # an unknown key or section
            text += rng.choice(["\n[nope]\nx = 1\n", "\n[s3]\nbukket = 'b'\n", "\nstray = 1\n"])
        else:  # truncate
            text = text[:pos]
    return text


def _fuzz_env(rng: random.Random) -> dict[str, str]:
    out = {}
    for name in rng.sample(_SETTINGS, rng.randint(0, 3)):
        out[name] = rng.choice([  # (no NUL: an environment cannot hold one)
            "", " ", _junk(rng, rng.randint(1, 30)), str(rng.randint(-10**6, 10**6)),
            "x" * rng.randint(100, 5000), "postgresql://u:" + CONFIG_PASSWORD + "@h/db",
            "http://" + _junk(rng, 5), "age1" + _junk(rng, 10)]).replace("\x00", "")
    return out


@pytest.mark.timeout(1200)
def test_fuzzed_config_and_environment(world: World, rng: random.Random,
                                       capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    base = {k: v for k, v in world.envs["empty"].items() if not k.startswith("PREFECT_DR_")}
    path = tmp_path / "fuzz.toml"
    for i in range(FUZZ):
        text = _mutate(rng, VALID_TOML) if rng.random() < 0.8 else VALID_TOML
        extra = _fuzz_env(rng)
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        with FUZZED.trial(seed=SEED, trial=i, env=sorted(extra)) as t:
            t.fault()
            run = run_in_process(["--config", str(path), "config", "show", "--json"],
                                 {**base, **extra}, capsys)
            t.check(run.returncode in (0, 2), f"fuzz {i}: {run.describe()}\n--- config:\n{text}")
            if run.returncode == 0:
                t.check(isinstance(json.loads(run.stdout), dict), f"fuzz {i}: not JSON")
            else:
                problem = error_problem(run, 2)
                t.check(problem is None, f"fuzz {i}: {problem}\n--- config:\n{text}")
            t.check(CONFIG_PASSWORD not in run.stdout + run.stderr,
                    f"fuzz {i}: the password in the config file shows\n{run.describe()}")
            t.outcome(f"exit {run.returncode}")
