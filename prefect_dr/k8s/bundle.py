"""Every object in apply order (:func:`render`), as YAML (:func:`to_yaml`), and the committed
example files of deploy/kubernetes/ (:func:`example_files`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from prefect_dr import __version__
from prefect_dr.k8s import helm, monitoring, repository, watch
from prefect_dr.k8s.options import ROLES, RenderOptions, check
from prefect_dr.k8s.pods import config_env, cron_job, example_secrets, metadata, restore_job
from prefect_dr.kinds import Kind


def render(options: RenderOptions | None = None) -> list[dict[str, Any]]:
    """What ``kubectl apply -f`` may own, in apply order: ServiceAccounts (annotated with their
    workload identities), ConfigMap, an NFS repository's PersistentVolume and claim, CronJobs
    (backup, prune, verify) and, unless ``watch`` is off, the watch Deployment. Never a
    Secret (the real ones are created beside it: :func:`secret_templates`) nor the restore
    Job (:func:`restore_job`, created by hand): applying the bundle again and again changes
    nothing else.

    Raises ValueError (one line) for a bad option, e.g. a cron expression Kubernetes would
    refuse or a URL carrying a password.
    """
    options = options or RenderOptions()
    check(options)
    objects: list[dict[str, Any]] = []
    for role in ROLES:
        meta = metadata(options, f"{options.name}-{role}", role,
                        f"Identity of the {role} job; bind its own cloud role here")
        meta["annotations"].update(repository.service_account_annotations(options, role))
        objects.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta,
                        "automountServiceAccountToken": False})
    objects.append({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": metadata(options, options.name, "config",
                                          "Non-secret prefect-dr settings (PREFECT_DR_*)"),
                    "data": config_env(options)})
    objects += repository.nfs_objects(options)
    verify_args = ["verify", "--latest", "--kind", Kind.FULL.value]
    if options.verify_scratch_url:
        verify_args += ["--scratch-url", options.verify_scratch_url]
    objects += [
        cron_job(options, "backup", options.backup_schedule, ["backup", "--kind", Kind.FULL.value],
                  deadline=options.backup_deadline_seconds, backoff=2,
                  description="Encrypted backup to the repository; holds the age recipients only"),
        *incremental_job(options),
        cron_job(options, "prune", options.prune_schedule, ["prune"],
                  deadline=options.prune_deadline_seconds, backoff=1,
                  description="Applies the retention policies; the only job that deletes"),
        cron_job(options, "verify", options.verify_schedule, verify_args,
                  deadline=options.verify_deadline_seconds, backoff=1,
                  description="Test-restores the newest full backup into a scratch database"),
    ]
    if options.watch:
        objects.append(watch.deployment(options))
    return objects


#: The incremental CronJob's name suffix and component (its pods are the backup role's).
INCREMENTAL_JOB = "backup-incremental"


def incremental_job(options: RenderOptions) -> list[dict[str, Any]]:
    """The incremental backup CronJob (issue 26), none when its schedule is empty: the backup
    job's identity and secrets, ``backup --kind incremental``, waiting out a running full
    backup (``--lock-wait``) instead of failing on its lock."""
    if not options.incremental_schedule:
        return []
    job = cron_job(options, "backup", options.incremental_schedule,
                   ["backup", "--kind", Kind.INCREMENTAL.value, "--lock-wait", "20m"],
                   deadline=options.backup_deadline_seconds, backoff=2,
                   description="Incremental backup: the history since the last backup, the "
                               "rest in full; chains on the full backup")
    job["metadata"]["name"] = f"{options.name}-{INCREMENTAL_JOB}"
    job["metadata"]["labels"]["app.kubernetes.io/component"] = INCREMENTAL_JOB
    return [job]


def secret_templates(options: RenderOptions | None = None) -> list[dict[str, Any]]:
    """The Secrets the jobs read, with placeholder values: fill them in and create them
    (``kubectl create secret``, docs/deploy.md) before applying the bundle; never apply them
    over real ones. Raises ValueError (one line) for a bad option."""
    options = options or RenderOptions()
    check(options)
    return example_secrets(options)


SECRETS_NOTE = ("Secret TEMPLATES: placeholder values. Fill them in and create them once "
                "(kubectl create -f, or the\n'kubectl create secret' lines of docs/deploy.md); "
                "they are never part of the bundle you apply.")
RESTORE_NOTE = ("Restore Job: kubectl create -f (not apply). Its name names the backup: "
                "delete the finished Job\nbefore creating it again.")


def select(options: RenderOptions, *, pre_upgrade_hook: bool = False,
           prometheus_rule: bool = False, secret_templates: bool = False,
           restore: bool = False) -> tuple[list[dict[str, Any]], str | None]:
    """What ``k8s render`` prints: every object of :func:`render`, or only the pre-upgrade
    hook Job, the Prometheus Operator objects, the Secret templates and/or the restore Job;
    with the YAML header they need (None for none). Raises ValueError (one line) for a bad
    option."""
    if not (pre_upgrade_hook or prometheus_rule or secret_templates or restore):
        return render(options), None
    check(options)
    objects: list[dict[str, Any]] = []
    notes: list[str] = []
    if secret_templates:
        objects += example_secrets(options)
        notes.append(SECRETS_NOTE)
    if restore:
        objects.append(restore_job(options))
        notes.append(RESTORE_NOTE)
    if pre_upgrade_hook:
        objects.append(helm.pre_upgrade_hook(options))
        notes.append(helm.NOTE)
    if prometheus_rule:
        objects += monitoring.monitoring(options)
        if options.watch:
            objects.append(watch.pod_monitor(options))
        notes.append(monitoring.NOTE)
    return objects, "\n".join(notes)


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
    "prefect-dr.yaml": "ServiceAccounts, settings ConfigMap, backup/prune/verify CronJobs, "
                       "watch Deployment.\n"
                       "Apply: kubectl apply -f prefect-dr.yaml",
    "secrets.example.yaml": "EXAMPLE Secrets: names and keys the jobs read, PLACEHOLDER values.\n"
                            "Never apply as is; create the real ones (docs/deploy.md).",
    "restore-job.yaml": "Restore Job of an EXAMPLE backup id: render yours with\n"
                        "'prefect-dr k8s render --restore-job ID|latest [--yes]', then\n"
                        "kubectl create -f (not apply). As rendered it only prints the plan.",
}


EXAMPLE_BACKUP_ID = "20260101T020000Z-abcdef"


def example_files(options: RenderOptions | None = None) -> dict[str, str]:
    """The committed example files of deploy/kubernetes/: file name -> YAML text."""
    options = options or RenderOptions()
    if options.restore_backup_id is None:
        options = replace(options, restore_backup_id=EXAMPLE_BACKUP_ID)
    groups: dict[str, list[dict[str, Any]]] = {
        "prefect-dr.yaml": render(options), "secrets.example.yaml": secret_templates(options),
        "restore-job.yaml": [restore_job(options)]}
    header = _FILE_HEADER.format(version=__version__)
    return {name: to_yaml(objs, header=f"{EXAMPLE_FILES[name]}\n{header}")
            for name, objs in groups.items()}
