"""What ``k8s render`` renders: :class:`RenderOptions`, their validation (:func:`check`) and
their mapping from the effective settings (:func:`options_from_settings`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefect_dr import __version__, cron, crypto, errors, layout, retention
from prefect_dr.errors import CryptoKeyError
from prefect_dr.kinds import POLICY_ROWS
from prefect_dr.storage import registry
from prefect_dr.storage import url as repo_url

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

# Exit codes a retry cannot fix (errors.EXIT_CODES, docs/exit-codes.md): the Job fails at once
# instead of retrying.
NO_RETRY_EXIT_CODES = errors.NO_RETRY_EXIT_CODES

# Settings render() manages itself; extra_env must not set them. With the backends' own
# (their ConfigMap entries and key file variable): managed_env().
_MANAGED_CORE_ENV = frozenset({
    "PREFECT_DR_DATABASE_URL", "PREFECT_DR_AGE_RECIPIENTS",
    "PREFECT_API_URL", *(row.retention_env for row in POLICY_ROWS),
    "PREFECT_DR_VERIFY_KEY", "PREFECT_DR_AGE_IDENTITY_FILE", "PREFECT_DR_SIGNING_KEY_FILE",
    "PREFECT_DR_PREFECT_ENCRYPTION_KEY_FILE", "PREFECT_DR_BACKUP_CRON", "PREFECT_DR_VERIFY_CRON",
    "PREFECT_DR_PUSHGATEWAY_URL", "PREFECT_DR_METRICS_INSTANCE", "PREFECT_DR_NOTIFY_ON",
    "PREFECT_DR_REPOSITORY", "PREFECT_DR_STAGING_DIR", "PREFECT_DR_STAGING_LIMIT",
})
UTC_ZONES = frozenset({"Etc/UTC", "UTC"})
# Secrets never go into a ConfigMap. With the backends' credentials: secret_env().
_SECRET_CORE_ENV = frozenset({
    "PGPASSWORD", "PREFECT_SERVER_ENCRYPTION_KEY",
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
_NFS = re.compile(r"^(?P<server>[A-Za-z0-9][-A-Za-z0-9.]*|\[[0-9A-Fa-f:.]+\]):(?P<path>/\S*)$")
#: Where the pods mount their own volumes: a file:// repository must not sit there.
_RESERVED_PATHS = ("/tmp", "/etc/prefect-dr")  # noqa: S108 - the pods' emptyDir
DEFAULT_VOLUME_CLAIM = "prefect-dr-repository"


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
    #: the incremental backup CronJob (issue 26): hourly, half past (clear of the full one);
    #: "" renders none
    incremental_schedule: str = "30 * * * *"
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
    # True: the Secret's key holds only the password (any key name: prefect-helm's
    # externalDatabase existingSecret), the jobs get it as PGPASSWORD and database_url (user,
    # host, database; no password) goes into the ConfigMap
    database_secret_is_password: bool = False
    identity_secret: str = "prefect-dr-age-identity"  # noqa: S105 - key identity.txt
    # role -> Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; a role left out gets no
    # credential Secret (IRSA, EKS Pod Identity, node role): annotate its ServiceAccount.
    s3_secrets: Mapping[str, str] = field(default_factory=_default_s3_secrets)
    # The repository (PREFECT_DR_REPOSITORY): s3://, file://, azure:// or gs://; None: the
    # s3:// one bucket and prefix describe (endpoint_url and region apply to s3:// only).
    repository: str | None = None
    azure_account_url: str | None = None  # PREFECT_DR_AZURE_ACCOUNT_URL (for an identity)
    # role -> Secret with the repository's credentials (envFrom; gs://: a key file mounted as
    # GOOGLE_APPLICATION_CREDENTIALS). None: the backend's default (s3: s3_secrets; azure:
    # prefect-dr-azure-<role>; gs: prefect-dr-gcs-<role>; file: none). A role left out gets
    # no credential Secret (node or managed identity).
    credential_secrets: Mapping[str, str] | None = None
    # role -> the cloud identity its ServiceAccount is bound to, instead of a Secret: an IAM
    # role ARN (s3, IRSA), a managed identity's client id (azure, workload identity) or a
    # Google service account e-mail (gs, GKE Workload Identity).
    workload_identities: Mapping[str, str] = field(default_factory=dict)
    # file://: what is mounted at the repository's path in every job: a PersistentVolumeClaim
    # (ReadWriteMany; default prefect-dr-repository), or an NFS export SERVER:/EXPORT.
    volume_claim: str | None = None
    nfs: str | None = None
    #: key signing-key.pem (backup, verify, restore): backups are signed by default (issue
    #: 27); None only when the settings say signing.required = false
    signing_key_secret: str | None = "prefect-dr-signing-key"  # noqa: S105
    block_key_secret: str | None = None  # key encryption-key (backup, restore's safety backup)
    # Notifications: the Secret holding the apprise URLs (key urls) as PREFECT_DR_NOTIFY in
    # every job, and PREFECT_DR_NOTIFY_ON (failure or always) in the ConfigMap
    notify_secret: str | None = None
    notify_on: str | None = None
    # Restore Job (k8s render --restore-job): the backup it restores, by id (its name names it)
    restore_backup_id: str | None = None
    restore_dry_run: bool = True  # False: --yes (a real restore)
    # None: the restore streams the dump into pg_restore (--jobs 1, nothing staged: it fits
    # any pod). A StorageClass: the dump is staged on a generic ephemeral volume of that class
    # sized restore_staging_bytes (the manifest's plaintext + 10%), pg_restore --jobs per CPU.
    restore_staging_class: str | None = None
    restore_staging_bytes: int | None = None
    # Helm pre-upgrade hook: how long it waits for a backup holding the lock (backup
    # --lock-wait) before it fails the upgrade with exit 11
    hook_lock_wait: str = "10m"
    # watch (issue 26): a Deployment running 'prefect-dr watch' (config-only backups within a
    # minute of a configuration change), metrics on this port of the pod
    watch: bool = True
    watch_metrics_port: int = 9464
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


def password_only(options: RenderOptions) -> bool:
    """Whether the database Secret holds only the password (then database_url is set)."""
    return options.database_secret_is_password or options.database_secret_key == PASSWORD_KEY


MAX_NAME = 63  # a Job's name becomes its pods' job-name label: at most 63 characters


def restore_job_name(options: RenderOptions) -> str:
    """The restore Job's fixed name, naming its backup: ``<name>-restore-<id>`` (a real
    restore) or ``<name>-plan-<id>`` (--dry-run). Raises ValueError without a backup id."""
    if not options.restore_backup_id:
        raise ValueError("the restore Job names its backup: give a backup id or latest")
    what = "plan" if options.restore_dry_run else "restore"
    name = f"{options.name}-{what}-{options.restore_backup_id.lower()}"
    if len(name) > MAX_NAME:
        raise ValueError(f"restore Job name {name} is longer than {MAX_NAME} characters; "
                         "render with a shorter --name")
    return name


def validate_schedule(expression: str, what: str = "schedule") -> str:
    """Return ``expression`` normalized if Kubernetes and croniter both accept it (cron.validate).
    Raises ValueError (one line)."""
    return cron.validate(expression, what)


def repository_url(options: RenderOptions) -> repo_url.RepositoryURL:
    """The repository the jobs use. Raises ValueError (RepositoryURLError) for a bad URL."""
    if options.repository:
        return repo_url.parse(options.repository)
    return repo_url.from_s3_settings(options.bucket, options.prefix)


def kubernetes(options: RenderOptions) -> registry.Kubernetes:
    """What the repository's backend needs in Kubernetes (its registry descriptor's facts)."""
    backend = registry.get(repository_url(options).scheme)
    return backend.kubernetes if backend else registry.Kubernetes()


def managed_env() -> frozenset[str]:
    """The environment variables render() sets itself, which ``extra_env`` must not: its own
    settings and every registered backend's ConfigMap entries and key file variable."""
    names = set(_MANAGED_CORE_ENV)
    for backend in registry.backends():
        needs = backend.kubernetes
        names.update(name for name, _ in (*needs.settings, *needs.shared_settings,
                                          *needs.default_settings))
        if needs.key_file is not None:
            names.add(needs.key_file.env)
    return frozenset(names)


