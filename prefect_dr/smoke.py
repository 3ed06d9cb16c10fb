"""`verify --prefect-smoke`: start a Prefect server (the one beside prefect-dr, or the one at
``--prefect-python``) on a restored database and read it back through the API, the way operators
will after a restore; the result names that Prefect and whether it migrated the database."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from prefect_dr import interrupt, prefect_api, schema_gate
from prefect_dr.errors import DRError, SetupError, VerificationError
from prefect_dr.manifest import Manifest
from prefect_dr.pg import connect as pgc

START_TIMEOUT_S = 180
PAGE = 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prefect_program(python: str | None = None) -> list[str]:
    """The command running Prefect's CLI: the `prefect` beside ``python`` (or ``python -m
    prefect``) when given, else the one beside this Python, or on PATH. Raises SetupError."""
    if python:
        if not (os.path.isfile(python) and os.access(python, os.X_OK)):
            raise SetupError(f"{python} is not an executable Python interpreter "
                             "(--prefect-python)")
        beside = Path(python).parent / "prefect"
        return [str(beside)] if beside.is_file() else [python, "-m", "prefect"]
    beside = Path(sys.executable).parent / "prefect"
    found = str(beside) if beside.exists() else shutil.which("prefect")
    if not found:
        raise SetupError("starting Prefect needs it installed: install Prefect beside "
                         "prefect-dr, or pass --prefect-python PATH (a Python with Prefect)")
    return [found]


def require_runs(manifest: Manifest, python: str | None = None) -> str:
    """Check, before any work, that the Prefect the smoke test starts can run the backup's
    schema revision (the shipped revision table knows); returns its version. Raises
    SetupError when it definitely cannot (a backup newer than that Prefect: a fault of the
    set-up, never a verdict on the backup) or cannot be run at all."""
    version = prefect_version(python)
    verdict = schema_gate.judge(manifest.alembic_revision, schema_gate.Target(
        prefect_version=version, version_source="--prefect-python"))
    if (not verdict.ok and verdict.certain and manifest.alembic_revision
            and schema_gate.table().known(manifest.alembic_revision)):
        raise SetupError(f"--prefect-smoke: {verdict.reason}")
    return version


def prefect_version(python: str | None = None) -> str:
    """The version of the Prefect that :func:`prefect_program` runs. Raises SetupError."""
    program = prefect_program(python)
    try:
        out = subprocess.run([*program, "version"], capture_output=True, text=True,
                             timeout=120, env=_quiet_env(), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SetupError(f"cannot run {' '.join(program)}: {exc}") from None
    for line in out.stdout.splitlines():
        if line.strip().lower().startswith("version:"):
            return line.split(":", 1)[1].strip()
    tail = (out.stderr.strip().splitlines() or ["no output"])[-1][:200]
    raise SetupError(f"{' '.join(program)} version failed: {tail}")


def _quiet_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    return env


def asyncpg_url(url: str) -> str:
    """The SQLAlchemy asyncpg URL Prefect needs for a libpq URL (password from PGPASSWORD)."""
    parts = urlsplit(url)
    password = unquote(parts.password or "") or os.environ.get("PGPASSWORD") or ""
    user = quote(unquote(parts.username or ""), safe="")
    auth = f"{user}:{quote(password, safe='')}@" if password else (f"{user}@" if user else "")
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"postgresql+asyncpg://{auth}{host}{port}{parts.path}"


def _paged(api: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        page = prefect_api.request(api, "POST", path, {**body, "limit": PAGE,
                                                       "offset": len(out)})
        out += page
        if len(page) < PAGE:
            return out


class PrefectServer:
    """A Prefect server (see :func:`prefect_program`), run on a loopback port against one
    database; a context manager that starts it, waits until it is ready and stops it (services
    off, UI off)."""

    def __init__(self, database_url: str, *, block_key: str | None = None,
                 python: str | None = None, settings: Mapping[str, str] | None = None) -> None:
        self.database_url, self.block_key = database_url, block_key
        self.settings = dict(settings or {})  # more PREFECT_* settings for the server
        self.program = prefect_program(python)
        self.port = _free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self._home = tempfile.TemporaryDirectory(prefix="prefect-dr-smoke-")
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrefectServer:
        home = self._home.name
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update({
            "PREFECT_HOME": home,
            "PREFECT_API_DATABASE_CONNECTION_URL": asyncpg_url(self.database_url),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
        })
        if self.block_key:
            env["PREFECT_SERVER_ENCRYPTION_KEY"] = self.block_key
        env.update(self.settings)
        logfile = Path(home) / "server.log"
        with logfile.open("wb") as out:
            self._proc = subprocess.Popen(
                [*self.program, "server", "start", "--host", "127.0.0.1", "--port",
                 str(self.port), "--no-services", "--no-ui"],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            _wait_ready(self.api, self._proc, logfile)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        self._home.cleanup()


def check(scratch_url: str, manifest: Manifest, export_doc: dict[str, Any] | None, *,
          block_key: str | None, python: str | None = None) -> str:
    """Serve ``scratch_url`` with Prefect and compare what its API returns with the backup.

    Returns a one-line summary naming the Prefect that served and whether it migrated the
    database on start. Raises VerificationError on a difference, SetupError when the server does
    not start.
    """
    before = _revision(scratch_url)
    with PrefectServer(scratch_url, block_key=block_key, python=python) as server:
        summary = _compare(server.api, manifest, export_doc)
        where = " ".join(server.program)
    after = _revision(scratch_url)
    migrated = (f"migrated the database from {before} to {after} on start" if before != after
                else f"no migration (the database was at its revision {after})")
    return f"{summary} ({where}); {migrated}"


def _revision(url: str) -> str | None:
    with pgc.connect(url) as conn:
        return pgc.alembic_revision(conn)


def _wait_ready(api: str, proc: subprocess.Popen[bytes], logfile: Path) -> None:
    """Wait until the server at ``api`` answers /ready. Raises SetupError when it exits or
    is not ready in time."""
    # a poll until the server is up (an unanswered /ready is expected meanwhile), not a retry
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            lines = logfile.read_text(errors="replace").strip().splitlines()
            telling = ([ln for ln in lines if re.search(r"\w(Error|Exception): ", ln)]
                       or [ln for ln in lines if "error" in ln.lower()] or lines
                       or ["no output"])  # the exception's own line, else any error line
            raise SetupError(f"the smoke test's Prefect server exited (code "
                             f"{proc.returncode}): {telling[-1].strip()[:300]}")
        try:
            prefect_api.request(api, "GET", "/ready", timeout=2)
            return
        except DRError:
            interrupt.raise_if_noted()
            time.sleep(0.5)
    raise SetupError(f"the smoke test's Prefect server was not ready after "
                     f"{START_TIMEOUT_S}s")


def _compare(api: str, manifest: Manifest, export_doc: dict[str, Any] | None) -> str:
    version = prefect_api.server_version(api)
    blocks = [b for b in _paged(api, "/block_documents/filter", {"include_secrets": True})
              if not b.get("is_anonymous")]
    deployments = _paged(api, "/deployments/filter", {})
    flow_runs = int(prefect_api.request(api, "POST", "/flow_runs/count", {}))
    expected_runs = manifest.row_counts.get("flow_run", {})
    if expected_runs.get("exact") and flow_runs != expected_runs.get("rows"):
        raise VerificationError(f"Prefect API counts {flow_runs} flow runs, the manifest "
                                f"{expected_runs.get('rows')}")
    if export_doc is not None:
        exported = {b["name"]: b for b in export_doc.get("block_documents", [])
                    if not b.get("is_anonymous")}
        served = {b["name"]: b for b in blocks}
        if set(exported) != set(served):
            raise VerificationError(f"Prefect API serves blocks {sorted(served)}, the export "
                                    f"holds {sorted(exported)}")
        for name, doc in exported.items():
            if doc.get("decrypted") and not _contains(served[name].get("data"), doc["data"]):
                raise VerificationError(f"block {name!r}: the API's data differs from the "
                                        "export's (secrets do not read back)")
        wanted = {d["name"] for d in export_doc.get("deployments", [])}
        if wanted != {d["name"] for d in deployments}:
            raise VerificationError("Prefect API deployments differ from the export")
    return (f"Prefect {version} served {len(blocks)} blocks (data matches the export), "
            f"{len(deployments)} deployments, {flow_runs} flow runs")


def _contains(served: Any, exported: Any) -> bool:
    """Whether ``served`` holds every value of ``exported`` (the API may add nested fields)."""
    if isinstance(exported, dict):
        return isinstance(served, dict) and all(
            k in served and _contains(served[k], v) for k, v in exported.items())
    return bool(served == exported)
