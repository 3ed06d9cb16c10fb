"""Helpers of the chaos suite: its own stack (PostgreSQL + SeaweedFS with recognisable secrets),
a CLI runner that records every output (for the secrets scan), S3 and database probes, and a
process-argument sampler (what `ps` shows while the suite runs)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest

from prefect_dr.pg import scratch

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "scripts" / "stack"
FAILPOINT = Path(__file__).resolve().parent / "failpoint.py"
MAX_OUTPUT = 200_000  # per stream kept for the secrets scan


# -- CLI -----------------------------------------------------------------------------------------
@dataclass
class Run:
    """One finished CLI run."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def json(self) -> Any:
        """stdout parsed as JSON."""
        return json.loads(self.stdout)

    def error_lines(self) -> list[str]:
        """The `error: ...` lines of stderr."""
        return [ln for ln in self.stderr.splitlines() if ln.startswith("error:")]

    def stray_lines(self) -> list[str]:
        """stderr lines that are neither an `error:` line nor a JSON log record."""
        out = []
        for line in self.stderr.splitlines():
            if not line.strip() or line.startswith("error:"):
                continue
            try:
                json.loads(line)
            except ValueError:
                out.append(line)
        return out

    def describe(self) -> str:
        """For assertion messages."""
        return (f"prefect-dr {' '.join(self.args)} -> exit {self.returncode} in "
                f"{self.seconds:.1f}s\nstdout: {self.stdout[-2000:]}\nstderr: "
                f"{self.stderr[-3000:]}")


class Recorder:
    """Keeps every CLI output of the session (the secrets test scans them all)."""

    def __init__(self) -> None:
        self.outputs: list[tuple[str, str]] = []  # (what, text)
        self._lock = threading.Lock()

    def add(self, what: str, text: str) -> None:
        if text:
            with self._lock:
                self.outputs.append((what, text[-MAX_OUTPUT:]))


RECORDER = Recorder()


