"""Typed settings with their provenance: defaults < TOML file < environment < CLI flags.

Every problem found is reported at once (ConfigError lists them all). Secrets come from the
environment or from files, never from argv, and are registered with ``redact`` as they load.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlsplit

from prefect_dr import cron, crypto, durations, prefect_db, redact
from prefect_dr.errors import ConfigError, CryptoKeyError
from prefect_dr.kinds import POLICY_ROWS
from prefect_dr.storage import registry
from prefect_dr.storage import url as repo_url

CONFIG_ENV = "PREFECT_DR_CONFIG"
#: Variables the command line reads itself (global metrics options), not settings.
CLI_ENV = frozenset({"PREFECT_DR_METRICS_FILE", "PREFECT_DR_PUSHGATEWAY_URL",
                     "PREFECT_DR_METRICS_INSTANCE"})


@dataclass(frozen=True)
class Spec:
    """One setting: its name, where it may come from, and how it is shown."""

    name: str
    env: str
    toml: str  # "section.key"
    kind: str = "str"  # str | int | bool | list | path | pathlist | url
    default: Any = None
    secret: bool = False  # shown as *** (URLs: only the password part)
    help: str = ""


SPECS: tuple[Spec, ...] = (
    Spec("database_url", "PREFECT_DR_DATABASE_URL", "database.url", "url",
         help="libpq URL of the Prefect database; password from PGPASSWORD or .pgpass "
              "(default: Prefect's own PREFECT_API_DATABASE_CONNECTION_URL and its kin)"),
    Spec("pg_bin_dir", "PREFECT_DR_PG_BIN_DIR", "database.pg_bin_dir", "pathlist",
         help="':'-separated folders holding pg_dump/pg_restore/psql, searched before "
              "/usr/lib/postgresql/*/bin and PATH; the right client is picked per operation"),
    Spec("repository", "PREFECT_DR_REPOSITORY", "repository.url",
         help="where backups live: " + registry.either([b.form for b in registry.backends()])
              + " (default: the s3 settings)"),
    Spec("copy_to", "PREFECT_DR_COPY_TO", "backup.copy_to", "list", default=(),
         help="comma-separated repository URLs each successful backup is copied to"),
    Spec("azure_account_url", "PREFECT_DR_AZURE_ACCOUNT_URL", "azure.account_url", "url",
         help="Azure Blob endpoint, e.g. https://ACCOUNT.blob.core.windows.net (default: "
              "from AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT)"),
    Spec("s3_bucket", "PREFECT_DR_S3_BUCKET", "s3.bucket", help="bucket holding the backups"),
    Spec("s3_prefix", "PREFECT_DR_S3_PREFIX", "s3.prefix", default="prefect-dr",
         help="key prefix inside the bucket"),
    Spec("s3_endpoint_url", "PREFECT_DR_S3_ENDPOINT_URL", "s3.endpoint_url", "url",
         help="endpoint of an S3-compatible store"),
    Spec("s3_region", "PREFECT_DR_S3_REGION", "s3.region", help="bucket region"),
    Spec("age_recipients", "PREFECT_DR_AGE_RECIPIENTS", "age.recipients", "list",
         default=(), help="comma-separated age public keys backups are encrypted to"),
    Spec("age_recipients_file", "PREFECT_DR_AGE_RECIPIENTS_FILE", "age.recipients_file", "path",
         help="file of age public keys, one per line"),
    Spec("age_identity_file", "PREFECT_DR_AGE_IDENTITY_FILE", "age.identity_file", "path",
         help="age private key file (verify/restore only)"),
    Spec("prefect_api_url", "PREFECT_API_URL", "prefect.api_url", "url",
         help="Prefect API, e.g. http://127.0.0.1:4200/api"),
    Spec("prefect_encryption_key_file", "PREFECT_DR_PREFECT_ENCRYPTION_KEY_FILE",
         "prefect.encryption_key_file", "path",
         help="file holding Prefect's block key when it is not in the database"),
    Spec("signing_key_file", "PREFECT_DR_SIGNING_KEY_FILE", "signing.key_file", "path",
         help="Ed25519 private key (PEM) that signs manifests, status and verification "
              "records (from 'prefect-dr keygen'); backup and copy refuse to run without it"),
    Spec("verify_key", "PREFECT_DR_VERIFY_KEY", "signing.verify_key",
         help="base64 Ed25519 public keys (comma-separated: several during a rotation) "
              "manifests must be signed by; readers refuse others unless --allow-unsigned"),
    Spec("signing_required", "PREFECT_DR_SIGNING_REQUIRED", "signing.required", "bool",
         default=True, help="false lets backup and copy write unsigned manifests (readers "
                            "then need --allow-unsigned)"),
    Spec("repository_name", "PREFECT_DR_REPOSITORY_NAME", "signing.repository_name",
         help="the name signed manifests bind the repository by (default: its URL without "
              "query); set the same name where a replica of the bucket is read"),
    Spec("s3_storage_class", "PREFECT_DR_S3_STORAGE_CLASS", "s3.storage_class",
         help="storage class of uploaded objects, e.g. STANDARD_IA"),
    Spec("s3_sse", "PREFECT_DR_S3_SSE", "s3.sse", help="server-side encryption: AES256 or aws:kms"),
    Spec("s3_sse_kms_key_id", "PREFECT_DR_S3_SSE_KMS_KEY_ID", "s3.sse_kms_key_id",
         help="KMS key id for aws:kms"),
    Spec("s3_object_lock_mode", "PREFECT_DR_S3_OBJECT_LOCK_MODE", "s3.object_lock_mode",
         help="GOVERNANCE or COMPLIANCE retention on uploaded objects"),
    Spec("s3_object_lock_days", "PREFECT_DR_S3_OBJECT_LOCK_DAYS", "s3.object_lock_days", "int",
         help="days of Object Lock retention"),
    Spec("zstd_level", "PREFECT_DR_ZSTD_LEVEL", "backup.zstd_level", "int", default=2,
         help="zstd compression level (1-19); 2 is ~30% less CPU than 3 for ~2% more bytes"),
    Spec("allow_undecryptable_blocks", "PREFECT_DR_ALLOW_UNDECRYPTABLE_BLOCKS",
         "backup.allow_undecryptable_blocks", "bool", default=False,
         help="back up even when block documents cannot be decrypted with any known key "
              "(as --allow-undecryptable-blocks; doctor then warns instead of failing)"),
    Spec("lock_stale_hours", "PREFECT_DR_LOCK_STALE_HOURS", "backup.lock_stale_hours", "int",
         default=12, help="age after which another host's backup lock counts as stale"),
    *(Spec(row.retention_setting, row.retention_env, row.retention_toml,
           help=f"retention policy of {kind} backups for `prune`, e.g. {row.retention_example}")
      for kind, row in ((row.kind, row) for row in POLICY_ROWS)),
    Spec("staging_dir", "PREFECT_DR_STAGING_DIR", "restore.staging_dir", "path",
         help="folder where restore stages the decrypted dump for parallel pg_restore "
              "(default: the system temp folder; needs the dump's plaintext size)"),
    Spec("staging_limit", "PREFECT_DR_STAGING_LIMIT", "restore.staging_limit", "int",
         help="bytes the staging folder may hold, when its file system does not tell "
              "(a Kubernetes emptyDir's sizeLimit; the rendered restore Job sets it)"),
    Spec("backup_cron", "PREFECT_DR_BACKUP_CRON", "schedule.backup_cron",
         help="backup schedule (cron), for 'status'"),
    Spec("verify_cron", "PREFECT_DR_VERIFY_CRON", "schedule.verify_cron",
         help="verify schedule (cron), for 'status'"),
    Spec("status_grace", "PREFECT_DR_STATUS_GRACE", "schedule.grace", default="1h",
         help="how long a scheduled run may take before 'status' calls it missing"),
    Spec("s3_retry_deadline", "PREFECT_DR_S3_RETRY_DEADLINE", "s3.retry_deadline_seconds", "int",
         default=120, help="seconds transient S3 errors are retried before giving up"),
    Spec("s3_read_deadline", "PREFECT_DR_S3_READ_DEADLINE", "s3.read_deadline_seconds", "int",
         default=15, help="seconds the read-only commands (list, show, status) retry transient "
                          "S3 errors before giving up"),
    Spec("notify_urls", "PREFECT_DR_NOTIFY", "notify.urls", secret=True,
         help="apprise URLs (spaces or commas between them) notified of failures; they hold "
              "tokens: environment or config file only"),
    Spec("notify_on", "PREFECT_DR_NOTIFY_ON", "notify.on", default="failure",
         help="failure (failures, and a verify passing after a failure) or always (every "
              "backup, verify, restore and prune)"),
)
SPEC_BY_NAME = {s.name: s for s in SPECS}
_NO_REPOSITORY = ("no repository: set PREFECT_DR_REPOSITORY ("
                  + registry.either([f"{s}://" for s in registry.schemes()])
                  + ") or PREFECT_DR_S3_BUCKET")
_TOML_KEYS = {s.toml: s for s in SPECS}
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class Settings:
    """The effective settings; ``sources`` tells where each value came from."""

    values: Mapping[str, Any]
    sources: Mapping[str, str]
    warnings: tuple[str, ...] = ()
    config_file: Path | None = None

    def __getattr__(self, name: str) -> Any:
        if name in SPEC_BY_NAME:
            return self.values.get(name)
        raise AttributeError(name)

    @property
    def recipients(self) -> list[str]:
        """All configured recipient strings, from the setting and the recipients file."""
        out = list(self.values.get("age_recipients") or ())
        path = self.values.get("age_recipients_file")
        if path:
            out += crypto.parse_recipient_lines(Path(path).read_text(encoding="utf-8"))
        return out

    @property
    def repository_url(self) -> repo_url.RepositoryURL:
        """The repository: PREFECT_DR_REPOSITORY, else the ``s3://`` one the S3 settings
        describe. Raises ConfigError when neither is set."""
        text = self.values.get("repository")
        if text:
            try:
                return repo_url.parse(text)
            except repo_url.RepositoryURLError as exc:  # validated at load; a flag may race
                raise ConfigError([str(exc)]) from None
        if not self.values.get("s3_bucket"):
            raise ConfigError([_NO_REPOSITORY])
        return repo_url.from_s3_settings(self.values["s3_bucket"],
                                         self.values.get("s3_prefix") or "")

    @property
    def layout_prefix(self) -> str:
        """The key prefix of this repository's objects (what ``Layout`` is built with)."""
        return self.repository_url.prefix

    def require(self, *names: str) -> None:
        """Raise ConfigError listing every one of ``names`` that has no value."""
        missing = []
        for name in names:
            if name == "repository":
                if not self.values.get("repository") and not self.values.get("s3_bucket"):
                    missing.append(_NO_REPOSITORY)
                continue
            if name == "recipients":
                if not self.recipients:
                    missing.append(
                        "no age recipient: set PREFECT_DR_AGE_RECIPIENTS or "
                        "PREFECT_DR_AGE_RECIPIENTS_FILE (create one with 'prefect-dr keygen')"
                    )
                continue
            if not self.values.get(name):
                spec = SPEC_BY_NAME[name]
                missing.append(f"{spec.env} is not set ({spec.help})")
        if missing:
            raise ConfigError(missing)

    def display(self) -> list[dict[str, str]]:
        """Rows of name, env var, shown value (secrets redacted) and source, for `config show`."""
        rows = []
        for spec in SPECS:
            value = self.values.get(spec.name)
            rows.append({
                "name": spec.name,
                "env": spec.env,
                "value": _show(spec, value),
                "source": self.sources.get(spec.name, "default"),
            })
        return rows


