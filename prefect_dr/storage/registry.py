"""The storage backends: one descriptor each, the one list URL parsing, the factory, the
settings' help, ``k8s render`` (a descriptor's :class:`Kubernetes` needs) and the contract suite
iterate.

A backend is its module (``storage/<backend>.py``: a ``Storage`` implementation and a
``build(url, settings, retry_deadline_s)`` function) and one ``register(Backend(...))`` line
below. The descriptors live here rather than in the backend modules so that parsing a URL
never imports a cloud's client library: ``Backend.build`` imports the module only when a
repository of its kind is opened. docs/architecture.md has the recipe.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect_dr.storage.base import Storage
    from prefect_dr.storage.url import RepositoryURL


@dataclass(frozen=True)
class KeyFile:
    """A credential Secret mounted as a file whose path an environment variable names."""

    #: the Secret's key holding the file, and the file's name in ``directory``
    key: str
    #: where the Secret is mounted (read-only)
    directory: str
    #: the environment variable naming the file (``GOOGLE_APPLICATION_CREDENTIALS``)
    env: str
    #: the pod volume's name
    volume: str


@dataclass(frozen=True)
class Kubernetes:
    """What ``k8s render`` needs of a backend: how a job reaches the repository."""

    #: the repository is a path mounted from a PersistentVolumeClaim (``file://``): no
    #: credential Secret, no workload identity
    volume: bool = False
    #: ConfigMap entries: (environment variable, RenderOptions field), set when the field is
    #: and the repository is of this backend
    settings: tuple[tuple[str, str], ...] = ()
    #: ConfigMap entries set when the field is, whatever the repository's backend (a
    #: ``--copy-to`` destination of this backend reads them too)
    shared_settings: tuple[tuple[str, str], ...] = ()
    #: ConfigMap entries set when no repository URL is given (the default backend: the
    #: repository is then built from these settings)
    default_settings: tuple[tuple[str, str], ...] = ()
    #: environment variables holding its credentials: never in a ConfigMap (``extra_env``
    #: refuses them), and every variable starting with one of ``secret_env_prefixes`` too
    secret_env: tuple[str, ...] = ()
    secret_env_prefixes: tuple[str, ...] = ()
    #: ServiceAccount annotation binding a workload identity; None: the backend has none
    identity_annotation: str | None = None
    #: what a workload identity must look like, and how a message names it
    identity: re.Pattern[str] | None = None
    identity_word: str = ""
    #: labels the pod of a job with a workload identity needs (a webhook acts on them)
    identity_pod_labels: Mapping[str, str] = field(default_factory=dict)
    #: the RenderOptions field holding the jobs' default credential Secrets (``s3_secrets``)
    secrets_option: str | None = None
    #: else the default credential Secret's name prefix (``<prefix>-<role>``)
    secret_prefix: str | None = None
    #: the credential Secret's example data (``{placeholder}`` where a value goes)
    secret_data: Mapping[str, str] = field(default_factory=dict)
    #: the credential Secret's description (``{role}``: the job)
    secret_description: str = ""
    #: None: the Secret reaches the pod by envFrom; else mounted as this key file
    key_file: KeyFile | None = None
    #: what a job without a credential Secret (a workload, managed or node identity) needs:
    #: (RenderOptions field, URL query parameter), one of them set, and the message if neither
    identity_needs: tuple[str, str, str] | None = None


@dataclass(frozen=True)
class Backend:
    """What the package knows of one backend without importing it."""

    #: the URL scheme (``s3`` in ``s3://BUCKET/PREFIX``)
    scheme: str
    #: the module holding the backend and its ``build(url, settings, retry_deadline_s)``
    module: str
    #: how a repository URL of this backend is written, for help and error messages
    form: str
    #: the bucket/container name rule; None for a backend addressed by a path (``file://``)
    container: re.Pattern[str] | None = None
    #: what the container is called in messages ("bucket", "container")
    container_word: str = "bucket"
    #: query parameters naming the service (never the repository, never credentials):
    #: name -> "url" (an http(s) URL without credentials) or "text"
    params: Mapping[str, str] = field(default_factory=dict)
    #: the settings (config.SPECS names) its ``build`` reads
    settings: tuple[str, ...] = ()
    #: what ``k8s render`` needs for it
    kubernetes: Kubernetes = field(default_factory=Kubernetes)

    def build(self, url: RepositoryURL, settings: Any, retry_deadline_s: float) -> Storage:
        """The backend's Storage for repository ``url`` (imports its module now)."""
        built: Storage = importlib.import_module(self.module).build(url, settings,
                                                                    retry_deadline_s)
        return built


_BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add ``backend`` (replacing one of the same scheme); returns it."""
    _BACKENDS[backend.scheme] = backend
    return backend


def unregister(scheme: str) -> None:
    """Remove the backend of ``scheme`` (tests register toy backends and take them away)."""
    _BACKENDS.pop(scheme, None)


def backends() -> tuple[Backend, ...]:
    """Every registered backend, in registration order."""
    return tuple(_BACKENDS.values())


def get(scheme: str) -> Backend | None:
    """The backend of ``scheme``, or None."""
    return _BACKENDS.get(scheme)


def schemes() -> tuple[str, ...]:
    """The registered URL schemes."""
    return tuple(_BACKENDS)


def either(words: list[str]) -> str:
    """``a, b or c``: how a list of choices reads in a message."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


_AZURE_SECRET = ("DefaultEndpointsProtocol=https;AccountName={placeholder};"
                 "AccountKey={placeholder};EndpointSuffix=core.windows.net")
_GCS_KEY = "key.json"

register(Backend("s3", "prefect_dr.storage.s3", "s3://BUCKET/PREFIX",
                 re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$"), "bucket",
                 {"endpoint": "url", "region": "text"},
                 ("s3_endpoint_url", "s3_region", "s3_storage_class", "s3_sse",
                  "s3_sse_kms_key_id", "s3_object_lock_mode", "s3_object_lock_days"),
                 Kubernetes(
                     settings=(("PREFECT_DR_S3_ENDPOINT_URL", "endpoint_url"),
                               ("PREFECT_DR_S3_REGION", "region")),
                     default_settings=(("PREFECT_DR_S3_BUCKET", "bucket"),
                                       ("PREFECT_DR_S3_PREFIX", "prefix")),
                     secret_env=("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
                     secret_env_prefixes=("AWS_",),
                     identity_annotation="eks.amazonaws.com/role-arn",
                     identity=re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$"),
                     identity_word="an IAM role ARN (arn:aws:iam::123456789012:role/NAME)",
                     secrets_option="s3_secrets",
                     secret_data={"AWS_ACCESS_KEY_ID": "{placeholder}",
                                  "AWS_SECRET_ACCESS_KEY": "{placeholder}"},
                     secret_description="S3 credentials of the {role} job only (docs/deploy.md: "
                                        "IAM policies)")))
register(Backend("file", "prefect_dr.storage.file", "file:///ABS/PATH",
                 kubernetes=Kubernetes(volume=True)))
register(Backend("azure", "prefect_dr.storage.azure", "azure://CONTAINER/PREFIX",
                 re.compile(r"^(?!.*--)[a-z0-9][a-z0-9\-]{1,61}[a-z0-9]$"), "container",
                 {"account_url": "url"}, ("azure_account_url",),
                 Kubernetes(
                     shared_settings=(("PREFECT_DR_AZURE_ACCOUNT_URL", "azure_account_url"),),
                     identity_annotation="azure.workload.identity/client-id",
                     identity=re.compile(
                         r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$"),
                     identity_word="a managed identity's client id (a GUID)",
                     # AKS's workload identity webhook injects the token and AZURE_* on it
                     identity_pod_labels={"azure.workload.identity/use": "true"},
                     secret_prefix="prefect-dr-azure",
                     secret_env=("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_KEY",
                                 "AZURE_CLIENT_SECRET"),
                     # or AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY
                     secret_data={"AZURE_STORAGE_CONNECTION_STRING": _AZURE_SECRET},
                     secret_description="Azure Blob credentials of the {role} job only: a "
                                        "connection string, or AZURE_STORAGE_ACCOUNT and "
                                        "AZURE_STORAGE_KEY (docs/deploy.md: Azure roles; "
                                        "prefer workload identity)",
                     identity_needs=(
                         "azure_account_url", "account_url",
                         "an azure:// repository read with an identity (a job without a "
                         "credential Secret) needs the account URL: azure_account_url "
                         "(PREFECT_DR_AZURE_ACCOUNT_URL) or ?account_url= in the URL"))))
register(Backend("gs", "prefect_dr.storage.gcs", "gs://BUCKET/PREFIX",
                 re.compile(r"^[a-z0-9][a-z0-9._\-]{1,220}[a-z0-9]$"), "bucket",
                 kubernetes=Kubernetes(
                     identity_annotation="iam.gke.io/gcp-service-account",
                     identity=re.compile(
                         r"^[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z0-9.:-]+\.gserviceaccount\.com$"),
                     identity_word="a Google service account e-mail "
                                   "(NAME@PROJECT.iam.gserviceaccount.com)",
                     secret_prefix="prefect-dr-gcs",
                     secret_data={_GCS_KEY: "# from 'gcloud iam service-accounts keys create "
                                            "key.json --iam-account "
                                            "NAME@PROJECT.iam.gserviceaccount.com'\n"
                                            "{placeholder}\n"},
                     secret_description="Google service account key of the {role} job only, "
                                        "mounted as GOOGLE_APPLICATION_CREDENTIALS "
                                        "(docs/deploy.md: GCS roles; prefer Workload Identity)",
                     key_file=KeyFile(_GCS_KEY, "/etc/prefect-dr/gcp",
                                      "GOOGLE_APPLICATION_CREDENTIALS", "gcp-key"))))
