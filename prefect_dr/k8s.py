"""Kubernetes objects that run prefect-dr: pure functions from options to manifests.

``render(options)`` returns plain dicts (ready for ``to_yaml`` or a Kubernetes client):

- one ServiceAccount per job (``<name>-backup``, ``-prune``, ``-verify``, ``-restore``), so
  each can be bound to its own least-privilege cloud role (IRSA, Pod Identity, Workload
  Identity); no Kubernetes API token is mounted;
- a ConfigMap ``<name>`` with the non-secret ``PREFECT_DR_*`` settings;
- example Secrets holding placeholders only (S3 credentials per job, the age identity,
  optionally PGPASSWORD, the signing key and Prefect's block key);
- CronJobs ``<name>-backup``, ``<name>-prune`` and ``<name>-verify``;
- a restore Job (``generateName: <name>-restore-``, created by hand, ``--dry-run`` unless
  asked otherwise).

Design choices (docs/deploy.md explains them for operators):

- **The database URL comes from Prefect's own Secret** by default: the prefect-helm chart keeps
  ``postgresql+asyncpg://user:password@host:port/db`` in ``prefect-server-postgresql-connection``
  (key ``connection-string``); the jobs get it as ``PREFECT_API_DATABASE_CONNECTION_URL``, which
  prefect-dr reads when ``PREFECT_DR_DATABASE_URL`` is unset. No example is rendered for that
  Secret (applying a placeholder over it would break Prefect). With the key ``PGPASSWORD``
  instead, the Secret holds only a password and ``database_url`` goes into the ConfigMap.

- **Backup and prune are two CronJobs**, not ``sh -c 'prefect-dr backup && prefect-dr prune'``:
  the tool stays PID 1 with its own SIGTERM handler (a shell as PID 1 would not forward the
  deadline's SIGTERM, the backup would be SIGKILLed and leave an *incomplete* instead of a
  *failed* record); each step has its own exit code, deadline, retries and history; and the
  backup's credentials need no ``s3:DeleteObject`` on backups, so a leaked backup credential
  cannot destroy the repository. Prune never removes a running backup (its grace period), so
  the two need no ordering; by default prune runs after verify so ``min-verified`` counts the
  newest verification.
- **The age identity is mounted only into verify and restore.** Backups are encrypted to
  public recipients; the pod that runs every day next to the live database cannot decrypt a
  single backup.
- **Restore is a Job created by hand** (``kubectl create -f``), never applied with the rest:
  ``generateName`` gives every run a fresh Job (a Job's pod template is immutable), and the
  default arguments are ``restore --latest --dry-run``, so creating it by mistake prints the
  plan and changes nothing. A real restore names the backup and passes ``--yes`` (the tool
  refuses to restore without a terminal and without ``--yes``); ``restore_backup_id`` and
  ``restore_dry_run=False`` render exactly that. ``backoffLimit: 0``: never retried
  automatically.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefect_dr import __version__, cron, crypto, layout, retention
from prefect_dr.errors import CryptoKeyError
from prefect_dr.kinds import Kind

UID = 10001  # the image's user and group (Dockerfile)
ROLES = ("backup", "prune", "verify", "restore")
IDENTITY_KEY = "identity.txt"
SIGNING_KEY = "signing-key.pem"
BLOCK_KEY = "encryption-key"
IDENTITY_DIR = "/etc/prefect-dr/age"
SIGNING_DIR = "/etc/prefect-dr/signing"
BLOCK_KEY_DIR = "/etc/prefect-dr/block-key"
PLACEHOLDER = "REPLACE-ME"
DEFAULT_IMAGE = f"ghcr.io/prefect-dr/prefect-dr:{__version__}"

# Exit codes a retry cannot fix (docs/exit-codes.md): usage, not found, lock held, key error,
# verification failed, schema refused. The Job fails at once instead of retrying.
NO_RETRY_EXIT_CODES = (2, 10, 11, 12, 13, 14)

# Settings render() manages itself; extra_env must not set them.
_MANAGED_ENV = frozenset({
    "PREFECT_DR_DATABASE_URL", "PREFECT_DR_S3_BUCKET", "PREFECT_DR_S3_PREFIX",
    "PREFECT_DR_S3_ENDPOINT_URL", "PREFECT_DR_S3_REGION", "PREFECT_DR_AGE_RECIPIENTS",
    "PREFECT_API_URL", "PREFECT_DR_RETENTION_FULL", "PREFECT_DR_RETENTION_CONFIG_ONLY",
    "PREFECT_DR_VERIFY_KEY", "PREFECT_DR_AGE_IDENTITY_FILE", "PREFECT_DR_SIGNING_KEY_FILE",
    "PREFECT_DR_PREFECT_ENCRYPTION_KEY_FILE", "PREFECT_DR_BACKUP_CRON", "PREFECT_DR_VERIFY_CRON",
    "PREFECT_DR_PUSHGATEWAY_URL", "PREFECT_DR_METRICS_INSTANCE",
})
_UTC_ZONES = frozenset({"Etc/UTC", "UTC"})
# Secrets never go into a ConfigMap.
_SECRET_ENV = frozenset({
    "PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PREFECT_SERVER_ENCRYPTION_KEY",
    "PREFECT_API_KEY", "PREFECT_API_DATABASE_CONNECTION_URL",
    "PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_PASSWORD",
    "PREFECT_SERVER_DATABASE_PASSWORD",
})
PASSWORD_KEY = "PGPASSWORD"  # noqa: S105 - a key name: that Secret holds only the password
DATABASE_URL_ENV = "PREFECT_API_DATABASE_CONNECTION_URL"  # what a connection-string Secret sets
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")


def _default_s3_secrets() -> dict[str, str]:
    return {role: f"prefect-dr-s3-{role}" for role in ROLES}


@dataclass(frozen=True)
class RenderOptions:
    """What to render. Every default renders a working shape with example values.

    Values here end up in a ConfigMap or in arguments, never secrets. The database URL comes
    from ``database_secret`` (key ``database_secret_key``; by default prefect-helm's Secret) as
    ``PREFECT_API_DATABASE_CONNECTION_URL``; with the key ``PGPASSWORD`` the Secret holds only
    the password and ``database_url`` (no password in it) goes into the ConfigMap. The scratch
    URL must not carry a password either.
    Schedules are standard 5-field cron expressions (or ``@daily``-style macros) read in
    ``time_zone``.
    """

    namespace: str = "prefect-dr"
    name: str = "prefect-dr"  # prefix of every object name; also app.kubernetes.io/instance
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    backup_schedule: str = "0 2 * * *"
    verify_schedule: str = "0 4 * * *"
    prune_schedule: str = "0 6 * * *"
    time_zone: str | None = "Etc/UTC"  # CronJob spec.timeZone (Kubernetes >= 1.27)
    # Non-secret settings (ConfigMap)
    bucket: str = "example-prefect-backups"
    prefix: str = "prefect-dr"
    endpoint_url: str | None = None  # S3-compatible store (MinIO, SeaweedFS, Ceph, R2...)
    region: str | None = "us-east-1"
    database_url: str | None = None  # only with a PGPASSWORD database Secret
    prefect_api_url: str | None = "http://prefect-server.prefect.svc:4200/api"
    age_recipients: tuple[str, ...] = ()  # empty: the backup fails until recipients are set
    retention_full: str | None = "keep-daily=7,keep-weekly=4,keep-monthly=12,min-verified=1"
    retention_config_only: str | None = None
    verify_key: str | None = None  # base64 Ed25519 public key manifests must be signed by
    verify_scratch_url: str | None = None  # verify's scratch server (default: the database's)
    # Metrics: every job pushes to this Pushgateway (job="prefect-dr"), with a stable instance
    # label (default "<namespace>/<name>"; a pod's host name changes with every run).
    pushgateway_url: str | None = None
    metrics_instance: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)  # more non-secret settings
    # Secret names
    database_secret: str = "prefect-server-postgresql-connection"  # noqa: S105 - a name
    database_secret_key: str = "connection-string"  # noqa: S105 - or PGPASSWORD (+ database_url)
    identity_secret: str = "prefect-dr-age-identity"  # noqa: S105 - key identity.txt
    # role -> Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; a role left out gets no
    # credential Secret (IRSA, EKS Pod Identity, node role): annotate its ServiceAccount.
    s3_secrets: Mapping[str, str] = field(default_factory=_default_s3_secrets)
    signing_key_secret: str | None = None  # key signing-key.pem (backup, verify, restore)
    block_key_secret: str | None = None  # key encryption-key (backup, restore's safety backup)
    # Restore Job
    restore_backup_id: str | None = None  # None: --latest
    restore_dry_run: bool = True  # False: --yes (a real restore)
    # Timing
    starting_deadline_seconds: int = 3600
    backup_deadline_seconds: int = 6 * 3600
    verify_deadline_seconds: int = 8 * 3600
    prune_deadline_seconds: int = 3600
    restore_deadline_seconds: int = 12 * 3600
    termination_grace_seconds: int = 120  # time to abort uploads / drop scratch on SIGTERM
    # Resources (per container). The backup streams; its memory does not grow with the DB.
    cpu_request: str = "500m"
    cpu_limit: str = "2"
    memory_request: str = "256Mi"
    memory_limit: str = "512Mi"


def validate_schedule(expression: str, what: str = "schedule") -> str:
    """Return ``expression`` normalized if Kubernetes and croniter both accept it (cron.validate).
    Raises ValueError (one line)."""
    return cron.validate(expression, what)


def _check(options: RenderOptions) -> None:
    """Raise ValueError naming the first bad option."""
    if not _DNS_LABEL.match(options.namespace) or len(options.namespace) > 63:
        raise ValueError(f"namespace {options.namespace!r} is not a valid DNS label")
    # CronJob names are limited to 52 characters; "-verify" is the longest suffix.
    if not _DNS_LABEL.match(options.name) or len(options.name) > 45:
        raise ValueError(f"name {options.name!r} must be a DNS label of at most 45 characters")
    if not options.image or any(c.isspace() for c in options.image):
        raise ValueError(f"image {options.image!r} is not an image reference")
    if options.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
        raise ValueError("image_pull_policy must be Always, IfNotPresent or Never")
    for what in ("backup_schedule", "verify_schedule", "prune_schedule"):
        validate_schedule(getattr(options, what), what.replace("_", " "))
    if options.metrics_instance is not None and not options.metrics_instance.strip():
        raise ValueError("metrics_instance must not be empty")
    if options.time_zone is not None:
        try:
            ZoneInfo(options.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"time zone {options.time_zone!r} is not an IANA time zone name "
                             "(e.g. Etc/UTC, Europe/Berlin)") from None
    if not options.bucket:
        raise ValueError("bucket is required")
    for what in ("database_url", "verify_scratch_url"):
        url = getattr(options, what)
        if url is None:
            continue
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(f"{what} must start with postgresql://")
        if parts.password:
            raise ValueError(f"{what} must not carry a password (it would be stored in a "
                             "ConfigMap or in the pod's arguments); the password comes from "
                             "the database Secret (PGPASSWORD)")
    if not _SECRET_KEY.match(options.database_secret_key):
        raise ValueError(f"database secret key {options.database_secret_key!r} is not a valid "
                         "Secret key (letters, digits, '-', '_', '.')")
    if options.database_secret_key == PASSWORD_KEY and not options.database_url:
        raise ValueError("a PGPASSWORD database Secret holds only the password: database_url "
                         "(PREFECT_DR_DATABASE_URL) is required")
    if options.database_secret_key != PASSWORD_KEY and options.database_url:
        raise ValueError(f"database_url goes with a PGPASSWORD database Secret; the Secret "
                         f"{options.database_secret} (key {options.database_secret_key}) "
                         "holds the URL itself")
    for what in ("endpoint_url", "prefect_api_url", "pushgateway_url"):
        url = getattr(options, what)
        if url is not None and urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"{what} must be an http(s):// URL")
    for recipient in options.age_recipients:
        try:
            crypto.parse_recipient(recipient)
        except CryptoKeyError as exc:
            raise ValueError(exc.message) from None
    for what in ("retention_full", "retention_config_only"):
        text = getattr(options, what)
        if text is not None:
            try:
                retention.parse_policy(text)
            except retention.PolicyError as exc:
                raise ValueError(f"{what}: {exc.message}") from None
    for key in options.extra_env:
        if not _ENV_NAME.match(key):
            raise ValueError(f"extra_env: {key!r} is not an environment variable name")
        if key in _MANAGED_ENV:
            raise ValueError(f"extra_env: {key} is set by its own option")
        if key in _SECRET_ENV or key.startswith("AWS_"):
            raise ValueError(f"extra_env: {key} is a secret; put it in a Secret, not a ConfigMap")
    unknown = sorted(set(options.s3_secrets) - set(ROLES))
    if unknown:
        raise ValueError(f"s3_secrets: unknown role {unknown[0]!r} (one of {', '.join(ROLES)})")
    secrets = [options.database_secret, options.identity_secret, *options.s3_secrets.values(),
               options.signing_key_secret, options.block_key_secret]
    for secret in secrets:
        if secret is not None and (not _DNS_SUBDOMAIN.match(secret) or len(secret) > 253):
            raise ValueError(f"secret name {secret!r} is not a valid Kubernetes name")
    if (options.restore_backup_id is not None
            and not layout.BACKUP_ID_RE.match(options.restore_backup_id)):
        raise ValueError(f"restore_backup_id {options.restore_backup_id!r} is not a backup id "
                         "(YYYYMMDDTHHMMSSZ-xxxxxx)")
    for what in ("starting_deadline_seconds", "backup_deadline_seconds",
                 "verify_deadline_seconds", "prune_deadline_seconds",
                 "restore_deadline_seconds", "termination_grace_seconds"):
        if getattr(options, what) < 1:
            raise ValueError(f"{what} must be positive")
    for what in ("cpu_request", "cpu_limit", "memory_request", "memory_limit"):
        if not _QUANTITY.match(getattr(options, what)):
            raise ValueError(f"{what} {getattr(options, what)!r} is not a Kubernetes quantity")


def _labels(options: RenderOptions, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "prefect-dr",
        "app.kubernetes.io/instance": options.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/version": __version__,
    }


def _metadata(options: RenderOptions, name: str, component: str, description: str,
              *, generate: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"generateName": f"{name}-"} if generate else {"name": name}
    meta["namespace"] = options.namespace
    meta["labels"] = _labels(options, component)
    meta["annotations"] = {"prefect-dr/description": description}
    return meta


def config_env(options: RenderOptions) -> dict[str, str]:
    """The ConfigMap's data: the non-secret settings as environment variables, sorted.

    The backup and verify schedules are passed on (PREFECT_DR_BACKUP_CRON/_VERIFY_CRON, which
    ``prefect-dr status`` judges freshness by) only when the CronJobs run in UTC, the time
    zone ``status`` reads them in.
    """
    env: dict[str, str] = {
        "PREFECT_DR_S3_BUCKET": options.bucket,
        "PREFECT_DR_S3_PREFIX": options.prefix,
        "PREFECT_DR_AGE_RECIPIENTS": ",".join(options.age_recipients),
    }
    optional = {
        "PREFECT_DR_DATABASE_URL": options.database_url,
        "PREFECT_DR_S3_ENDPOINT_URL": options.endpoint_url,
        "PREFECT_DR_S3_REGION": options.region,
        "PREFECT_API_URL": options.prefect_api_url,
        "PREFECT_DR_RETENTION_FULL": options.retention_full,
        "PREFECT_DR_RETENTION_CONFIG_ONLY": options.retention_config_only,
        "PREFECT_DR_VERIFY_KEY": options.verify_key,
        "PREFECT_DR_PUSHGATEWAY_URL": options.pushgateway_url,
    }
    if options.pushgateway_url:
        optional["PREFECT_DR_METRICS_INSTANCE"] = (
            options.metrics_instance or f"{options.namespace}/{options.name}")
    if options.time_zone in _UTC_ZONES:
        optional["PREFECT_DR_BACKUP_CRON"] = validate_schedule(options.backup_schedule)
        optional["PREFECT_DR_VERIFY_CRON"] = validate_schedule(options.verify_schedule)
    env.update({k: v for k, v in optional.items() if v is not None})
    env.update(options.extra_env)
    return dict(sorted(env.items()))


def _secret_volume(name: str, secret: str, key: str) -> dict[str, Any]:
    # 0440 + fsGroup: readable by the image's group only (kubelet adds group read anyway).
    return {"name": name, "secret": {"secretName": secret, "defaultMode": 0o440,
                                     "items": [{"key": key, "path": key}]}}


def _pod_spec(options: RenderOptions, role: str, args: list[str]) -> dict[str, Any]:
    """The pod of one job: hardened, the tool as PID 1, only the secrets this role needs."""
    env: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]  # noqa: S108
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    if role != "prune":  # prune only talks to S3
        name = PASSWORD_KEY if options.database_secret_key == PASSWORD_KEY else DATABASE_URL_ENV
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
    env_from: list[dict[str, Any]] = [{"configMapRef": {"name": options.name}}]
    if role in options.s3_secrets:
        env_from.append({"secretRef": {"name": options.s3_secrets[role]}})
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


def _job_spec(options: RenderOptions, role: str, args: list[str], *, deadline: int,
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
            "metadata": {"labels": _labels(options, role)},
            "spec": _pod_spec(options, role, args),
        },
    }


def _cron_job(options: RenderOptions, role: str, schedule: str, args: list[str], *,
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
            "metadata": {"labels": _labels(options, role)},
            "spec": _job_spec(options, role, args, deadline=deadline, backoff=backoff),
        },
    })
    return {"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": _metadata(options, f"{options.name}-{role}", role, description),
            "spec": spec}


def _secret(options: RenderOptions, name: str, component: str, description: str,
            data: dict[str, str]) -> dict[str, Any]:
    meta = _metadata(options, name, component, description)
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque",
            "stringData": data}


def example_secrets(options: RenderOptions) -> list[dict[str, Any]]:
    """Example Secrets: the names and keys the jobs read, with placeholder values only."""
    out = [_secret(options, options.s3_secrets[role], role,
                   f"S3 credentials of the {role} job only (docs/deploy.md: IAM policies)",
                   {"AWS_ACCESS_KEY_ID": PLACEHOLDER, "AWS_SECRET_ACCESS_KEY": PLACEHOLDER})
           for role in ROLES if role in options.s3_secrets]
    if options.database_secret_key == PASSWORD_KEY:  # a connection-string Secret is Prefect's
        out.append(_secret(options, options.database_secret, "database",
                           "Password of the role in PREFECT_DR_DATABASE_URL (libpq PGPASSWORD)",
                           {PASSWORD_KEY: PLACEHOLDER}))
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
    if options.block_key_secret:
        out.append(_secret(options, options.block_key_secret, "block-key",
                           "Prefect's block key (PREFECT_SERVER_ENCRYPTION_KEY), escrowed "
                           "into backups", {BLOCK_KEY: PLACEHOLDER}))
    return out


def restore_job(options: RenderOptions) -> dict[str, Any]:
    """The restore Job: create it by hand; ``--dry-run`` unless ``restore_dry_run`` is False."""
    args = (["restore", options.restore_backup_id] if options.restore_backup_id
            else ["restore", "--latest", "--kind", Kind.FULL.value])
    args.append("--dry-run" if options.restore_dry_run else "--yes")
    what = ("prints the restore plan and changes nothing" if options.restore_dry_run
            else "RESTORES the backup over the live database (the old one is kept)")
    # Kept a week after it finishes, logs included: the restore's record for the post-mortem.
    spec = _job_spec(options, "restore", args, deadline=options.restore_deadline_seconds,
                     backoff=0, ttl=7 * 24 * 3600)
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": _metadata(options, f"{options.name}-restore", "restore",
                                  f"Run with 'kubectl create -f' (never apply); {what}",
                                  generate=True),
            "spec": spec}


#: RenderOptions field -> setting it takes its value from (config.SPECS names). The database
#: URL is not among them: by default the jobs read it from the database Secret.
FROM_SETTINGS = (("bucket", "s3_bucket"), ("prefix", "s3_prefix"),
                 ("endpoint_url", "s3_endpoint_url"), ("region", "s3_region"),
                 ("prefect_api_url", "prefect_api_url"), ("retention_full", "retention_full"),
                 ("retention_config_only", "retention_config_only"), ("verify_key", "verify_key"))
DEFAULT_DATABASE_SECRET = "prefect-server-postgresql-connection:connection-string"  # noqa: S105


def options_from_settings(settings: Any, *, database_secret: str = DEFAULT_DATABASE_SECRET,
                          **overrides: Any) -> RenderOptions:
    """RenderOptions for the effective settings (values that are set), the database Secret
    (``NAME[:KEY]``; with KEY PGPASSWORD it holds only the password and the database URL
    setting goes into the ConfigMap), then ``overrides`` (those not None). Raises ValueError
    (one line) for a bad value, and for a non-S3 repository (not rendered yet)."""
    if (settings.repository or "s3:").split(":")[0] != "s3":
        raise ValueError("k8s render renders s3:// repositories only so far; see docs/deploy.md")
    name, _, key = database_secret.partition(":")
    values: dict[str, Any] = {"age_recipients": tuple(settings.recipients),
                              "database_secret": name,
                              "database_secret_key": key or "connection-string"}
    if values["database_secret_key"] == PASSWORD_KEY and settings.database_url:
        values["database_url"] = settings.database_url
    for field_name, setting in FROM_SETTINGS:
        value = getattr(settings, setting)
        if value:
            values[field_name] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    return RenderOptions(**values)


def render(options: RenderOptions | None = None) -> list[dict[str, Any]]:
    """All Kubernetes objects, in apply order: ServiceAccounts, ConfigMap, example Secrets,
    CronJobs (backup, prune, verify), restore Job.

    Raises ValueError (one line) for a bad option, e.g. a cron expression Kubernetes would
    refuse or a URL carrying a password.
    """
    options = options or RenderOptions()
    _check(options)
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": _metadata(options, f"{options.name}-{role}", role,
                               f"Identity of the {role} job; bind its own cloud role here"),
         "automountServiceAccountToken": False}
        for role in ROLES
    ]
    objects.append({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": _metadata(options, options.name, "config",
                                          "Non-secret prefect-dr settings (PREFECT_DR_*)"),
                    "data": config_env(options)})
    objects += example_secrets(options)
    verify_args = ["verify", "--latest", "--kind", Kind.FULL.value]
    if options.verify_scratch_url:
        verify_args += ["--scratch-url", options.verify_scratch_url]
    objects += [
        _cron_job(options, "backup", options.backup_schedule, ["backup", "--kind", Kind.FULL.value],
                  deadline=options.backup_deadline_seconds, backoff=2,
                  description="Encrypted backup to S3; holds the age recipients only"),
        _cron_job(options, "prune", options.prune_schedule, ["prune"],
                  deadline=options.prune_deadline_seconds, backoff=1,
                  description="Applies the retention policies; the only job that deletes"),
        _cron_job(options, "verify", options.verify_schedule, verify_args,
                  deadline=options.verify_deadline_seconds, backoff=1,
                  description="Test-restores the newest full backup into a scratch database"),
    ]
    objects.append(restore_job(options))
    return objects


def to_yaml(objects: Sequence[Mapping[str, Any]], *, header: str | None = None) -> str:
    """Multi-document YAML of ``objects``, keys in the order they were built (stable).

    ``header`` (one or more lines) is written first as ``#`` comments. Requires PyYAML.
    """
    import yaml

    class _Dumper(yaml.SafeDumper):
        """SafeDumper writing multi-line strings (key files) as literal blocks."""

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    text = yaml.dump_all([dict(o) for o in objects], Dumper=_Dumper, sort_keys=False,
                         default_flow_style=False, explicit_start=True, width=4096,
                         allow_unicode=True)
    if header:
        text = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) + text
    return text


_FILE_HEADER = (
    "Generated by scripts/render-k8s from prefect_dr.k8s.render() (prefect-dr {version}),\n"
    "default options. Render your own with 'prefect-dr k8s render'; docs/deploy.md.\n"
)
EXAMPLE_FILES: dict[str, str] = {
    "prefect-dr.yaml": "ServiceAccounts, settings ConfigMap, backup/prune/verify CronJobs.\n"
                       "Apply: kubectl apply -f prefect-dr.yaml",
    "secrets.example.yaml": "EXAMPLE Secrets: names and keys the jobs read, PLACEHOLDER values.\n"
                            "Never apply as is; create the real ones (docs/deploy.md).",
    "restore-job.yaml": "Restore Job: kubectl create -f restore-job.yaml (not apply).\n"
                        "As rendered it only prints the plan (--dry-run).",
}


def example_files(options: RenderOptions | None = None) -> dict[str, str]:
    """The committed example files of deploy/kubernetes/: file name -> YAML text."""
    objects = render(options)
    groups: dict[str, list[dict[str, Any]]] = {name: [] for name in EXAMPLE_FILES}
    for obj in objects:
        if obj["kind"] == "Secret":
            groups["secrets.example.yaml"].append(obj)
        elif obj["kind"] == "Job":
            groups["restore-job.yaml"].append(obj)
        else:
            groups["prefect-dr.yaml"].append(obj)
    header = _FILE_HEADER.format(version=__version__)
    return {name: to_yaml(objs, header=f"{EXAMPLE_FILES[name]}\n{header}")
            for name, objs in groups.items()}
