"""The objects of the jobs: labels and metadata, the settings ConfigMap, hardened pods, Jobs and
CronJobs, example Secrets and the restore Job. Pure functions of :class:`RenderOptions`."""

from __future__ import annotations

from typing import Any

from prefect_dr import __version__
from prefect_dr.k8s import repository
from prefect_dr.k8s.options import (
    BLOCK_KEY,
    BLOCK_KEY_DIR,
    DATABASE_URL_ENV,
    IDENTITY_DIR,
    IDENTITY_KEY,
    NO_RETRY_EXIT_CODES,
    NOTIFY_KEY,
    PASSWORD_KEY,
    PLACEHOLDER,
    SIGNING_DIR,
    SIGNING_KEY,
    UID,
    UTC_ZONES,
    RenderOptions,
    password_only,
    restore_job_name,
    validate_schedule,
)
from prefect_dr.kinds import POLICY_ROWS

STAGING_DIR = "/staging"
TMP_SIZE_LIMIT = "1Gi"  # every pod's /tmp emptyDir
TMP_SIZE_BYTES = 1024 ** 3


def labels(options: RenderOptions, component: str) -> dict[str, str]:
    """The recommended labels (as prefect-helm's bitnami ``common.labels.standard`` sets
    them, with ``app.kubernetes.io/component``)."""
    return {
        "app.kubernetes.io/name": "prefect-dr",
        "app.kubernetes.io/instance": options.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/version": __version__,
        "app.kubernetes.io/managed-by": "prefect-dr",
    }


def metadata(options: RenderOptions, name: str, component: str, description: str
             ) -> dict[str, Any]:
    """A fixed name (never generateName: ``kubectl apply`` refuses it), namespace, the
    recommended labels and a description."""
    meta: dict[str, Any] = {"name": name, "namespace": options.namespace}
    meta["labels"] = labels(options, component)
    meta["annotations"] = {"prefect-dr/description": description}
    return meta


def config_env(options: RenderOptions) -> dict[str, str]:
    """The ConfigMap's data: the non-secret settings as environment variables, sorted.

    The backup and verify schedules are passed on (PREFECT_DR_BACKUP_CRON/_VERIFY_CRON, which
    ``prefect-dr status`` judges freshness by) only when the CronJobs run in UTC, the time
    zone ``status`` reads them in.
    """
    env: dict[str, str] = {
        **repository.config_env(options),
        "PREFECT_DR_AGE_RECIPIENTS": ",".join(options.age_recipients),
    }
    optional = {
        "PREFECT_DR_DATABASE_URL": options.database_url,
        "PREFECT_API_URL": options.prefect_api_url,
        **{row.retention_env: getattr(options, row.retention_setting)
           for row in POLICY_ROWS},
        "PREFECT_DR_VERIFY_KEY": options.verify_key,
        "PREFECT_DR_PUSHGATEWAY_URL": options.pushgateway_url,
        "PREFECT_DR_NOTIFY_ON": options.notify_on,
    }
    if options.pushgateway_url:
        optional["PREFECT_DR_METRICS_INSTANCE"] = (
            options.metrics_instance or f"{options.namespace}/{options.name}")
    if options.time_zone in UTC_ZONES:
        optional["PREFECT_DR_BACKUP_CRON"] = validate_schedule(options.backup_schedule)
        optional["PREFECT_DR_VERIFY_CRON"] = validate_schedule(options.verify_schedule)
    env.update({k: v for k, v in optional.items() if v is not None})
    env.update(options.extra_env)
    return dict(sorted(env.items()))


def _secret_volume(name: str, secret: str, key: str) -> dict[str, Any]:
    # 0440 + fsGroup: readable by the image's group only (kubelet adds group read anyway).
    return {"name": name, "secret": {"secretName": secret, "defaultMode": 0o440,
                                     "items": [{"key": key, "path": key}]}}


