"""What ``k8s render`` renders: :class:`RenderOptions`, their validation (:func:`check`) and
their mapping from the effective settings (:func:`options_from_settings`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefect_dr import __version__, cron, crypto, layout, retention
from prefect_dr.errors import CryptoKeyError

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
    "PREFECT_DR_PUSHGATEWAY_URL", "PREFECT_DR_METRICS_INSTANCE", "PREFECT_DR_NOTIFY_ON",
})
UTC_ZONES = frozenset({"Etc/UTC", "UTC"})
# Secrets never go into a ConfigMap.
_SECRET_ENV = frozenset({
    "PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PREFECT_SERVER_ENCRYPTION_KEY",
    "PREFECT_API_KEY", "PREFECT_API_DATABASE_CONNECTION_URL",
    "PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_PASSWORD",
    "PREFECT_SERVER_DATABASE_PASSWORD", "PREFECT_DR_NOTIFY",
})
NOTIFY_KEY = "urls"
PASSWORD_KEY = "PGPASSWORD"  # noqa: S105 - a key name: that Secret holds only the password
DATABASE_URL_ENV = "PREFECT_API_DATABASE_CONNECTION_URL"  # what a connection-string Secret sets
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
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
    # Labels the Prometheus Operator selects the PrometheusRule and ServiceMonitor by
    # (kube-prometheus-stack: release=<its release>)
    prometheus_labels: Mapping[str, str] = field(default_factory=dict)
    # Secret names
    database_secret: str = "prefect-server-postgresql-connection"  # noqa: S105 - a name
    database_secret_key: str = "connection-string"  # noqa: S105 - or PGPASSWORD (+ database_url)
    identity_secret: str = "prefect-dr-age-identity"  # noqa: S105 - key identity.txt
    # role -> Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; a role left out gets no
    # credential Secret (IRSA, EKS Pod Identity, node role): annotate its ServiceAccount.
    s3_secrets: Mapping[str, str] = field(default_factory=_default_s3_secrets)
    signing_key_secret: str | None = None  # key signing-key.pem (backup, verify, restore)
    block_key_secret: str | None = None  # key encryption-key (backup, restore's safety backup)
    # Notifications: the Secret holding the apprise URLs (key urls) as PREFECT_DR_NOTIFY in
    # every job, and PREFECT_DR_NOTIFY_ON (failure or always) in the ConfigMap
    notify_secret: str | None = None
    notify_on: str | None = None
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


def check(options: RenderOptions) -> None:
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
    if options.notify_on not in (None, "failure", "always"):
        raise ValueError("notify_on must be failure or always")
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
    for key, value in options.prometheus_labels.items():
        name = key.rsplit("/", 1)[-1]
        if (not _LABEL_NAME.match(name) or len(name) > 63 or len(value) > 63
                or (value and not _LABEL_NAME.match(value))):
            raise ValueError(f"prometheus label {key}={value} is not a valid Kubernetes label")
    unknown = sorted(set(options.s3_secrets) - set(ROLES))
    if unknown:
        raise ValueError(f"s3_secrets: unknown role {unknown[0]!r} (one of {', '.join(ROLES)})")
    secrets = [options.database_secret, options.identity_secret, *options.s3_secrets.values(),
               options.signing_key_secret, options.block_key_secret, options.notify_secret]
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


#: RenderOptions field -> setting it takes its value from (config.SPECS names). The database
#: URL is not among them: by default the jobs read it from the database Secret.
FROM_SETTINGS = (("bucket", "s3_bucket"), ("prefix", "s3_prefix"),
                 ("endpoint_url", "s3_endpoint_url"), ("region", "s3_region"),
                 ("prefect_api_url", "prefect_api_url"),
                 ("retention_full", "retention_full"),
                 ("retention_config_only", "retention_config_only"),
                 ("verify_key", "verify_key"))
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
    if overrides.get("notify_secret"):
        values["notify_on"] = settings.notify_on or None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return RenderOptions(**values)