def _show(spec: Spec, value: Any) -> str:
    if value is None or value == () or value == "":
        return ""
    if spec.secret:
        return redact.MASK
    if spec.kind == "list":
        return ",".join(value)
    if spec.kind == "url":
        return redact.url_without_password(str(value))
    return str(value)


def _coerce(spec: Spec, raw: Any, where: str, problems: list[str]) -> Any:
    """Turn a raw value into the setting's type; append a problem and return None on failure."""
    if spec.kind == "list":
        if isinstance(raw, str):
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            return tuple(x.strip() for x in raw if x.strip())
        problems.append(f"{where}: expected a list of strings")
        return None
    if isinstance(raw, str) and not _is_utf8(raw):
        problems.append(f"{where}: not valid UTF-8")
        return None
    if spec.kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        problems.append(f"{where}: expected true or false, got {raw!r}")
        return None
    if spec.kind == "int":
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            problems.append(f"{where}: expected a whole number, got {raw!r}")
            return None
        try:
            return int(raw)
        except (TypeError, ValueError, OverflowError):
            problems.append(f"{where}: expected a whole number, got {raw!r}")
            return None
    if not isinstance(raw, str):
        problems.append(f"{where}: expected a string")
        return None
    if spec.kind == "path":  # '~' expanded once, here, for every path setting
        return str(Path(raw.strip()).expanduser()) if raw.strip() else ""
    if spec.kind == "pathlist":  # ':'-separated folders, each '~'-expanded
        return ":".join(str(Path(p.strip()).expanduser()) for p in raw.split(":") if p.strip())
    return raw.strip()