def cli(args: list[str], env: dict[str, str], *, timeout: float = 300,
        stdin: str | None = None) -> Run:
    """Run `python -m prefect_dr ARGS` to completion."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "prefect_dr", *args], env=env, text=True,
                          capture_output=True, timeout=timeout, input=stdin, check=False)
    run = Run(args, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)
    RECORDER.add(f"stdout of {args[:2]}", proc.stdout)
    RECORDER.add(f"stderr of {args[:2]}", proc.stderr)
    return run


class Proc:
    """A CLI run in the background (its own session, so the whole group can be killed)."""

    def __init__(self, args: list[str], env: dict[str, str], *,
                 failpoint: str | None = None, mark: Path | None = None) -> None:
        self.args = args
        env = dict(env)
        if failpoint:
            env["PREFECT_DR_CHAOS_FAILPOINT"] = failpoint
            if mark is not None:
                env["PREFECT_DR_CHAOS_FAILPOINT_MARK"] = str(mark)
            argv = [sys.executable, str(FAILPOINT), *args]
        else:
            argv = [sys.executable, "-m", "prefect_dr", *args]
        self.started = time.monotonic()
        self.popen = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True,
                                      start_new_session=True)
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers = [threading.Thread(target=self._drain, args=(s, b), daemon=True)
                         for s, b in ((self.popen.stdout, self._out),
                                      (self.popen.stderr, self._err))]
        for t in self._readers:
            t.start()

    @staticmethod
    def _drain(stream: Any, sink: list[str]) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in stream:
                sink.append(line)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill(self, group: bool = False) -> None:
        """SIGKILL the process (``group``: and every child, e.g. pg_dump, at once)."""
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.popen.pid, signal.SIGKILL)
            else:
                os.kill(self.popen.pid, signal.SIGKILL)

    def wait(self, timeout: float = 300) -> Run:
        """Wait for the end; kill the group and raise TimeoutError after ``timeout``."""
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(group=True)
            self.popen.wait()
            for t in self._readers:
                t.join(5)
            raise TimeoutError(f"prefect-dr {' '.join(self.args)} still running after "
                               f"{timeout:.0f}s; stderr: {''.join(self._err)[-2000:]}") from None
        for t in self._readers:
            t.join(10)
        run = Run(self.args, self.popen.returncode, "".join(self._out), "".join(self._err),
                  time.monotonic() - self.started)
        RECORDER.add(f"stdout of {self.args[:2]}", run.stdout)
        RECORDER.add(f"stderr of {self.args[:2]}", run.stderr)
        return run


def need(ok: bool, message: str) -> None:
    """A precondition (set-up) of a test: on failure the test errors as a broken test, never as
    the expected failure of an xfail test (those expect AssertionError only)."""
    if not ok:
        pytest.fail(message, pytrace=False)


def error_problem(run: Run, code: int, needle: str | None = None) -> str | None:
    """Why ``run`` is not a clean failure with exit ``code`` (None when it is): exactly one
    `error:` line (containing ``needle``), every other stderr line a JSON log record, no
    traceback."""
    if run.returncode != code:
        return f"expected exit {code}: {run.describe()}"
    errors = run.error_lines()
    if len(errors) != 1:
        return f"expected one error line: {run.describe()}"
    if run.stray_lines():
        return f"stray stderr lines {run.stray_lines()[:3]}: {run.describe()}"
    if "Traceback" in run.stdout + run.stderr:
        return f"a traceback: {run.describe()}"
    if needle is not None and needle not in errors[0]:
        return f"{needle!r} not in {errors[0]!r}"
    return None


# -- the chaos stack -------------------------------------------------------------------------------
def parse_exports(text: str) -> dict[str, str]:
    import shlex

    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("export "):
            (assignment,) = shlex.split(line[len("export "):])
            name, _, value = assignment.partition("=")
            env[name] = value
    return env


@dataclass
class ChaosStack:
    """The chaos suite's own PostgreSQL and S3 (scripts/stack in .stack-chaos)."""

    dir: Path
    exports: dict[str, str]
    secrets: dict[str, str] = field(default_factory=dict)

    def stack(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, PREFECT_DR_STACK_DIR=str(self.dir))
        return subprocess.run([str(STACK), *args], env=env, text=True, capture_output=True,
                              check=check, timeout=300)

    @property
    def pg_port(self) -> int:
        return int(self.exports["PREFECT_DR_DATABASE_URL"].rsplit(":", 1)[1].split("/")[0])

    def url(self, db: str = "prefect") -> str:
        """URL of database ``db`` as the prefect role, without password."""
        return f"postgresql://prefect@127.0.0.1:{self.pg_port}/{db}"

    @property
    def password(self) -> str:
        return self.exports["PGPASSWORD"]

    def connect(self, db: str = "prefect", **kw: Any) -> psycopg.Connection:
        return psycopg.connect(self.url(db), password=self.password, autocommit=True,
                               connect_timeout=10, **kw)

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.exports["PREFECT_DR_STACK_PG_ADMIN_URL"],
                               password=self.exports["PREFECT_DR_STACK_PG_ADMIN_PASSWORD"],
                               autocommit=True, connect_timeout=10)

    @property
    def s3_endpoint(self) -> tuple[str, int]:
        host, port = self.exports["PREFECT_DR_S3_ENDPOINT_URL"].split("//", 1)[1].split(":")
        return host, int(port)

    def s3(self) -> Any:
        return boto3.session.Session(
            aws_access_key_id=self.exports["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.exports["AWS_SECRET_ACCESS_KEY"],
        ).client("s3", endpoint_url=self.exports["PREFECT_DR_S3_ENDPOINT_URL"],
                 region_name="us-east-1")

    @property
    def bucket(self) -> str:
        return self.exports["PREFECT_DR_S3_BUCKET"]

    # -- PostgreSQL restarts -------------------------------------------------------------
    def pg_stop(self, mode: str = "fast") -> None:
        """Stop PostgreSQL (mode fast: sessions terminated; immediate: like a crash)."""
        bin_dir = self.exports["PREFECT_DR_STACK_PG_BIN"]
        argv = [f"{bin_dir}/pg_ctl", "-D", str(self.dir / "pg" / "data"), "-m", mode, "-w",
                "-t", "60", "stop"]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, capture_output=True, check=True, timeout=90)

    def pg_start(self) -> None:
        self.stack("up", "pg")

    def pg_restart(self, mode: str = "fast") -> None:
        self.pg_stop(mode)
        self.pg_start()