def secret_env() -> tuple[frozenset[str], tuple[str, ...]]:
    """The environment variables that hold secrets and never go into a ConfigMap: the names
    (the database's, Prefect's, notify's and every registered backend's credentials) and the
    prefixes of whole families of them (``AWS_``)."""
    names = set(_SECRET_CORE_ENV)
    prefixes: list[str] = []
    for backend in registry.backends():
        names.update(backend.kubernetes.secret_env)
        prefixes.extend(backend.kubernetes.secret_env_prefixes)
    return frozenset(names), tuple(prefixes)


def is_secret_env(name: str) -> bool:
    """Whether environment variable ``name`` holds a secret (:func:`secret_env`)."""
    names, prefixes = secret_env()
    return name in names or name.startswith(prefixes)


def credential_secrets(options: RenderOptions) -> dict[str, str]:
    """role -> the Secret holding its repository credentials (none for a role with a
    workload identity, nor for a file:// repository)."""
    needs = kubernetes(options)
    if options.credential_secrets is not None:
        secrets = dict(options.credential_secrets)
    elif needs.secrets_option is not None:
        secrets = dict(getattr(options, needs.secrets_option))
    elif needs.secret_prefix is not None:
        secrets = {role: f"{needs.secret_prefix}-{role}" for role in ROLES}
    else:
        secrets = {}
    return {role: name for role, name in secrets.items()
            if role not in options.workload_identities}


