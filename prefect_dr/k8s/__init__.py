"""Kubernetes objects that run prefect-dr: pure functions from options to manifests.

Modules: ``options`` (:class:`RenderOptions`, their validation and their mapping from the
settings), ``repository`` (how the jobs reach an ``s3://``, ``azure://``, ``gs://`` or
``file://`` repository: credential Secrets, workload identities, the mounted volume), ``pods``
(labels, ConfigMap, hardened pods, Jobs, CronJobs, example Secrets, the restore Job),
``bundle`` (:func:`render` in apply order, :func:`to_yaml`, the example files), ``helm``
(:func:`pre_upgrade_hook`, a backup before prefect-helm's migration) and ``monitoring``
(:func:`monitoring`: PrometheusRule and the Pushgateway's ServiceMonitor).

``render(options)`` returns plain dicts (ready for ``to_yaml`` or a Kubernetes client):

- one ServiceAccount per job (``<name>-backup``, ``-prune``, ``-verify``, ``-restore``), so
  each can be bound to its own least-privilege cloud role (IRSA, Pod Identity, Workload
  Identity; ``workload_identities`` renders the binding annotation); no Kubernetes API token
  is mounted;
- a ConfigMap ``<name>`` with the non-secret ``PREFECT_DR_*`` settings;
- CronJobs ``<name>-backup``, ``<name>-prune`` and ``<name>-verify``;
- for an NFS export, a PersistentVolume and its claim.

Nothing else: ``kubectl apply -f`` of it again and again never touches a Secret and never meets
a ``generateName``. ``secret_templates(options)`` gives the Secrets with placeholders (the
repository's credentials per job, unless a job has a workload identity; the age identity;
optionally the database password, the signing key and Prefect's block key), created once by
hand; ``restore_job(options)`` the restore Job of one backup, named after it.

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
  ``k8s render --restore-job ID|latest`` renders it with a fixed name naming the backup
  (``<name>-plan-<id>`` for the default ``--dry-run``, ``<name>-restore-<id>`` with ``--yes``).
  It streams the dump (``--jobs 1``) so it never outgrows its pod, unless a staging
  StorageClass is named: then a generic ephemeral volume sized from the manifest holds the
  staged dump. ``backoffLimit: 0``: never retried automatically.
"""

from __future__ import annotations

from prefect_dr.k8s.bundle import (
    EXAMPLE_FILES,
    example_files,
    render,
    secret_templates,
    select,
    to_yaml,
)
from prefect_dr.k8s.helm import HOOK_WEIGHT, MIGRATION_HOOK_WEIGHT, pre_upgrade_hook
from prefect_dr.k8s.monitoring import NOTE as MONITORING_NOTE
from prefect_dr.k8s.monitoring import monitoring
from prefect_dr.k8s.options import (
    DEFAULT_DATABASE_SECRET,
    DEFAULT_IMAGE,
    DEFAULT_VOLUME_CLAIM,
    FROM_SETTINGS,
    NO_RETRY_EXIT_CODES,
    PLACEHOLDER,
    ROLES,
    UID,
    RenderOptions,
    options_from_settings,
    validate_schedule,
)
from prefect_dr.k8s.pods import config_env, example_secrets, restore_job

__all__ = [
    "DEFAULT_DATABASE_SECRET", "DEFAULT_IMAGE", "DEFAULT_VOLUME_CLAIM", "EXAMPLE_FILES",
    "FROM_SETTINGS", "HOOK_WEIGHT", "MIGRATION_HOOK_WEIGHT", "MONITORING_NOTE",
    "NO_RETRY_EXIT_CODES", "PLACEHOLDER", "ROLES", "UID", "RenderOptions", "config_env",
    "example_files", "example_secrets", "monitoring", "options_from_settings",
    "pre_upgrade_hook", "render", "restore_job", "secret_templates", "select", "to_yaml",
    "validate_schedule",
]