def start_stack(directory: Path, secrets: dict[str, str]) -> ChaosStack:
    """A fresh stack (pg + s3) in ``directory`` whose secrets are ``secrets``."""
    stack = ChaosStack(directory, {}, secrets)
    if (directory / "ports.env").exists():
        stack.stack("down", check=False)
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "secrets").mkdir(parents=True)
    os.chmod(directory / "secrets", 0o700)
    for name, value in secrets.items():
        path = directory / "secrets" / name
        path.write_text(value + "\n")
        os.chmod(path, 0o600)
    proc = stack.stack("up", "pg", "s3", check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"chaos stack did not start: {proc.stderr[-3000:]}")
    stack.exports = parse_exports(proc.stdout)
    return stack


def seed_from(stack: ChaosStack, source_env: dict[str, str]) -> None:
    """Copy the main stack's seeded Prefect database into the chaos stack's `prefect`."""
    dump = subprocess.run(["pg_dump", "-Fc", "--no-owner", "--dbname",
                           source_env["PREFECT_DR_DATABASE_URL"]],
                          env=dict(os.environ, PGPASSWORD=source_env["PGPASSWORD"]),
                          check=True, capture_output=True, timeout=300).stdout
    subprocess.run(["pg_restore", "--no-owner", "--exit-on-error", "--dbname", stack.url()],
                   input=dump, env=dict(os.environ, PGPASSWORD=stack.password), check=True,
                   capture_output=True, timeout=300)


def make_bulky(stack: ChaosStack, name: str, megabytes: int = 20) -> None:
    """``name``: a copy of `prefect` with ~``megabytes`` MB of incompressible ballast, so that
    its backup is a multipart upload that takes a while through a slow proxy."""
    with stack.connect("postgres") as conn:
        scratch.drop_database(conn, name)
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE prefect')
    rows = max(1, megabytes * 1000)
    with stack.connect(name) as conn:
        conn.execute("CREATE TABLE ballast AS SELECT g AS id, decode(string_agg(md5(random()::text"
                     " || g::text || i::text), ''), 'hex') AS payload FROM "
                     f"generate_series(1, {rows}) g, generate_series(1, 64) i GROUP BY g")


# -- database probes -----------------------------------------------------------------------------
CONFIG_TABLES = ("block_document", "block_type", "variable", "work_pool", "work_queue",
                 "deployment", "flow", "automation", "concurrency_limit_v2", "configuration")


#: The fingerprint's entry for the public schema's constraints (not a table name: no dot there).
CONSTRAINTS = "public constraints"


def fingerprint(stack: ChaosStack, db: str) -> dict[str, Any]:
    """What a database holds: every public table with its row count, a digest of the rows of
    the configuration tables, and one of the constraints (:data:`CONSTRAINTS`). Two databases
    with the same fingerprint hold the same state."""
    with stack.connect(db) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
        out: dict[str, Any] = {}
        for t in tables:
            if t in CONFIG_TABLES:
                row = conn.execute(f'SELECT count(*), md5(coalesce(string_agg(x::text, \'|\' '
                                   f'ORDER BY x::text), \'\')) FROM "{t}" x').fetchone()
                out[t] = [row[0], row[1]]
            else:
                out[t] = conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
        # the constraints, validated or not: a restore must end with the source's (issue 25)
        out[CONSTRAINTS] = conn.execute(
            "SELECT md5(coalesce(string_agg(c, '|' ORDER BY c), '')) FROM (SELECT "
            "conrelid::regclass::text || ' ' || conname || ' ' || convalidated || ' ' || "
            "pg_get_constraintdef(oid) AS c FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace) x").fetchone()[0]
    return out