def nfs_export(options: RenderOptions) -> tuple[str, str] | None:
    """(server, path) of ``options.nfs``, None without. Raises ValueError when malformed."""
    if options.nfs is None:
        return None
    match = _NFS.match(options.nfs)
    if not match:
        raise ValueError(f"nfs {options.nfs!r} is not SERVER:/EXPORT")
    return match["server"].strip("[]"), match["path"]


def _check_roles(what: str, mapping: Mapping[str, str]) -> None:
    unknown = sorted(set(mapping) - set(ROLES))
    if unknown:
        raise ValueError(f"{what}: unknown role {unknown[0]!r} (one of {', '.join(ROLES)})")


def _check_repository(options: RenderOptions) -> None:
    url = repository_url(options)
    needs = kubernetes(options)
    for what in ("s3_secrets", "credential_secrets", "workload_identities"):
        _check_roles(what, getattr(options, what) or {})
    if needs.volume:
        if options.credential_secrets or options.workload_identities:
            raise ValueError("a file:// repository takes no credential Secrets nor workload "
                             "identities: the mounted volume's permissions are its credentials")
        if options.volume_claim and options.nfs:
            raise ValueError("give volume_claim or nfs, not both")
        nfs_export(options)
        path = url.path.rstrip("/")
        if not path or any(path == p or path.startswith(p + "/") or p.startswith(path + "/")
                           for p in _RESERVED_PATHS):
            raise ValueError(f"file:// repository path {url.path!r} collides with the pods' "
                             f"own mounts ({', '.join(_RESERVED_PATHS)}); mount it elsewhere, "
                             "e.g. file:///backups")
    elif options.volume_claim or options.nfs:
        raise ValueError("volume_claim and nfs mount a file:// repository; this one is "
                         f"{url.scheme}://")
    for role, identity in options.workload_identities.items():
        if needs.identity is None or not needs.identity.match(identity):
            raise ValueError(f"workload identity of the {role} job: {identity!r} is not "
                             f"{needs.identity_word or 'possible'}, as a {url.scheme}:// "
                             "repository needs")
    for account_url in (options.azure_account_url, url.params.get("account_url")):
        if account_url and (urlsplit(account_url).query or urlsplit(account_url).fragment):
            raise ValueError("the Azure account URL must not carry a query (a SAS token is a "
                             "secret: it goes into the credential Secret's connection string, "
                             "not into the ConfigMap)")
    if needs.identity_needs is not None:
        option, param, message = needs.identity_needs
        if (set(credential_secrets(options)) != set(ROLES)
                and not (getattr(options, option) or url.params.get(param))):
            raise ValueError(message)


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
    if options.incremental_schedule:
        validate_schedule(options.incremental_schedule, "incremental schedule")
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
    if not options.repository and not options.bucket:
        raise ValueError("bucket is required")
    _check_repository(options)
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
    if password_only(options) and not options.database_url:
        raise ValueError("a password-only database Secret holds only the password: "
                         "database_url (PREFECT_DR_DATABASE_URL: user, host, database) is "
                         "required")
    if not password_only(options) and options.database_url:
        raise ValueError(f"database_url goes with a PGPASSWORD database Secret; the Secret "
                         f"{options.database_secret} (key {options.database_secret_key}) "
                         "holds the URL itself")
    for what in ("endpoint_url", "prefect_api_url", "pushgateway_url", "azure_account_url"):
        url = getattr(options, what)
        if url is not None and urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"{what} must be an http(s):// URL")
    for recipient in options.age_recipients:
        try:
            crypto.parse_recipient(recipient)
        except CryptoKeyError as exc:
            raise ValueError(exc.message) from None
    for what in (row.retention_setting for row in POLICY_ROWS):
        text = getattr(options, what)
        if text is not None:
            try:
                retention.parse_policy(text)
            except retention.PolicyError as exc:
                raise ValueError(f"{what}: {exc.message}") from None
    for key in options.extra_env:
        if not _ENV_NAME.match(key):
            raise ValueError(f"extra_env: {key!r} is not an environment variable name")
        if key in managed_env():
            raise ValueError(f"extra_env: {key} is set by its own option")
        if is_secret_env(key):
            raise ValueError(f"extra_env: {key} is a secret; put it in a Secret, not a ConfigMap")
    for key, value in options.prometheus_labels.items():
        name = key.rsplit("/", 1)[-1]
        if (not _LABEL_NAME.match(name) or len(name) > 63 or len(value) > 63
                or (value and not _LABEL_NAME.match(value))):
            raise ValueError(f"prometheus label {key}={value} is not a valid Kubernetes label")
    secrets = [options.database_secret, options.identity_secret, *options.s3_secrets.values(),
               *(options.credential_secrets or {}).values(),
               options.signing_key_secret, options.block_key_secret, options.notify_secret]
    for secret in secrets:
        if secret is not None and (not _DNS_SUBDOMAIN.match(secret) or len(secret) > 253):
            raise ValueError(f"secret name {secret!r} is not a valid Kubernetes name")
    if options.volume_claim is not None and (not _DNS_SUBDOMAIN.match(options.volume_claim)
                                             or len(options.volume_claim) > 253):
        raise ValueError(f"volume claim {options.volume_claim!r} is not a valid Kubernetes name")
    if options.restore_staging_class is not None and (
            not _DNS_SUBDOMAIN.match(options.restore_staging_class)
            or not options.restore_staging_bytes or options.restore_staging_bytes < 1):
        raise ValueError("restore_staging_class needs a valid StorageClass name and "
                         "restore_staging_bytes (from the backup's manifest)")
    try:
        from prefect_dr import durations

        durations.parse(options.hook_lock_wait)
    except ValueError as exc:
        raise ValueError(f"hook lock wait: {exc}") from None
    if (options.restore_backup_id is not None
            and not layout.BACKUP_ID_RE.match(options.restore_backup_id)):
        raise ValueError(f"restore_backup_id {options.restore_backup_id!r} is not a backup id "
                         "(YYYYMMDDTHHMMSSZ-xxxxxx)")
    for what in ("starting_deadline_seconds", "backup_deadline_seconds",
                 "verify_deadline_seconds", "prune_deadline_seconds",
                 "restore_deadline_seconds", "termination_grace_seconds",
                 "watch_metrics_port"):
        if getattr(options, what) < 1:
            raise ValueError(f"{what} must be positive")
    for what in ("cpu_request", "cpu_limit", "memory_request", "memory_limit"):
        if not _QUANTITY.match(getattr(options, what)):
            raise ValueError(f"{what} {getattr(options, what)!r} is not a Kubernetes quantity")


