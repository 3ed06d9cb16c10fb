"""prefect_dr.k8s: every rendered object is a valid Kubernetes object, hardened, least privilege.

Validity is checked with the official client's models (k8s_objects.assert_valid: a round trip
through the typed model must give back exactly the original dict).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_objects import (
    API,
    assert_valid,
    by_kind,
    env_names,
    everything,
    job_specs,
    pods,
    roundtrip,
    secret_names,
)

from prefect_dr import __version__, config, crypto, k8s
from prefect_dr.errors import CryptoKeyError
from prefect_dr.k8s.monitoring import kube_alert_group

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
RECIPIENT = crypto.generate_identity()[1]


def full_options() -> k8s.RenderOptions:
    """Every optional feature switched on."""
    return k8s.RenderOptions(
        namespace="dr", name="prod-dr", image="registry.example/prefect-dr@sha256:" + "a" * 64,
        image_pull_policy="Always", backup_schedule="0 */6 * * *", verify_schedule="@daily",
        prune_schedule="30 7 * * MON-FRI", time_zone="Europe/Berlin",
        bucket="acme-prefect-backups", prefix="prod", endpoint_url="https://s3.example:9000",
        region=None, database_url="postgresql://dr@db.internal:5432/prefect",
        database_secret="prefect-dr-database", database_secret_key="PGPASSWORD",
        prefect_api_url=None, age_recipients=(RECIPIENT,), retention_full="keep-last=10",
        retention_config_only="keep-last=48", verify_key="AAAA",
        verify_scratch_url="postgresql://verify@scratch.internal:5432/postgres",
        extra_env={"PREFECT_DR_ZSTD_LEVEL": "6"},
        pushgateway_url="http://pushgateway.monitoring.svc:9091", metrics_instance="prod",
        s3_secrets={"verify": "verify-keys"},  # the other jobs use IRSA
        signing_key_secret="prefect-dr-signing", block_key_secret="prefect-block-key",
        notify_secret="prefect-dr-notify", notify_on="always",
        prometheus_labels={"release": "kube-prometheus-stack"},
        restore_backup_id="20261126T153000Z-a1b2c3", restore_dry_run=False,
        backup_deadline_seconds=7200, memory_limit="1Gi",
    )


OPTIONS = [k8s.RenderOptions(), full_options()]
IDS = ["defaults", "everything"]


# ---- schema ------------------------------------------------------------------------------

@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_every_object_is_a_valid_kubernetes_object(options):
    objects = everything(options)
    assert [o["kind"] for o in objects] == (
        ["ServiceAccount"] * 4 + ["ConfigMap"] + ["CronJob"] * 4 + ["Deployment"]
        + ["Secret"] * (len(options.s3_secrets) + 1 + bool(options.signing_key_secret)
                        + bool(options.block_key_secret) + bool(options.notify_secret)
                        + (options.database_secret_key == "PGPASSWORD"))
        + ["Job"])
    for obj in objects:
        assert_valid(obj)


def test_the_round_trip_detects_misspelled_and_misplaced_fields():
    cron = next(o for o in everything() if o["kind"] == "CronJob")
    assert_valid(cron)
    typo = copy.deepcopy(cron)
    pod = typo["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    pod["containers"][0]["securityContext"]["runAsNonroot"] = (
        pod["containers"][0]["securityContext"].pop("runAsNonRoot"))
    assert roundtrip(typo) != typo
    misplaced = copy.deepcopy(cron)
    misplaced["spec"]["backoffLimit"] = 2  # belongs to the Job spec, not the CronJob spec
    assert roundtrip(misplaced) != misplaced


def test_the_models_reject_wrong_types_and_missing_required_fields():
    cron = next(o for o in everything() if o["kind"] == "CronJob")
    wrong = copy.deepcopy(cron)
    wrong["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0][
        "resources"]["limits"]["cpu"] = 2  # quantities are strings
    with pytest.raises(ValueError, match="cpu"):  # pydantic's ValidationError
        roundtrip(wrong)
    nameless = copy.deepcopy(cron)
    del nameless["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ValueError, match="name"):
        roundtrip(nameless)


# ---- security ----------------------------------------------------------------------------

def by_role(found: dict[str, Any]) -> dict[str, Any]:
    """``found`` without the incremental backup's pod, once it is checked to be the backup
    pod but for its arguments (same identity, secrets, hardening)."""
    incremental = copy.deepcopy(found.pop("backup-incremental"))
    incremental["containers"][0]["args"] = found["backup"]["containers"][0]["args"]
    assert incremental == found["backup"]
    return found


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_every_pod_is_hardened(options):
    objects = everything(options)
    found = by_role(pods(objects))
    assert set(found) == {"backup", "prune", "verify", "restore"}
    for role, pod in found.items():
        assert pod["securityContext"] == {
            "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"}}
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False
        assert pod["restartPolicy"] == "Never"
        assert pod["serviceAccountName"] == f"{options.name}-{role}"
        [container] = pod["containers"]
        assert container["name"] == role
        assert container["image"] == options.image
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
        assert {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}} in pod["volumes"]
        assert container["resources"] == {
            "requests": {"cpu": options.cpu_request, "memory": options.memory_request},
            "limits": {"cpu": options.cpu_limit, "memory": options.memory_limit}}
        assert container["args"][0] == role
    assert found["backup"]["containers"][0]["resources"] == {
        "requests": {"cpu": "500m", "memory": "256Mi"},
        "limits": {"cpu": "2", "memory": "1Gi" if options.memory_limit == "1Gi" else "512Mi"}}


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_only_verify_and_restore_hold_the_age_identity(options):
    objects = everything(options)
    found = pods(objects)
    for role in ("backup", "prune"):
        assert options.identity_secret not in secret_names(found[role]), role
        assert "PREFECT_DR_AGE_IDENTITY_FILE" not in env_names(found[role]), role
        assert not [v for v in found[role]["volumes"] if v["name"] == "age-identity"], role
    backup_cron = next(o for o in by_kind(objects, "CronJob")
                       if o["metadata"]["name"] == f"{options.name}-backup")
    assert options.identity_secret not in k8s.to_yaml([backup_cron])
    assert "AGE-SECRET-KEY" not in k8s.to_yaml([backup_cron])
    for role in ("verify", "restore"):
        pod = found[role]
        assert options.identity_secret in secret_names(pod)
        [volume] = [v for v in pod["volumes"] if v["name"] == "age-identity"]
        assert volume["secret"]["defaultMode"] == 0o440
        mount = next(m for m in pod["containers"][0]["volumeMounts"]
                     if m["name"] == "age-identity")
        assert mount["readOnly"] is True
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["PREFECT_DR_AGE_IDENTITY_FILE"] == f"{mount['mountPath']}/identity.txt"


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_each_job_gets_only_its_own_secrets(options):
    found = by_role(pods(everything(options)))
    for role, pod in found.items():
        expected = {options.s3_secrets[role]} if role in options.s3_secrets else set()
        if role != "prune":
            expected.add(options.database_secret)  # the database URL or PGPASSWORD
        if role in ("verify", "restore"):
            expected.add(options.identity_secret)
        if options.signing_key_secret and role != "prune":
            expected.add(options.signing_key_secret)
        if options.block_key_secret and role in ("backup", "restore"):
            expected.add(options.block_key_secret)
        if options.notify_secret:  # every job reports its failures
            expected.add(options.notify_secret)
        assert secret_names(pod) == expected, role


def test_example_secrets_hold_placeholders_only(tmp_path):
    for options in OPTIONS:
        secrets = by_kind(everything(options), "Secret")
        assert secrets
        for secret in secrets:
            assert "data" not in secret
            for key, value in secret["stringData"].items():
                assert k8s.PLACEHOLDER in value, key
    # the placeholder identity is refused loudly, never mistaken for a key
    [identity] = [s for s in k8s.example_secrets(k8s.RenderOptions())
                  if "identity.txt" in s["stringData"]]
    path = tmp_path / "identity.txt"
    path.write_text(identity["stringData"]["identity.txt"])
    with pytest.raises(CryptoKeyError, match="not an age secret key"):
        crypto.load_identities(path)


def test_no_s3_secrets_for_workload_identity():
    options = k8s.RenderOptions(s3_secrets={})
    objects = everything(options)
    assert not [s for s in by_kind(objects, "Secret") if "AWS_ACCESS_KEY_ID" in s["stringData"]]
    for pod in pods(objects).values():
        assert [e for e in pod["containers"][0]["envFrom"] if "secretRef" in e] == []


# ---- jobs and schedules ------------------------------------------------------------------

@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_cron_jobs_never_overlap_and_give_up_in_time(options):
    objects = everything(options)
    crons = {o["metadata"]["name"]: o["spec"] for o in by_kind(objects, "CronJob")}
    assert set(crons) == {f"{options.name}-{r}" for r in ("backup", "backup-incremental",
                                                           "prune", "verify")}
    assert crons[f"{options.name}-backup"]["schedule"] == options.backup_schedule
    assert crons[f"{options.name}-backup-incremental"]["schedule"] == \
        options.incremental_schedule == "30 * * * *"
    assert crons[f"{options.name}-verify"]["schedule"] == options.verify_schedule
    assert crons[f"{options.name}-prune"]["schedule"] == options.prune_schedule
    for spec in crons.values():
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["startingDeadlineSeconds"] == options.starting_deadline_seconds
        assert spec["timeZone"] == options.time_zone
    specs = job_specs(objects)
    assert specs["backup"]["activeDeadlineSeconds"] == options.backup_deadline_seconds
    assert specs["backup-incremental"]["activeDeadlineSeconds"] == \
        options.backup_deadline_seconds
    assert specs["verify"]["activeDeadlineSeconds"] == options.verify_deadline_seconds
    assert specs["prune"]["activeDeadlineSeconds"] == options.prune_deadline_seconds
    assert specs["restore"]["activeDeadlineSeconds"] == options.restore_deadline_seconds
    assert {r: s["backoffLimit"] for r, s in specs.items()} == {
        "backup": 2, "backup-incremental": 2, "prune": 1, "verify": 1, "restore": 0}
    for component, spec in specs.items():
        role = component.removesuffix("-incremental")  # the incremental job is a backup pod
        first = spec["podFailurePolicy"]["rules"][0]
        assert first["action"] == "FailJob"
        assert first["onExitCodes"] == {"containerName": role, "operator": "In",
                                        "values": [2, 10, 11, 12, 13, 14, 15, 16]}
    # an evicted restore is not retried behind the operator's back
    assert len(specs["restore"]["podFailurePolicy"]["rules"]) == 1


def test_commands_of_each_job():
    found = pods(everything())
    # every job that selects or takes a backup names its kind (a config-only backup must
    # never stand in for a full one)
    assert found["backup"]["containers"][0]["args"] == ["backup", "--kind", "full"]
    assert found["backup-incremental"]["containers"][0]["args"] == [
        "backup", "--kind", "incremental", "--lock-wait", "20m"]
    assert found["backup-incremental"]["serviceAccountName"] == \
        found["backup"]["serviceAccountName"]
    no_increments = pods(everything(dataclasses.replace(k8s.RenderOptions(),
                                                        incremental_schedule="")))
    assert "backup-incremental" not in no_increments
    assert found["prune"]["containers"][0]["args"] == ["prune"]
    assert found["verify"]["containers"][0]["args"] == ["verify", "--latest", "--kind", "full"]
    assert found["restore"]["containers"][0]["args"] == [
        "restore", "20260101T020000Z-abcdef", "--dry-run", "--jobs", "1"]
    full = pods(everything(full_options()))
    assert full["verify"]["containers"][0]["args"] == [
        "verify", "--latest", "--kind", "full", "--scratch-url",
        "postgresql://verify@scratch.internal:5432/postgres"]
    assert full["restore"]["containers"][0]["args"] == [
        "restore", "20261126T153000Z-a1b2c3", "--yes", "--jobs", "1"]


def test_restore_is_a_one_shot_job_created_by_hand_named_after_its_backup():
    [job] = by_kind(everything(), "Job")
    assert job["metadata"]["name"] == "prefect-dr-plan-20260101t020000z-abcdef"
    assert "generateName" not in job["metadata"]
    assert "kubectl create" in job["metadata"]["annotations"]["prefect-dr/description"]
    assert job["spec"]["ttlSecondsAfterFinished"] == 7 * 24 * 3600
    [real] = by_kind(everything(full_options()), "Job")
    assert real["metadata"]["name"] == "prod-dr-restore-20261126t153000z-a1b2c3"
    with pytest.raises(ValueError, match="names its backup"):
        k8s.restore_job(k8s.RenderOptions())
    with pytest.raises(ValueError, match="longer than 63"):
        k8s.restore_job(k8s.RenderOptions(name="a" * 40,
                                          restore_backup_id="20260101T020000Z-abcdef"))


def test_the_bundle_holds_only_what_apply_may_own():
    """No Secret (applying would overwrite the real credentials with placeholders), no
    generateName (kubectl apply refuses it), no restore Job: applying it twice is a no-op."""
    for options in OPTIONS:
        bundle = k8s.render(options)
        assert {o["kind"] for o in bundle} == {"ServiceAccount", "ConfigMap", "CronJob",
                                               "Deployment"}
        for obj in bundle:
            assert "generateName" not in obj["metadata"] and obj["metadata"]["name"]
        assert "REPLACE-ME" not in k8s.to_yaml(bundle)


def test_a_restore_job_streams_unless_a_staging_class_is_named():
    options = k8s.RenderOptions(restore_backup_id="20260101T020000Z-abcdef")
    pod = k8s.restore_job(options)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][-2:] == ["--jobs", "1"]
    assert {"name": "PREFECT_DR_STAGING_LIMIT", "value": str(1024 ** 3)} in container["env"]
    assert [v["emptyDir"]["sizeLimit"] for v in pod["volumes"] if "emptyDir" in v] == ["1Gi"]
    staged = k8s.restore_job(dataclasses.replace(
        options, restore_staging_class="fast-ssd", restore_staging_bytes=3 * 1024 ** 3 + 1))
    assert_valid(staged)
    pod = staged["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"][-2:] == ["--jobs", "0"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "staging"]
    claim = volume["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["storageClassName"] == "fast-ssd"
    assert claim["resources"]["requests"]["storage"] == "3073Mi"
    assert {"name": "PREFECT_DR_STAGING_DIR", "value": "/staging"} in pod["containers"][0]["env"]


@pytest.mark.parametrize(("schedule", "normalized"), [
    ("0 2 * * *", "0 2 * * *"), ("0 */6 * * *", "0 */6 * * *"), ("@daily", "@daily"),
    ("@HOURLY", "@hourly"), ("30 4 * * MON-FRI", "30 4 * * MON-FRI"),
    ("0 2 1,15 * *", "0 2 1,15 * *"), ("*/15 0-6 * * ?", "*/15 0-6 * * ?"),
    ("0 3 * JAN,JUL 0", "0 3 * JAN,JUL 0"), ("  0   2 * * *  ", "0 2 * * *"),
])
def test_good_schedules(schedule, normalized):
    assert k8s.validate_schedule(schedule) == normalized
    [cron] = [o for o in everything(k8s.RenderOptions(backup_schedule=schedule))
              if o["kind"] == "CronJob" and o["metadata"]["name"] == "prefect-dr-backup"]
    assert cron["spec"]["schedule"] == normalized


@pytest.mark.parametrize("schedule", [
    "", "0 2 * *", "0 2 * * * *", "61 * * * *", "0 24 * * *", "H 2 * * *", "0 2 L * *",
    "0 2 * * MON#1", "TZ=UTC 0 2 * * *", "0 2 31 2 *", "every day", "@every 1h", "0 2 * * 8",
])
def test_bad_schedules_raise_a_one_line_value_error(schedule):
    for field in ("backup_schedule", "verify_schedule", "prune_schedule"):
        with pytest.raises(ValueError) as info:
            everything(k8s.RenderOptions(**{field: schedule}))
        message = str(info.value)
        assert "\n" not in message
        assert repr(schedule) in message
        assert field.replace("_", " ") in message


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"database_url": "postgresql://prefect:hunter2@db/prefect"}, "must not carry a password"),
    ({"verify_scratch_url": "postgresql://v:pw@db/postgres"}, "must not carry a password"),
    ({"database_url": "mysql://db/prefect"}, "postgresql://"),
    ({"endpoint_url": "s3.example"}, "http"),
    ({"age_recipients": ("age1nope",)}, "recipient"),
    ({"retention_full": "keep-nothing=3"}, "retention_full"),
    ({"extra_env": {"PGPASSWORD": "x"}}, "secret"),
    ({"extra_env": {"AWS_SECRET_ACCESS_KEY": "x"}}, "secret"),
    ({"extra_env": {"PREFECT_DR_S3_BUCKET": "x"}}, "own option"),
    ({"extra_env": {"PREFECT_DR_BACKUP_CRON": "0 1 * * *"}}, "own option"),
    ({"pushgateway_url": "pgw:9091"}, "pushgateway_url"),
    ({"metrics_instance": " "}, "metrics_instance"),
    ({"extra_env": {"NOT VALID": "x"}}, "environment variable name"),
    ({"s3_secrets": {"backups": "x"}}, "unknown role"),
    ({"namespace": "Prefect_DR"}, "namespace"),
    ({"name": "x" * 46}, "45"),
    ({"time_zone": "Mars/Olympus"}, "time zone"),
    ({"restore_backup_id": "latest"}, "backup id"),
    ({"memory_limit": "512MB"}, "quantity"),
    ({"image": "bad image"}, "image"),
    ({"database_secret": "Bad_Name"}, "secret name"),
    ({"database_secret_key": "bad key"}, "Secret key"),
    ({"database_secret_key": "PGPASSWORD"}, "database_url .*is required"),
    ({"database_url": "postgresql://dr@db/prefect"}, "goes with a PGPASSWORD database Secret"),
    ({"extra_env": {"PREFECT_API_DATABASE_CONNECTION_URL": "x"}}, "secret"),
    ({"extra_env": {"PREFECT_SERVER_DATABASE_PASSWORD": "x"}}, "secret"),
])
def test_bad_options_raise_value_error(changes, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        everything(k8s.RenderOptions(**changes))
    assert "\n" not in str(info.value)
    assert "hunter2" not in str(info.value)


# ---- the database Secret -------------------------------------------------------------------

def _db_env(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in pod["containers"][0].get("env", ())
            if e["name"] in ("PGPASSWORD", "PREFECT_API_DATABASE_CONNECTION_URL")]


def test_by_default_the_jobs_read_the_url_from_prefect_helms_secret():
    objects = everything()
    for role, pod in pods(objects).items():
        expected = [] if role == "prune" else [{
            "name": "PREFECT_API_DATABASE_CONNECTION_URL", "valueFrom": {"secretKeyRef": {
                "name": "prefect-server-postgresql-connection", "key": "connection-string"}}}]
        assert _db_env(pod) == expected, role
    [cm] = by_kind(objects, "ConfigMap")
    assert "PREFECT_DR_DATABASE_URL" not in cm["data"]  # it would win over the Secret
    # Prefect's own Secret gets no placeholder example: applying it would break Prefect.
    names = {s["metadata"]["name"] for s in by_kind(objects, "Secret")}
    assert "prefect-server-postgresql-connection" not in names
    assert not any("PGPASSWORD" in s["stringData"] for s in by_kind(objects, "Secret"))


def test_a_secret_of_ones_own_and_the_password_only_mode():
    own = everything(k8s.RenderOptions(database_secret="prefect-db", database_secret_key="url"))
    assert _db_env(pods(own)["backup"]) == [{
        "name": "PREFECT_API_DATABASE_CONNECTION_URL",
        "valueFrom": {"secretKeyRef": {"name": "prefect-db", "key": "url"}}}]
    pw = everything(k8s.RenderOptions(database_secret="prefect-dr-database",
                                      database_secret_key="PGPASSWORD",
                                      database_url="postgresql://dr@db:5432/prefect"))
    assert _db_env(pods(pw)["verify"]) == [{
        "name": "PGPASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "prefect-dr-database", "key": "PGPASSWORD"}}}]
    [cm] = by_kind(pw, "ConfigMap")
    assert cm["data"]["PREFECT_DR_DATABASE_URL"] == "postgresql://dr@db:5432/prefect"
    [example] = [s for s in by_kind(pw, "Secret") if s["metadata"]["name"] == "prefect-dr-database"]
    assert example["stringData"] == {"PGPASSWORD": k8s.PLACEHOLDER}
    for objects in (own, pw):
        for obj in objects:
            assert_valid(obj)


def test_the_url_the_secret_holds_is_what_the_tool_reads():
    """A pod's environment as Kubernetes would build it (ConfigMap + the Secret's value)."""
    [cm] = by_kind(everything(), "ConfigMap")
    helm_value = "postgresql+asyncpg://prefect:Helm-Pw-91@prefect-server-postgresql.prefect:5432/server"
    settings = config.load(env={**cm["data"], "PREFECT_API_DATABASE_CONNECTION_URL": helm_value})
    assert settings.database_url == (
        "postgresql://prefect:Helm-Pw-91@prefect-server-postgresql.prefect:5432/server")
    assert settings.sources["database_url"] == "env PREFECT_API_DATABASE_CONNECTION_URL"


# ---- settings ----------------------------------------------------------------------------

# Read by the CLI's options (typer envvar), not by config.SPECS.
CLI_ENV = {"PREFECT_DR_PUSHGATEWAY_URL", "PREFECT_DR_METRICS_INSTANCE"}


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_configmap_holds_settings_the_tool_accepts(options):
    [cm] = by_kind(everything(options), "ConfigMap")
    data = cm["data"]
    known = {spec.env for spec in config.SPECS} | CLI_ENV
    assert set(data) <= known
    assert list(data) == sorted(data)
    settings = config.load(env=data)  # the tool's own validation, every problem at once
    # config.load does not know the CLI's metrics variables (yet) and warns about them
    assert {w for w in settings.warnings
            if not any(name in w for name in CLI_ENV)} == set()
    assert settings.s3_bucket == options.bucket
    assert settings.database_url == options.database_url
    assert "PGPASSWORD" not in data and not any(k.startswith("AWS_") for k in data)
    for pod in pods(everything(options)).values():
        assert env_names(pod) <= known | {"PGPASSWORD", "PREFECT_API_DATABASE_CONNECTION_URL"}


def test_metrics_get_a_stable_instance():
    assert "PREFECT_DR_PUSHGATEWAY_URL" not in k8s.config_env(k8s.RenderOptions())
    env = k8s.config_env(k8s.RenderOptions(pushgateway_url="http://pgw:9091", namespace="ops"))
    assert env["PREFECT_DR_PUSHGATEWAY_URL"] == "http://pgw:9091"
    assert env["PREFECT_DR_METRICS_INSTANCE"] == "ops/prefect-dr"
    env = k8s.config_env(full_options())
    assert env["PREFECT_DR_METRICS_INSTANCE"] == "prod"


def test_schedules_reach_status_only_in_utc():
    env = k8s.config_env(k8s.RenderOptions(backup_schedule="0 */6 * * *"))
    assert env["PREFECT_DR_BACKUP_CRON"] == "0 */6 * * *"
    assert env["PREFECT_DR_VERIFY_CRON"] == "0 4 * * *"
    for zone in ("Europe/Berlin", None):
        env = k8s.config_env(k8s.RenderOptions(time_zone=zone))
        assert "PREFECT_DR_BACKUP_CRON" not in env and "PREFECT_DR_VERIFY_CRON" not in env


def test_default_image_is_this_version():
    assert k8s.RenderOptions().image == f"ghcr.io/prefect-dr/prefect-dr:{__version__}"


# ---- YAML and the committed examples -----------------------------------------------------

def test_to_yaml_round_trips_and_is_stable():
    objects = everything(full_options())
    text = k8s.to_yaml(objects)
    assert list(yaml.safe_load_all(text)) == objects
    assert k8s.to_yaml(everything(full_options())) == text
    assert text.startswith("---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n")
    header = k8s.to_yaml(objects[:1], header="line one\nline two")
    assert header.startswith("# line one\n# line two\n---\n")


def test_committed_examples_equal_a_fresh_render():
    files = k8s.example_files()
    committed = {p.name for p in DEPLOY.glob("*.yaml")}
    assert committed == set(files), "run scripts/render-k8s (and remove stale files)"
    for name, text in files.items():
        assert (DEPLOY / name).read_text(encoding="utf-8") == text, (
            f"deploy/kubernetes/{name} is out of date: run scripts/render-k8s")
    for name in files:
        for obj in yaml.safe_load_all((DEPLOY / name).read_text(encoding="utf-8")):
            assert_valid(obj)


def test_render_script_writes_the_same_files(tmp_path):
    proc = subprocess.run([str(ROOT / "scripts" / "render-k8s"), str(tmp_path)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in k8s.EXAMPLE_FILES:
        assert (tmp_path / name).read_text() == (DEPLOY / name).read_text()


# ---- prefect-helm: the pre-upgrade hook ----------------------------------------------------

@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_pre_upgrade_hook_is_a_valid_helm_hook_before_the_migration(options):
    hook = k8s.pre_upgrade_hook(options)
    assert_valid(hook)
    notes = hook["metadata"]["annotations"]
    assert notes["helm.sh/hook"] == "pre-upgrade"
    assert int(notes["helm.sh/hook-weight"]) < k8s.MIGRATION_HOOK_WEIGHT == -5
    assert notes["helm.sh/hook-delete-policy"] == "before-hook-creation"  # logs kept
    assert hook["metadata"]["namespace"] == options.namespace
    assert hook["metadata"]["labels"]["app.kubernetes.io/component"] == "pre-upgrade-backup"
    spec = hook["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["backup", "--kind", "full", "--label", "trigger=pre-upgrade",
                                 "--lock-wait", "10m"]
    # a failed backup fails the Job (and so the upgrade): no endless retries, no retry at all
    # for what a retry cannot fix
    assert spec["backoffLimit"] <= 1 and spec["activeDeadlineSeconds"] > 0
    [fail] = [r for r in spec["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert set(fail["onExitCodes"]["values"]) == set(k8s.NO_RETRY_EXIT_CODES)
    # prefect-helm conventions and the backup job's least privilege
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["serviceAccountName"] == f"{options.name}-backup"
    assert "age-identity" not in [v["name"] for v in pod["volumes"]]
    env = {e["name"]: e for e in container.get("env", [])}
    ref = env.get("PREFECT_API_DATABASE_CONNECTION_URL") or env["PGPASSWORD"]
    assert ref["valueFrom"]["secretKeyRef"] == {"name": options.database_secret,
                                                "key": options.database_secret_key}
    # what it reuses is what render() creates in the same namespace
    objects = everything(options)
    names = {(o["kind"], o["metadata"].get("name")) for o in objects}
    assert ("ServiceAccount", pod["serviceAccountName"]) in names
    for source in container["envFrom"]:
        if "configMapRef" in source:
            assert ("ConfigMap", source["configMapRef"]["name"]) in names
        else:
            assert ("Secret", source["secretRef"]["name"]) in names
    # it goes into a Helm chart's templates/: nothing Helm would read as a template
    assert "{{" not in k8s.to_yaml([hook])


def test_default_database_secret_is_prefect_helms():
    hook = k8s.pre_upgrade_hook()
    [container] = hook["spec"]["template"]["spec"]["containers"]
    [env] = [e for e in container["env"] if e["name"] == "PREFECT_API_DATABASE_CONNECTION_URL"]
    assert env["valueFrom"]["secretKeyRef"] == {
        "name": "prefect-server-postgresql-connection", "key": "connection-string"}


def test_every_object_carries_the_recommended_labels():
    for obj in [*everything(full_options()), k8s.pre_upgrade_hook(),
                *k8s.monitoring(full_options())]:
        labels = obj["metadata"]["labels"]
        assert {"app.kubernetes.io/name", "app.kubernetes.io/instance",
                "app.kubernetes.io/component", "app.kubernetes.io/version",
                "app.kubernetes.io/managed-by"} <= set(labels), obj["kind"]


def test_notifications_come_from_a_secret():
    options = full_options()
    for pod in pods(everything(options)).values():
        [container] = pod["containers"]
        [env] = [e for e in container["env"] if e["name"] == "PREFECT_DR_NOTIFY"]
        assert env["valueFrom"]["secretKeyRef"] == {"name": "prefect-dr-notify", "key": "urls"}
    assert k8s.config_env(options)["PREFECT_DR_NOTIFY_ON"] == "always"
    [example] = [s for s in k8s.example_secrets(options)
                 if s["metadata"]["name"] == "prefect-dr-notify"]
    assert k8s.PLACEHOLDER in example["stringData"]["urls"]
    with pytest.raises(ValueError, match="is a secret"):
        everything(k8s.RenderOptions(extra_env={"PREFECT_DR_NOTIFY": "json://x/y"}))
    with pytest.raises(ValueError, match="notify_on"):
        everything(k8s.RenderOptions(notify_on="sometimes"))


# ---- Prometheus Operator -------------------------------------------------------------------

# Fields of the monitoring.coreos.com/v1 ServiceMonitor spec and endpoint that we render (the
# CRD is not in the Kubernetes client; the standard parts are checked with its models).
SERVICE_MONITOR_SPEC = {"selector", "namespaceSelector", "endpoints", "jobLabel",
                        "targetLabels", "podTargetLabels", "sampleLimit"}
ENDPOINT_FIELDS = {"port", "targetPort", "path", "scheme", "interval", "scrapeTimeout",
                   "honorLabels", "honorTimestamps", "relabelings", "metricRelabelings"}


def _meta_valid(obj):
    meta = obj["metadata"]
    model = API._ApiClient__deserialize(copy.deepcopy(meta), "V1ObjectMeta")
    assert API.sanitize_for_serialization(model) == meta


def test_prometheus_rule_holds_the_tested_alert_rules(tmp_path):
    rule, _ = k8s.monitoring(full_options())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    _meta_valid(rule)
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    prometheus = ROOT / "deploy" / "prometheus"
    packaged = ROOT / "prefect_dr" / "k8s" / "alerts.yml"
    assert packaged.read_text() == (prometheus / "alerts.yml").read_text(), \
        "copy deploy/prometheus/alerts.yml to prefect_dr/k8s/alerts.yml"
    assert rule["spec"]["groups"] == [*yaml.safe_load(
        (prometheus / "alerts.yml").read_text())["groups"],
        kube_alert_group(full_options())]
    import shutil

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    # the rendered groups are valid rules; that they fire and stay silent as documented is
    # promtool's unit test of the same groups (test_deploy.test_alert_rule_unit_tests_pass,
    # asserted equal above; the kube-state-metrics group: tests/test_k8s_alerts.py)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rule["spec"]))
    proc = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_service_monitor_scrapes_the_pushgateway_with_honor_labels():
    [_, monitor] = k8s.monitoring(full_options())
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1",
                                                        "ServiceMonitor")
    _meta_valid(monitor)
    spec = monitor["spec"]
    assert set(spec) <= SERVICE_MONITOR_SPEC
    selector = API._ApiClient__deserialize(copy.deepcopy(spec["selector"]), "V1LabelSelector")
    assert API.sanitize_for_serialization(selector) == spec["selector"]
    assert spec["namespaceSelector"] == {"matchNames": ["monitoring"]}  # from the URL
    [endpoint] = spec["endpoints"]
    assert set(endpoint) <= ENDPOINT_FIELDS and endpoint["honorLabels"] is True
    [_, other] = k8s.monitoring(k8s.RenderOptions(namespace="ops"))
    assert other["spec"]["namespaceSelector"] == {"matchNames": ["ops"]}
    with pytest.raises(ValueError, match="not a valid Kubernetes label"):
        k8s.monitoring(k8s.RenderOptions(prometheus_labels={"release": "a b"}))


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PREFECT_DR_", "AWS_", "PG", "PREFECT_"))}


def test_cli_renders_the_hook_and_the_monitoring_objects():
    proc = subprocess.run(
        [sys.executable, "-m", "prefect_dr", "k8s", "render", "--pre-upgrade-hook",
         "--prometheus-rule", "--namespace", "prefect", "--prometheus-label", "release=kps"],
        capture_output=True, text=True, env=_clean_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# Helm pre-upgrade hook")
    docs = list(yaml.safe_load_all(proc.stdout))
    assert [d["kind"] for d in docs] == ["Job", "PrometheusRule", "ServiceMonitor",
                                         "PodMonitor"]
    assert {d["metadata"]["namespace"] for d in docs} == {"prefect"}
    assert docs[1]["metadata"]["labels"]["release"] == "kps"
    assert_valid(docs[0])


def test_a_password_only_secret_under_any_key_from_the_settings():
    """prefect-helm's externalDatabase password Secret: --database-password-secret NAME:KEY;
    the URL (user, host, database) goes into the ConfigMap without its password."""
    settings = config.load(env={
        "PREFECT_DR_S3_BUCKET": "acme-backups", "PREFECT_DR_AGE_RECIPIENTS": RECIPIENT,
        "PREFECT_DR_DATABASE_URL": "postgresql://dr@db.internal:5432/prefect"})
    options = k8s.options_from_settings(settings, database_password_secret="prefect-db:password")
    objects = everything(options)
    backup = pods(objects)["backup"]
    [env] = [e for e in backup["containers"][0]["env"] if e["name"] == "PGPASSWORD"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "prefect-db", "key": "password"}
    assert "PREFECT_API_DATABASE_CONNECTION_URL" not in env_names(backup)
    [cm] = by_kind(objects, "ConfigMap")
    assert cm["data"]["PREFECT_DR_DATABASE_URL"] == "postgresql://dr@db.internal:5432/prefect"
    [template] = [s for s in by_kind(objects, "Secret") if s["metadata"]["name"] == "prefect-db"]
    assert set(template["stringData"]) == {"password"}
    with pytest.raises(ValueError, match="NAME:KEY"):
        k8s.options_from_settings(settings, database_password_secret="prefect-db")
    with pytest.raises(ValueError, match="database_url"):
        everything(k8s.RenderOptions(database_secret="x", database_secret_key="password",
                                     database_secret_is_password=True))


def test_cli_secret_templates_and_one_line_usage_errors():
    def render(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "prefect_dr", "k8s", "render", *args],
                              capture_output=True, text=True, env=_clean_env())

    templates = render("--secret-templates")
    assert templates.returncode == 0, templates.stderr
    docs = list(yaml.safe_load_all(templates.stdout))
    assert {d["kind"] for d in docs} == {"Secret"} and templates.stdout.startswith("# Secret")
    bundle = render()
    assert bundle.returncode == 0 and "kind: Secret" not in bundle.stdout
    for args, fragment in ((["--yes"], "go with --restore-job"),
                           (["--staging-storage-class", "ssd"], "go with --restore-job"),
                           (["--database-password-secret", "db"], "NAME:KEY")):
        bad = render(*args)
        assert bad.returncode == 2, bad.stderr
        assert fragment in bad.stderr and "Traceback" not in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