def databases(stack: ChaosStack, like: str = "%") -> dict[str, bool]:
    """Databases whose name matches ``like``, with whether they accept connections."""
    with stack.connect("postgres") as conn:
        return {r[0]: bool(r[1]) for r in conn.execute(
            "SELECT datname, datallowconn FROM pg_database WHERE datname LIKE %s", (like,))}


def comment_of(stack: ChaosStack, db: str) -> str:
    with stack.connect("postgres") as conn:
        row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                           "WHERE datname = %s", (db,)).fetchone()
    return str(row[0] or "") if row else ""


def drop_database(stack: ChaosStack, db: str) -> None:
    with stack.connect("postgres") as conn:
        scratch.drop_database(conn, db)


LIVE = "prefect"  # the live Prefect database of the chaos stack, which restores replace


def drop_kept(stack: ChaosStack) -> None:
    """Drop the databases restores and rollbacks kept beside the live one."""
    for name in databases(stack, f"{LIVE}_%"):
        if "_pre_restore_" in name or "_rolled_back_" in name or name.endswith("_chaos_junk"):
            drop_database(stack, name)


def repair(stack: ChaosStack, before: dict[str, Any]) -> None:
    """Put the unchanged live database (fingerprint ``before``) back by hand after a state
    the tool cannot undo itself (a known bug, or a failed test); drop kept databases."""
    with stack.admin() as admin:
        for name, allowed in databases(stack, f"{LIVE}%").items():
            if not allowed:
                admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        dbs = databases(stack, f"{LIVE}%")
        if LIVE not in dbs or fingerprint(stack, LIVE) != before:
            kept = sorted((d for d in dbs if "_pre_restore_" in d or "_rolled_back_" in d),
                          key=lambda d: d.rsplit("_", 1)[1])
            kept = [d for d in kept if fingerprint(stack, d) == before]
            assert kept, f"no database to repair {LIVE} from: {sorted(dbs)}"
            if LIVE in dbs:
                admin.execute(f'ALTER DATABASE "{LIVE}" RENAME TO "{LIVE}_chaos_junk"')
            admin.execute(f'ALTER DATABASE "{kept[-1]}" RENAME TO "{LIVE}"')
    drop_kept(stack)


# -- S3 probes -------------------------------------------------------------------------------------
def keys(stack: ChaosStack, prefix: str) -> dict[str, int]:
    """Every object under ``prefix`` with its size."""
    s3, out, token = stack.s3(), {}, None
    while True:
        kw: dict[str, Any] = {"Bucket": stack.bucket, "Prefix": prefix}
        if token:
            kw["ContinuationToken"] = token
        page = s3.list_objects_v2(**kw)
        for item in page.get("Contents", []):
            out[item["Key"]] = int(item["Size"])
        if not page.get("IsTruncated"):
            return out
        token = page["NextContinuationToken"]


def open_uploads(stack: ChaosStack, prefix: str) -> list[str]:
    """Keys of multipart uploads left open under ``prefix``."""
    page = stack.s3().list_multipart_uploads(Bucket=stack.bucket, Prefix=prefix)
    return [u["Key"] for u in page.get("Uploads", [])]


def get(stack: ChaosStack, key: str) -> bytes:
    return stack.s3().get_object(Bucket=stack.bucket, Key=key)["Body"].read()


def put(stack: ChaosStack, key: str, body: bytes) -> None:
    stack.s3().put_object(Bucket=stack.bucket, Key=key, Body=body)