#: RenderOptions field -> setting it takes its value from (config.SPECS names). The database
#: URL is not among them: by default the jobs read it from the database Secret.
FROM_SETTINGS = (("repository", "repository"), ("azure_account_url", "azure_account_url"),
                 ("bucket", "s3_bucket"), ("prefix", "s3_prefix"),
                 ("endpoint_url", "s3_endpoint_url"), ("region", "s3_region"),
                 ("prefect_api_url", "prefect_api_url"),
                 *((row.retention_setting, row.retention_setting)
                   for row in POLICY_ROWS),
                 ("verify_key", "verify_key"))
DEFAULT_DATABASE_SECRET = "prefect-server-postgresql-connection:connection-string"  # noqa: S105


def options_from_settings(settings: Any, *, database_secret: str = DEFAULT_DATABASE_SECRET,
                          database_password_secret: str | None = None,
                          **overrides: Any) -> RenderOptions:
    """RenderOptions for the effective settings (values that are set), the database Secret
    (``NAME[:KEY]``: a connection string; with KEY PGPASSWORD, or given as
    ``database_password_secret`` ``NAME:KEY``, it holds only the password and the database URL
    setting, without its password, goes into the ConfigMap), then ``overrides`` (those not
    None). Raises ValueError (one line) for a bad value."""
    password = database_password_secret is not None
    name, _, key = (database_password_secret or database_secret).partition(":")
    if password and not key:
        raise ValueError("the database password Secret is NAME:KEY (e.g. "
                         "prefect-db-password:password)")
    values: dict[str, Any] = {"age_recipients": tuple(settings.recipients),
                              "database_secret": name,
                              "database_secret_key": key or "connection-string",
                              "database_secret_is_password": password}
    if (password or values["database_secret_key"] == PASSWORD_KEY) and settings.database_url:
        values["database_url"] = settings.database_url  # check() refuses one with a password
    for field_name, setting in FROM_SETTINGS:
        value = getattr(settings, setting)
        if value:
            values[field_name] = value
    if getattr(settings, "signing_required", None) is False:
        values["signing_key_secret"] = None  # unsigned by the operator's explicit choice
    if overrides.get("notify_secret"):
        values["notify_on"] = settings.notify_on or None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return RenderOptions(**values)

