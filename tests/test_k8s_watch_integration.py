"""The rendered watch Deployment's pod, run the way the kubelet would (tests/k8s_pod.py:
ConfigMap and Secrets as its environment, its volumes, a read-only root, a non-root uid under
bubblewrap) against the stack: it backs up at start, follows the stack's Prefect event stream,
and backs up a variable set through the API."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from conftest import run_cli
from k8s_pod import Namespace, run_pod
from test_watch_integration import _free_port, _variables, _watch_backups

pytestmark = pytest.mark.integration
NS = "prefect-dr"


def test_the_rendered_watch_pod_backs_up_configuration_changes(
        clone: dict[str, str], identity: tuple[Path, str], tmp_path: Path) -> None:
    db_url, password = clone["PREFECT_DR_DATABASE_URL"], clone["PGPASSWORD"]
    parts = urllib.parse.urlsplit(db_url)
    connection = (f"postgresql+asyncpg://{parts.username}:{urllib.parse.quote(password)}@"
                  f"{parts.hostname}:{parts.port}{parts.path}")
    host = {k: v for k, v in clone.items()
            if k not in ("PREFECT_DR_DATABASE_URL", "PGPASSWORD", "PREFECT_DR_AGE_IDENTITY_FILE")}
    ns = Namespace(NS)
    ns.create_secret("prefect-server-postgresql-connection", {"connection-string": connection})
    ns.create_secret("prefect-dr-s3-backup", {"AWS_ACCESS_KEY_ID": clone["AWS_ACCESS_KEY_ID"],
                                              "AWS_SECRET_ACCESS_KEY":
                                                  clone["AWS_SECRET_ACCESS_KEY"]})
    ns.create_secret("prefect-dr-signing-key", {"signing-key.pem": Path(
        clone["PREFECT_DR_SIGNING_KEY_FILE"]).read_text()})
    proc = run_cli(["k8s", "render", "--namespace", NS], host)
    assert proc.returncode == 0, proc.stderr
    bundle = [d for d in yaml.safe_load_all(proc.stdout) if d]
    ns.apply(bundle)
    [deployment] = [o for o in bundle if o["kind"] == "Deployment"]
    spec = json.loads(json.dumps(deployment["spec"]))
    container = spec["template"]["spec"]["containers"][0]
    port = _free_port()  # the pod shares this machine's network
    container["args"] = ["watch", "--metrics-port", str(port), "--metrics-address", "0.0.0.0",
                         "--debounce", "1s", "--max-delay", "5s", "--safety-poll-interval", "5s"]
    # its database is the clone, its API the stack's server (whose database is another): the
    # variable is set in the clone directly, and the table poll must see it
    runs: list[Any] = []

    def run() -> None:
        try:
            runs.append(run_pod(ns, spec, tmp_path / "watch", image_env={
                "AWS_EC2_METADATA_DISABLED": "true"}, timeout=30))
        except subprocess.TimeoutExpired:
            runs.append("stopped")

    runner = threading.Thread(target=run)
    runner.start()
    try:
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and not _watch_backups(clone):
            time.sleep(1)
        [first] = _watch_backups(clone)  # the backup at start
        assert first["labels"] == {"trigger": "watch"}
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b'prefect_dr_watch_source{source="stream"} 1.0' in metrics  # the stack's API
        name = f"watch_pod_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(db_url, password=password, autocommit=True) as conn:
            conn.execute("INSERT INTO variable (id, name, value, tags) VALUES "
                         "(gen_random_uuid(), %s, '1'::jsonb, '[]'::jsonb)", (name,))
        while time.monotonic() < deadline + 10 and len(_watch_backups(clone)) < 2:
            time.sleep(1)
        latest = _watch_backups(clone)[-1]
        assert name in _variables(clone, latest["backup_id"], identity)
    finally:
        runner.join(timeout=60)
    assert runs == ["stopped"], runs  # ran until stopped (a Deployment's pod never ends)