def delete_prefix(stack: ChaosStack, prefix: str) -> None:
    s3 = stack.s3()
    for key in keys(stack, prefix):
        s3.delete_object(Bucket=stack.bucket, Key=key)
    for up in s3.list_multipart_uploads(Bucket=stack.bucket, Prefix=prefix).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=stack.bucket, Key=up["Key"], UploadId=up["UploadId"])


# -- the library, in-process (fast listing and set-up; the CLI is what is tested) -----------------
def storage_and_layout(env: dict[str, str]) -> tuple[Any, Any]:
    from prefect_dr.layout import Layout
    from prefect_dr.storage.s3 import S3Storage

    client = boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    ).client("s3", endpoint_url=env["PREFECT_DR_S3_ENDPOINT_URL"], region_name="us-east-1")
    storage = S3Storage(env["PREFECT_DR_S3_BUCKET"],
                        endpoint_url=env["PREFECT_DR_S3_ENDPOINT_URL"], client=client,
                        retry_deadline_s=5)
    return storage, Layout(env["PREFECT_DR_S3_PREFIX"])


def listing(env: dict[str, str]) -> dict[str, Any]:
    """{backup id: catalog entry} as `prefect-dr list` sees the repository."""
    from prefect_dr import catalog

    storage, layout = storage_and_layout(env)
    return {e.backup_id: e for e in catalog.list_backups(storage, layout)}


def prefix_root(env: dict[str, str]) -> str:
    from prefect_dr.layout import Layout

    return Layout(env["PREFECT_DR_S3_PREFIX"]).root


def whole(stack: ChaosStack, entry: Any) -> bool:
    """Every artifact a complete backup's manifest names exists with its size."""
    s3 = stack.s3()
    for art in entry.manifest.artifacts:
        try:
            head = s3.head_object(Bucket=stack.bucket, Key=art.key)
        except Exception:
            return False
        if int(head["ContentLength"]) != art.size:
            return False
    return True


def manifest_key(env: dict[str, str], backup_id: str) -> str:
    return f"{prefix_root(env)}backups/{backup_id}/manifest.json"


# -- processes -------------------------------------------------------------------------------------
def client_programs(needle: str) -> list[int]:
    """pids of pg_dump/pg_restore processes whose command line contains ``needle``."""
    out = []
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if ("pg_dump" in cmd or "pg_restore" in cmd) and needle in cmd:
            out.append(int(pid_dir.name))
    return out


def wait_no_client_programs(needle: str, timeout: float = 20) -> list[int]:
    """Wait until no pg_dump/pg_restore of ``needle`` runs; returns those still running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = client_programs(needle)
        if not left:
            return []
        time.sleep(0.1)
    return client_programs(needle)


class ArgvSampler:
    """Samples the command line of every process on the machine (what `ps` shows) while the
    chaos suite runs; the secrets test checks none ever carried a secret."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.seen: set[str] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="argv-sampler")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def sample(self) -> None:
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                raw = (pid_dir / "cmdline").read_bytes()
                if raw:
                    self.seen.add(raw.replace(b"\0", b" ").decode(errors="replace").strip())
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def replace_field(manifest: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``manifest`` with the dotted ``path`` (list indexes allowed) set to ``value``."""
    data = json.loads(json.dumps(manifest))
    node: Any = data
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


def scrub_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items()
            if not k.startswith(("PREFECT_DR_", "AWS_", "PG", "PREFECT_"))}



def artifacts_match(stack: ChaosStack, entry: Any) -> bool:
    """Every artifact of a complete backup is stored with exactly the size and sha256 its
    manifest records (what verify's integrity check starts with; cheap, in-process)."""
    for art in entry.manifest.artifacts:
        try:
            body = get(stack, art.key)
        except Exception:
            return False
        if len(body) != art.size or sha(body) != art.sha256:
            return False
    return True


def metric(path: Path, name: str, **labels: str) -> float | None:
    """The value of sample ``prefect_dr_<name>{labels}`` in a metrics textfile (None: absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    if not path.exists():
        return None
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            if sample.name == f"prefect_dr_{name}" and all(
                    sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None
