"""A Helm ``pre-upgrade`` hook that takes a full backup before prefect-helm migrates the
database.

With ``backgroundServices.runAsSeparateDeployment: true`` the prefect-helm ``prefect-server``
chart runs a migration Job as a ``post-install, pre-upgrade`` hook with weight -5 (by default
there is no such Job: the server migrates the database when it starts, after every hook), and
Prefect's docs advise a backup before every upgrade (a migration over a large database can fail
part-way). :func:`pre_upgrade_hook` renders a Job
with a lower weight, so Helm runs it first and waits for it; when the backup fails (after its
retries, or at once on an exit code a retry cannot fix) the Job fails, and Helm fails the
upgrade before any migration has touched the database.

A hook runs only as part of a release: the Job goes into the ``templates/`` of a chart that
depends on ``prefect-server`` (docs/deploy.md shows one). It reuses what ``render()`` creates
in the same namespace — the backup ServiceAccount, the settings ConfigMap, the backup job's
credential Secret (if it has one) — and the chart's database Secret, so render both with the
namespace of the release.
"""

from __future__ import annotations

from typing import Any

from prefect_dr.k8s.options import RenderOptions, check
from prefect_dr.k8s.pods import job_spec, labels, metadata
from prefect_dr.kinds import Kind

#: The weight of prefect-helm's migration hook (charts/prefect-server pre-upgrade-hook.yaml).
MIGRATION_HOOK_WEIGHT = -5
#: Ours: lower, so Helm runs the backup before the migration.
HOOK_WEIGHT = -10
COMPONENT = "pre-upgrade-backup"
HOOK_LABEL = "trigger=pre-upgrade"
NOTE = (
    "Helm pre-upgrade hook: a full backup before prefect-helm's migration hook (docs/deploy.md,\n"
    "'Before every upgrade'). Put this file into the templates/ of a chart that depends on\n"
    "prefect-server; it reuses the backup ServiceAccount, ConfigMap and credential Secret\n"
    "that 'prefect-dr k8s render' creates in the same namespace. Give helm upgrade a\n"
    "--timeout longer than a backup takes."
)


def pre_upgrade_hook(options: RenderOptions | None = None) -> dict[str, Any]:
    """The hook Job ``<name>-pre-upgrade``: ``backup --kind full --label trigger=pre-upgrade
    --lock-wait 10m``: a scheduled backup holding the lock is waited for (up to
    ``hook_lock_wait``) instead of failing the upgrade at once with exit 11.

    One retry for a transient failure (none for the exit codes a retry cannot fix), the
    backup's deadline, and ``before-hook-creation``: the last hook Job and its logs stay until
    the next upgrade replaces them. Raises ValueError (one line) for a bad option.
    """
    options = options or RenderOptions()
    check(options)
    args = ["backup", "--kind", Kind.FULL.value, "--label", HOOK_LABEL,
            "--lock-wait", options.hook_lock_wait]
    spec = job_spec(options, "backup", args, deadline=options.backup_deadline_seconds,
                    backoff=1)
    # its own component; the pod's other labels (Azure workload identity) stay
    spec["template"]["metadata"]["labels"].update(labels(options, COMPONENT))
    meta = metadata(options, f"{options.name}-pre-upgrade", COMPONENT,
                    "Helm pre-upgrade hook: a full backup before prefect-helm's migration "
                    "hook (weight -5); a failed backup fails the upgrade")
    meta["annotations"].update({
        "helm.sh/hook": "pre-upgrade",
        "helm.sh/hook-weight": str(HOOK_WEIGHT),
        "helm.sh/hook-delete-policy": "before-hook-creation",
    })
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}
