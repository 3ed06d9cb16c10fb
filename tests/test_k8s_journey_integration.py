"""The operator's journey of docs/deploy.md, played without a cluster (tests/k8s_pod.py runs
each rendered pod the way the kubelet would: ConfigMap and Secrets as its environment, its
volumes mounted, a read-only root and a non-root uid under bubblewrap, the exit code judged by
the rendered podFailurePolicy) against the real stack, with a real Pushgateway scraped by a
real Prometheus that evaluates the rendered alert rules.

create the Secrets -> render -> apply (twice) -> backup CronJob -> verify CronJob -> restore Job
of a backup whose dump is larger than the restore pod's /tmp -> pre-upgrade hook while the
backup lock is held -> a broken database Secret: exit 16, final, and PrefectDRBackupFailed
fires -> the Secret fixed: the next backup clears it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from conftest import free_port, run_cli
from k8s_pod import ApplyError, Namespace, run_job

from prefect_dr.lock import ADVISORY_KEY

pytestmark = pytest.mark.integration
NS = "prefect-dr"
INSTANCE = "journey"


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            assert proc.poll() is None, f"{url}: the server exited"
            time.sleep(0.1)
    raise AssertionError(f"{url} never became ready")


def _program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (scripts/bootstrap installs it)")
    return path


@pytest.fixture()
def monitoring(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A Pushgateway and a Prometheus scraping it every second (honor_labels, as the rendered
    ServiceMonitor), loaded with rules the test writes later (reloaded by /-/reload)."""
    gw_port, prom_port = free_port(), free_port()
    gateway = subprocess.Popen([_program("prometheus-pushgateway"),
                                f"--web.listen-address=127.0.0.1:{gw_port}",
                                "--persistence.file="],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rules = tmp_path / "rules.yml"
    rules.write_text("groups: []\n")
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "pushgateway", "honor_labels": True,
                            "static_configs": [{"targets": [f"127.0.0.1:{gw_port}"]}]}]}))
    prometheus = subprocess.Popen([_program("prometheus"), f"--config.file={config}",
                                   f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{prom_port}",
                                   "--web.enable-lifecycle"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    urls = {"pushgateway": f"http://127.0.0.1:{gw_port}",
            "prometheus": f"http://127.0.0.1:{prom_port}", "rules": str(rules)}
    try:
        _wait_ready(urls["pushgateway"] + "/-/ready", gateway)
        _wait_ready(urls["prometheus"] + "/-/ready", prometheus)
        yield urls
    finally:
        for proc in (prometheus, gateway):
            proc.terminate()
            proc.wait(timeout=20)


def _alerts(prometheus: str, name: str) -> list[dict[str, Any]]:
    body = json.loads(urllib.request.urlopen(prometheus + "/api/v1/alerts", timeout=5).read())
    return [a for a in body["data"]["alerts"] if a["labels"]["alertname"] == name
            and a["labels"].get("instance") == INSTANCE and a["state"] == "firing"]


def _wait_alert(prometheus: str, name: str, firing: bool) -> None:
    """Until Prometheus, having scraped the Pushgateway and evaluated the rules, says the
    alert is (not) firing; bounded (rules are evaluated every second)."""
    for _ in range(600):
        if bool(_alerts(prometheus, name)) == firing:
            return
        time.sleep(0.1)
    raise AssertionError(f"{name} never {'fired' if firing else 'cleared'}")


def _render(args: list[str], env: dict[str, str]) -> list[dict[str, Any]]:
    proc = run_cli(["k8s", "render", "--namespace", NS, *args], env)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [obj] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def test_the_operators_journey_on_kubernetes(clone: dict[str, str], identity: tuple[Path, str],
                                             stack_env: dict[str, str],
                                             monitoring: dict[str, str],
                                             tmp_path: Path) -> None:
    db_url = clone["PREFECT_DR_DATABASE_URL"]
    password = clone["PGPASSWORD"]
    parts = urllib.parse.urlsplit(db_url)
    connection = (f"postgresql+asyncpg://{parts.username}:{urllib.parse.quote(password)}@"
                  f"{parts.hostname}:{parts.port}{parts.path}")
    # the operator's machine: settings, no database URL (the jobs read prefect-helm's Secret)
    host = {k: v for k, v in clone.items()
            if k not in ("PREFECT_DR_DATABASE_URL", "PGPASSWORD", "PREFECT_DR_AGE_IDENTITY_FILE")}
    image_env = {"AWS_EC2_METADATA_DISABLED": "true"}

    # 1. Secrets, created as `kubectl create secret generic` does; prefect-helm's is there
    ns = Namespace(NS)
    ns.create_secret("prefect-server-postgresql-connection", {"connection-string": connection})
    credentials = {"AWS_ACCESS_KEY_ID": clone["AWS_ACCESS_KEY_ID"],
                   "AWS_SECRET_ACCESS_KEY": clone["AWS_SECRET_ACCESS_KEY"]}
    identity_text = identity[0].read_text()
    templates = _render(["--secret-templates"], host)
    for template in templates:  # every Secret the jobs read, with the keys they read
        name, keys = template["metadata"]["name"], set(template["stringData"])
        if keys == {"identity.txt"}:
            ns.create_secret(name, {"identity.txt": identity_text})
        elif keys == {"signing-key.pem"}:  # backups are signed by default
            ns.create_secret(name, {"signing-key.pem": Path(
                clone["PREFECT_DR_SIGNING_KEY_FILE"]).read_text()})
        else:
            assert keys == set(credentials), template
            ns.create_secret(name, credentials)

    # 2. render, 3. apply: twice, as every upgrade does; the Secrets stay the operator's
    pushgateway = ["--pushgateway", monitoring["pushgateway"], "--metrics-instance", INSTANCE]
    bundle_proc = run_cli([*pushgateway, "k8s", "render", "--namespace", NS], host)
    assert bundle_proc.returncode == 0, bundle_proc.stderr
    bundle = [d for d in yaml.safe_load_all(bundle_proc.stdout) if d]
    assert "REPLACE-ME" not in bundle_proc.stdout and "generateName" not in bundle_proc.stdout
    for secret in (password, clone["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in bundle_proc.stdout
    ns.apply(bundle)
    ns.apply(bundle)
    assert ns.secret_value("prefect-dr-age-identity", "identity.txt") == identity_text
    assert ns.secret_value("prefect-server-postgresql-connection",
                           "connection-string") == connection
    with pytest.raises(ApplyError, match="generate name"):  # what the old bundle met
        ns.apply([{"kind": "Job", "metadata": {"generateName": "prefect-dr-restore-"}}])

    # the alert rules of --prometheus-rule, evaluated by Prometheus on what it scrapes ("for"
    # shortened to nothing: the expressions and what was scraped are under test, not waiting)
    [rule] = [o for o in _render(["--prometheus-rule"], host) if o["kind"] == "PrometheusRule"]
    groups = rule["spec"]["groups"]
    for group in groups:
        group["interval"] = "1s"
        for r in group["rules"]:
            r["for"] = "0s"
    Path(monitoring["rules"]).write_text(yaml.safe_dump({"groups": groups}))
    urllib.request.urlopen(urllib.request.Request(monitoring["prometheus"] + "/-/reload",
                                                  method="POST"), timeout=10).read()
    pods = tmp_path / "pods"

    # 4. the backup CronJob's pod, 5. the verify CronJob's pod
    backup = _one(bundle, "CronJob", "prefect-dr-backup")
    first = run_job(ns, backup, pods / "backup-1", image_env=image_env)
    assert first.status == "Complete", first.last.stderr
    backup_id = first.last.stdout.strip().splitlines()[-1]
    verify = run_job(ns, _one(bundle, "CronJob", "prefect-dr-verify"), pods / "verify",
                     image_env=image_env)
    assert verify.status == "Complete", verify.last.stderr

    # 6. the restore Job of that backup (`--restore-job latest --yes`), its /tmp smaller than
    # the dump: it streams, it never stages
    shown = run_cli(["show", backup_id, "--json"], host)
    assert shown.returncode == 0, shown.stderr
    [dump] = [a for a in json.loads(shown.stdout)["artifacts"] if a["name"] == "dump"]
    restore_docs = _render(["--restore-job", "latest", "--yes"], host)
    [job] = [o for o in restore_docs if o["kind"] == "Job"]
    assert job["metadata"]["name"] == f"prefect-dr-restore-{backup_id.lower()}"
    ns.create(job)
    with pytest.raises(ApplyError, match="already exists"):
        ns.create(job)
    tmp_limit = str(max(dump["plaintext_size"] // 2, 65536))
    assert int(tmp_limit) < dump["plaintext_size"]
    plan_job = json.loads(json.dumps(job))  # the same pod, asked for parallel jobs, dry run
    plan_job["spec"]["template"]["spec"]["containers"][0]["args"] = [
        "restore", backup_id, "--dry-run", "--jobs", "4"]
    plan = run_job(ns, plan_job, pods / "plan", image_env=image_env,
                   size_limits={"tmp": tmp_limit})
    assert plan.status == "Complete", plan.last.stderr
    assert "streaming with one job" in plan.last.stdout + plan.last.stderr  # tmpfs seen
    restored = run_job(ns, job, pods / "restore", image_env=image_env,
                       size_limits={"tmp": tmp_limit})
    assert restored.status == "Complete", restored.last.stderr
    assert len(restored.pods) == 1

    # 7. the pre-upgrade hook while a backup holds the lock: it waits (its log says so), the
    # lock is let go, and the hook backs up, in one pod
    hook = _one(_render(["--pre-upgrade-hook"], host), "Job", "prefect-dr-pre-upgrade")
    holder = psycopg.connect(db_url, password=password, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_KEY,))
    result: list[Any] = []
    runner = threading.Thread(target=lambda: result.append(
        run_job(ns, hook, pods / "hook", image_env=image_env)))
    runner.start()
    log = pods / "hook" / "pod-0" / "stderr"
    try:
        for _ in range(1200):  # until the hook says it waits for the lock (bounded)
            if log.exists() and "waiting up to" in log.read_text():
                break
            assert runner.is_alive(), "the hook ended without waiting for the lock"
            time.sleep(0.1)
        else:
            raise AssertionError("the hook never waited for the lock")
    finally:
        holder.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_KEY,))
        holder.close()
        runner.join(timeout=600)
    [waited] = result
    assert waited.status == "Complete" and len(waited.pods) == 1, waited.last.stderr
    assert "backup lock held; waiting up to" in waited.last.stderr

    # 8. a broken database Secret (pointing at a PostgreSQL newer than the image's clients):
    # exit 16, a set-up error the Job does not retry; the failure reaches Prometheus
    _wait_alert(monitoring["prometheus"], "PrefectDRBackupFailed", firing=False)
    newer = urllib.parse.urlsplit(stack_env["PREFECT_DR_STACK_PG18_URL"])
    ns.replace_secret("prefect-server-postgresql-connection", {
        "connection-string": connection.replace(f":{parts.port}{parts.path}",
                                                f":{newer.port}{newer.path}")})
    broken = run_job(ns, backup, pods / "backup-broken", image_env=image_env)
    assert [p.exit_code for p in broken.pods] == [16], broken.last.stderr
    assert (broken.status, broken.reason) == ("Failed", "PodFailurePolicy")
    assert password not in broken.last.stderr + broken.last.stdout
    _wait_alert(monitoring["prometheus"], "PrefectDRBackupFailed", firing=True)

    # 9. the Secret fixed: the next scheduled backup succeeds and the alert clears
    ns.replace_secret("prefect-server-postgresql-connection", {"connection-string": connection})
    fixed = run_job(ns, backup, pods / "backup-2", image_env=image_env)
    assert fixed.status == "Complete", fixed.last.stderr
    _wait_alert(monitoring["prometheus"], "PrefectDRBackupFailed", firing=False)
    pushed = urllib.request.urlopen(monitoring["pushgateway"] + "/metrics", timeout=5).read()
    runs = [line for line in pushed.decode().splitlines()
            if line.startswith('prefect_dr_last_run_success{command="backup"')]
    assert len(runs) == 1 and runs[0].endswith(" 1"), runs

    # a missing Secret: the pod never starts (the kube-state-metrics alerts see that Job)
    del ns.objects[("Secret", "prefect-dr-s3-backup")]
    pending = run_job(ns, backup, pods / "backup-no-secret", image_env=image_env)
    assert (pending.status, pending.reason) == ("Pending", "CreateContainerConfigError")