def _is_utf8(text: str) -> bool:
    """False for text holding undecodable bytes (surrogate escapes from a non-UTF-8 environment)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: libpq URL query parameters that carry a secret (a password in the query string).
SECRET_QUERY_PARAMS = ("password", "sslpassword")


def query_secret(parts: SplitResult) -> str | None:
    """The name of the first secret-carrying query parameter of a URL (``?password=``), or
    None: libpq reads a password there too, and it would reach a client's argv."""
    names = {k.lower() for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
    return next((p for p in SECRET_QUERY_PARAMS if p in names), None)


def split_url(url: str) -> SplitResult | None:
    """urlsplit, or None when the URL is malformed (an unbalanced '[', a port that is no
    number)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError:
        return None
    return parts


def _read_toml(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"config file {path} does not exist")
        return {}
    except OSError as exc:
        problems.append(f"cannot read config file {path}: {exc.strerror}")
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"config file {path} is not valid TOML: {exc}")
        return {}
    flat: dict[str, Any] = {}
    for section, body in data.items():
        if not isinstance(body, dict):
            problems.append(f"{path}: top-level key {section!r} must be a [section]")
            continue
        for key, value in body.items():
            dotted = f"{section}.{key}"
            if dotted not in _TOML_KEYS:
                problems.append(f"{path}: unknown setting {dotted!r}")
                continue
            flat[dotted] = value
    return flat


def load(
    *,
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the effective Settings from defaults, file, environment and flags.

    Raises ConfigError listing every problem found (unreadable file, unknown key, bad value).
    """
    env = os.environ if env is None else env
    flags = flags or {}
    problems: list[str] = []
    warnings: list[str] = []
    values: dict[str, Any] = {s.name: s.default for s in SPECS}
    sources: dict[str, str] = {s.name: "default" for s in SPECS}

    path_text = config_file or env.get(CONFIG_ENV)
    path = Path(path_text).expanduser() if path_text else None
    if path is not None:
        for dotted, raw in _read_toml(path, problems).items():
            spec = _TOML_KEYS[dotted]
            value = _coerce(spec, raw, f"{path}: {dotted}", problems)
            if value is not None:
                values[spec.name], sources[spec.name] = value, f"file {path}"

    for spec in SPECS:
        raw = env.get(spec.env)
        if raw is not None and raw.strip() != "":
            value = _coerce(spec, raw, spec.env, problems)
            if value is not None:
                values[spec.name], sources[spec.name] = value, f"env {spec.env}"
    known_env = {s.env for s in SPECS} | {CONFIG_ENV} | CLI_ENV
    for name in env:
        if (name.startswith("PREFECT_DR_") and name not in known_env
                and not name.startswith("PREFECT_DR_STACK_")):
            warnings.append(f"unknown environment variable {name} ignored")

    for spec in SPECS:
        if spec.secret and values.get(spec.name):
            _register_secret(spec, values[spec.name])
    for name, (raw, flag) in flags.items():
        if raw is None:
            continue
        spec = SPEC_BY_NAME[name]
        value = _coerce(spec, raw, flag, problems)
        if value is not None:
            values[name], sources[name] = value, f"flag {flag}"
            parts = split_url(str(value)) if spec.kind == "url" else None
            if parts is not None and (parts.password or query_secret(parts)):
                problems.append(
                    f"{flag} must not carry a password (it would show in the process list); "
                    "use PGPASSWORD, a .pgpass file or the environment/config file instead"
                )

    if not values.get("database_url"):
        _prefect_database(env, values, sources, problems, warnings)
    _validate(values, sources, problems)
    if problems:
        raise ConfigError(problems)
    return Settings(values=values, sources=sources, warnings=tuple(warnings), config_file=path)


def _register_secret(spec: Spec, value: str) -> None:
    """Register a secret setting's value with ``redact`` as it loads (notification URLs: each
    URL too)."""
    if spec.name == "notify_urls":
        from prefect_dr import notify

        notify.register_secrets(value)
    else:
        redact.register(value)


def _prefect_database(env: Mapping[str, str], values: dict[str, Any],
                      sources: dict[str, str], problems: list[str], warnings: list[str]) -> None:
    """No database setting of our own: take the one Prefect's own settings name (its
    password is Prefect's secret: accepted, and registered as a secret at once)."""
    found = prefect_db.from_env(env)
    if found is None:
        return
    if found.password:
        redact.register(found.password)
        redact.register(quote(found.password, safe=""))
    warnings.extend(found.warnings)
    problems.extend(found.problems)
    if found.url and not found.problems:
        values["database_url"], sources["database_url"] = found.url, found.source


def _where(spec: Spec, source: str) -> str:
    """How a problem names a setting: by the flag, file key or variable that set it."""
    if source.startswith("flag "):
        return source[len("flag "):]
    if source.startswith("file "):
        return f"{source[len('file '):]}: {spec.toml}"
    if source.startswith("env "):
        return source[len("env "):]
    return spec.env


def _validate(values: dict[str, Any], sources: Mapping[str, str], problems: list[str]) -> None:
    def at(name: str) -> str:
        return _where(SPEC_BY_NAME[name], sources.get(name, "default"))

    for spec in SPECS:
        url = values.get(spec.name)
        if spec.kind == "url" and url and split_url(url) is None:
            problems.append(f"{at(spec.name)} is not a valid URL (check brackets and the port)")
            values[spec.name] = None  # nothing below, nor later, may parse it
    db = values.get("database_url")
    if db:
        password = urlsplit(db).password
        redact.register(password)
        redact.register(unquote(password or ""))
        if urlsplit(db).scheme not in ("postgresql", "postgres"):
            problems.append(f"{at('database_url')} must start with postgresql://")
        secret = query_secret(urlsplit(db))
        if secret and not sources.get("database_url", "").startswith("flag "):
            problems.append(f"{at('database_url')} must not carry ?{secret}= (it would show "
                            "in the process list); use PGPASSWORD or a .pgpass file")
    for name in ("s3_endpoint_url", "prefect_api_url", "azure_account_url"):
        url = values.get(name)
        if url and urlsplit(url).scheme not in ("http", "https"):
            problems.append(f"{at(name)} must be an http(s):// URL")
        elif url and name != "prefect_api_url" and repo_url.credentials_in(url):
            problems.append(f"{at(name)} must not carry credentials (a user, password or SAS "
                            "token); use the backend's credential variables")
    bucket = values.get("s3_bucket")
    if bucket and not _BUCKET_RE.match(bucket):
        problems.append(
            f"{at('s3_bucket')} {bucket!r} is not a valid bucket name "
            "(3-63 lowercase letters, digits, dots, hyphens)"
        )
    repository = values.get("repository")
    if repository:
        try:
            repo_url.parse(repository)
        except repo_url.RepositoryURLError as exc:
            problems.append(f"{at('repository')}: {exc}")
    for target in values.get("copy_to") or ():
        try:
            repo_url.parse(target)
        except repo_url.RepositoryURLError as exc:
            problems.append(f"{at('copy_to')}: {exc}")
    prefix = values.get("s3_prefix") or ""
    if prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        problems.append(f"{at('s3_prefix')} must not start or end with '/' nor contain '//'")
    if values.get("s3_sse") not in (None, "", "AES256", "aws:kms"):
        problems.append(f"{at('s3_sse')} must be AES256 or aws:kms")
    if values.get("s3_object_lock_mode") not in (None, "", "GOVERNANCE", "COMPLIANCE"):
        problems.append(f"{at('s3_object_lock_mode')} must be GOVERNANCE or COMPLIANCE")
    if bool(values.get("s3_object_lock_mode")) != bool(values.get("s3_object_lock_days")):
        problems.append("PREFECT_DR_S3_OBJECT_LOCK_MODE and _DAYS go together")
    level = values.get("zstd_level")
    if level is not None and not 1 <= level <= 19:
        problems.append(f"{at('zstd_level')} must be between 1 and 19")
    for name in ("backup_cron", "verify_cron"):
        expr = values.get(name)
        if expr and not cron.is_valid(expr):
            problems.append(f"{at(name)}: {expr!r} is not a valid cron expression")
    if values.get("notify_on") not in (None, "", "failure", "always"):
        problems.append(f"{at('notify_on')} must be failure or always")
    grace = values.get("status_grace")
    if grace:
        try:
            durations.parse(grace)
        except ValueError as exc:
            problems.append(f"{at('status_grace')}: {exc}")
    for name in ("s3_retry_deadline", "s3_read_deadline"):
        deadline = values.get(name)
        if deadline is not None and deadline < 0:
            problems.append(f"{at(name)} must not be negative")
    stale = values.get("lock_stale_hours")
    if stale is not None and stale < 1:
        problems.append(f"{at('lock_stale_hours')} must be at least 1")
    # age_identity_file is checked where it is used (crypto.load_identities): a missing
    # identity is a key error (exit 12), and the backup job, which never needs it, may run
    # where it is not mounted.
    for name in ("age_recipients_file", "pg_bin_dir", "staging_dir",
                 "prefect_encryption_key_file", "signing_key_file"):
        for path in str(values.get(name) or "").split(":") if name == "pg_bin_dir" else [
                values.get(name)]:
            if path and not Path(path).exists():
                problems.append(f"{at(name)}: {path} does not exist")
    recipients = list(values.get("age_recipients") or ())
    rfile = values.get("age_recipients_file")
    if rfile and Path(rfile).is_file():
        try:
            recipients += crypto.parse_recipient_lines(Path(rfile).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{at('age_recipients_file')}: cannot read {rfile}: {exc}")
    for text in recipients:
        try:
            crypto.parse_recipient(text)
        except CryptoKeyError as exc:
            problems.append(exc.message)