def pod_spec(options: RenderOptions, role: str, args: list[str]) -> dict[str, Any]:
    """The pod of one job: hardened, the tool as PID 1, only the secrets this role needs."""
    env: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]  # noqa: S108
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}}]
    if role != "prune":  # prune only talks to the repository
        name = PASSWORD_KEY if password_only(options) else DATABASE_URL_ENV
        env.append({"name": name, "valueFrom": {"secretKeyRef": {
            "name": options.database_secret, "key": options.database_secret_key}}})
    if role in ("verify", "restore"):
        env.append({"name": "PREFECT_DR_AGE_IDENTITY_FILE",
                    "value": f"{IDENTITY_DIR}/{IDENTITY_KEY}"})
        mounts.append({"name": "age-identity", "mountPath": IDENTITY_DIR, "readOnly": True})
        volumes.append(_secret_volume("age-identity", options.identity_secret, IDENTITY_KEY))
    if options.signing_key_secret and role in ("backup", "verify", "restore"):
        env.append({"name": "PREFECT_DR_SIGNING_KEY_FILE",
                    "value": f"{SIGNING_DIR}/{SIGNING_KEY}"})
        mounts.append({"name": "signing-key", "mountPath": SIGNING_DIR, "readOnly": True})
        volumes.append(_secret_volume("signing-key", options.signing_key_secret, SIGNING_KEY))
    if options.block_key_secret and role in ("backup", "restore"):
        env.append({"name": "PREFECT_DR_PREFECT_ENCRYPTION_KEY_FILE",
                    "value": f"{BLOCK_KEY_DIR}/{BLOCK_KEY}"})
        mounts.append({"name": "block-key", "mountPath": BLOCK_KEY_DIR, "readOnly": True})
        volumes.append(_secret_volume("block-key", options.block_key_secret, BLOCK_KEY))
    if options.notify_secret:
        env.append({"name": "PREFECT_DR_NOTIFY", "valueFrom": {"secretKeyRef": {
            "name": options.notify_secret, "key": NOTIFY_KEY}}})
    env_from: list[dict[str, Any]] = [{"configMapRef": {"name": options.name}}]
    repository.add_to_pod(options, role, env=env, env_from=env_from, mounts=mounts,
                          volumes=volumes)
    container: dict[str, Any] = {
        "name": role,
        "image": options.image,
        "imagePullPolicy": options.image_pull_policy,
        "args": args,
        "envFrom": env_from,
        **({"env": env} if env else {}),
        "resources": {
            "requests": {"cpu": options.cpu_request, "memory": options.memory_request},
            "limits": {"cpu": options.cpu_limit, "memory": options.memory_limit},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    return {
        "serviceAccountName": f"{options.name}-{role}",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,  # no *_SERVICE_HOST variables (a Service named
        # prefect-dr-... would otherwise inject PREFECT_DR_* variables)
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": options.termination_grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }


def job_spec(options: RenderOptions, role: str, args: list[str], *, deadline: int,
              backoff: int, ttl: int | None = None) -> dict[str, Any]:
    rules: list[dict[str, Any]] = [
        {"action": "FailJob", "onExitCodes": {"containerName": role, "operator": "In",
                                              "values": list(NO_RETRY_EXIT_CODES)}},
    ]
    if backoff > 0:  # an eviction or preemption is not the tool's failure: retry for free
        rules.append({"action": "Ignore",
                      "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]})
    spec: dict[str, Any] = {"backoffLimit": backoff, "activeDeadlineSeconds": deadline}
    if ttl is not None:
        spec["ttlSecondsAfterFinished"] = ttl
    return {
        **spec,
        "podFailurePolicy": {"rules": rules},
        "template": {
            "metadata": {"labels": {**labels(options, role),
                                    **repository.pod_labels(options, role)}},
            "spec": pod_spec(options, role, args),
        },
    }


def cron_job(options: RenderOptions, role: str, schedule: str, args: list[str], *,
              deadline: int, backoff: int, description: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"schedule": validate_schedule(schedule, f"{role} schedule")}
    if options.time_zone:
        spec["timeZone"] = options.time_zone
    spec.update({
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": options.starting_deadline_seconds,
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
        "jobTemplate": {
            "metadata": {"labels": labels(options, role)},
            "spec": job_spec(options, role, args, deadline=deadline, backoff=backoff),
        },
    })
    return {"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": metadata(options, f"{options.name}-{role}", role, description),
            "spec": spec}


def _secret(options: RenderOptions, name: str, component: str, description: str,
            data: dict[str, str]) -> dict[str, Any]:
    meta = metadata(options, name, component, description)
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque",
            "stringData": data}


def example_secrets(options: RenderOptions) -> list[dict[str, Any]]:
    """Example Secrets: the names and keys the jobs read, with placeholder values only."""
    out = [_secret(options, name, role, description, data)
           for role, name, description, data in repository.example_secrets(options)]
    if password_only(options):  # a connection-string Secret is Prefect's
        out.append(_secret(options, options.database_secret, "database",
                           "Password of the role in PREFECT_DR_DATABASE_URL (libpq PGPASSWORD)",
                           {options.database_secret_key: PLACEHOLDER}))
    out.append(_secret(options, options.identity_secret, "age-identity",
                       "age identity (private key); mounted into verify and restore only, "
                       "never into backup",
                       {IDENTITY_KEY: "# from 'prefect-dr keygen -o identity.txt'\n"
                                      f"AGE-SECRET-KEY-1{PLACEHOLDER}\n"}))
    if options.signing_key_secret:
        out.append(_secret(options, options.signing_key_secret, "signing-key",
                           "Ed25519 key that signs manifests and verification records",
                           {SIGNING_KEY: "# from 'prefect-dr keygen --signing -o "
                                         f"signing-key.pem'\n{PLACEHOLDER}\n"}))
    if options.notify_secret:
        out.append(_secret(options, options.notify_secret, "notify",
                           "apprise URLs notified of failures (PREFECT_DR_NOTIFY); they hold "
                           "tokens", {NOTIFY_KEY: f"json://{PLACEHOLDER}.example/hook"}))
    if options.block_key_secret:
        out.append(_secret(options, options.block_key_secret, "block-key",
                           "Prefect's block key (PREFECT_SERVER_ENCRYPTION_KEY), escrowed "
                           "into backups", {BLOCK_KEY: PLACEHOLDER}))
    return out


def restore_job(options: RenderOptions) -> dict[str, Any]:
    """The restore Job of ``restore_backup_id``, named after it (:func:`restore_job_name`):
    ``kubectl create -f`` it; ``--dry-run`` unless ``restore_dry_run`` is False.

    It never outgrows its pod: without ``restore_staging_class`` it streams the dump into
    pg_restore (``--jobs 1``, nothing staged in the 1 GiB /tmp); with one, the dump is staged
    on a generic ephemeral volume of that StorageClass sized from the manifest and restored
    with one pg_restore job per CPU of the pod. Raises ValueError without a backup id."""
    name = restore_job_name(options)
    assert options.restore_backup_id is not None  # restore_job_name checked it
    staged = options.restore_staging_class is not None
    args = ["restore", options.restore_backup_id,
            "--dry-run" if options.restore_dry_run else "--yes",
            "--jobs", "0" if staged else "1"]
    what = ("prints the restore plan and changes nothing" if options.restore_dry_run
            else "RESTORES the backup over the live database (the old one is kept)")
    # Kept a week after it finishes, logs included: the restore's record for the post-mortem.
    spec = job_spec(options, "restore", args, deadline=options.restore_deadline_seconds,
                     backoff=0, ttl=7 * 24 * 3600)
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    env = container.setdefault("env", [])
    if staged:
        env.append({"name": "PREFECT_DR_STAGING_DIR", "value": STAGING_DIR})
        container["volumeMounts"].append({"name": "staging", "mountPath": STAGING_DIR})
        mib = -(-int(options.restore_staging_bytes or 0) // (1024 * 1024))
        pod["volumes"].append({"name": "staging", "ephemeral": {"volumeClaimTemplate": {
            "metadata": {"labels": labels(options, "restore")},
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "storageClassName": options.restore_staging_class,
                     "resources": {"requests": {"storage": f"{mib}Mi"}}}}}})
    else:  # if someone raises --jobs, the space check knows the emptyDir's sizeLimit
        env.append({"name": "PREFECT_DR_STAGING_LIMIT", "value": str(TMP_SIZE_BYTES)})
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": metadata(options, name, "restore",
                                  f"Backup {options.restore_backup_id}: run with 'kubectl "
                                  f"create -f' (its name is fixed: delete it to run it "
                                  f"again); {what}"),
            "spec": spec}
