"""Commands that set prefect-dr up: keygen, doctor, config show, k8s render."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from prefect_dr import console, crypto, errors, interrupt
from prefect_dr.cli import render
from prefect_dr.cli.application import command, config_app, k8s_app, state
from prefect_dr.cli.common import (
    OutputFlag,
    WideFlag,
    json_mode,
    parse_labels,
    settings,
    wide_wanted,
)


@command(config_app, "show")
def config_show(wide: WideFlag = False, output: OutputFlag = None) -> None:
    """Print the effective settings, where each came from, with secrets redacted, and where
    the repository's credentials come from."""
    from prefect_dr.storage import factory

    current = settings()
    rows = current.display()
    repository, source = "", "no repository configured"
    if current.repository or current.s3_bucket:
        repository = str(current.repository_url)
        try:  # show the settings even when the backend cannot be opened with them
            source = factory.from_settings(current).credentials_source()
        except errors.DRError as exc:
            interrupt.raise_if_noted()
            source = f"unknown ({exc.message})"
    if json_mode():
        body = {"settings": rows, "repository": repository, "credentials": source,
                "config_file": str(current.config_file or ""),
                "warnings": list(current.warnings)}
        if repository.startswith("s3://"):
            body["aws_credentials"] = source  # the name before issue 16, kept for scripts
        console.print_json(body)
        return
    render.settings(rows, wide=wide_wanted(wide, output))
    console.line(f"Repository: {repository or '(none)'}; credentials: {source}")


@command()
def keygen(
    output: Annotated[Path, typer.Option("--output", "-o", help="Key file to create (the age "
                                         "identity; with --signing the signing key).")],
    signing_key: Annotated[bool, typer.Option(
        "--signing", help="Make only an Ed25519 signing key (in --output).")] = False,
    age_only: Annotated[bool, typer.Option(
        "--age-only", help="Make only an age identity (no signing key).")] = False,
    signing_output: Annotated[Path | None, typer.Option(
        "--signing-output", help="Signing key file to create beside the identity (default: "
        "OUTPUT's name with .signing.pem).")] = None,
) -> None:
    """Create the keys (mode 0600, never overwritten) and print their public halves.

    By default both: an age identity in OUTPUT and an Ed25519 signing key beside it; prints
    the recipient (PREFECT_DR_AGE_RECIPIENTS) on the first line and the verify key
    (PREFECT_DR_VERIFY_KEY) on the second. --signing makes only a signing key, --age-only
    only an age identity (one line each).
    """
    from prefect_dr import signing

    if signing_key and age_only:
        raise errors.UsageError("give --signing or --age-only, not both")
    if signing_key:
        text, public = signing.generate()
        crypto.write_secret_file(output, text)
        _keys_made([("signing-key", output, public,
                     "PREFECT_DR_VERIFY_KEY; point PREFECT_DR_SIGNING_KEY_FILE at the file")])
        return
    made = []
    sign_path = signing_output or output.with_name(output.stem + ".signing.pem")
    if not age_only and sign_path.exists() and not output.exists():  # nothing half made
        raise errors.UsageError(f"{sign_path} exists; not overwritten (give --signing-output)")
    text, public = crypto.generate_identity()
    crypto.write_secret_file(output, text)
    made.append(("age-identity", output, public, "PREFECT_DR_AGE_RECIPIENTS; point "
                 "PREFECT_DR_AGE_IDENTITY_FILE at the file where you verify and restore"))
    if not age_only:
        text, verify = signing.generate()
        crypto.write_secret_file(sign_path, text)
        made.append(("signing-key", sign_path, verify, "PREFECT_DR_VERIFY_KEY; point "
                     "PREFECT_DR_SIGNING_KEY_FILE at the file where you back up"))
    _keys_made(made)


def _keys_made(made: list[tuple[str, Path, str, str]]) -> None:
    """Report the key files written: public halves on stdout, one per line."""
    if json_mode():
        first = made[0]
        body: dict[str, object] = {"key_file": str(first[1]), "public_key": first[2],
                                   "kind": "ed25519-signing" if first[0] == "signing-key"
                                   else "age-identity"}
        for kind, path, public, _ in made:
            if kind == "signing-key":
                body.update(signing_key_file=str(path), verify_key=public)
            else:
                body.update(identity_file=str(path), recipient=public)
        console.print_json(body)
        return
    for _, _, public, _ in made:
        console.line(public)
    for i, (_, path, _, hint) in enumerate(made, 1):
        which = "above" if len(made) == 1 else ("first line" if i == 1 else "second line")
        console.info(f"wrote {path} (keep it secret; put the {which} in {hint})")


@command(name="doctor")
def doctor_cmd() -> None:
    """Check the database, client tools, S3 bucket and keys; exit 0 only if all required pass
    (so it fails when the next backup is bound to fail)."""
    from prefect_dr import doctor

    report = doctor.run(settings())
    if json_mode():
        console.print_json(report.to_dict())
    else:
        render.doctor(report)
    for check in report.failed:
        console.error(f"{check.name}: {check.detail}")
    if not report.ok:
        raise typer.Exit(errors.FAILURE)


@command(k8s_app, "render")
def k8s_render(
    schedule: Annotated[str, typer.Option("--schedule", metavar="CRON",
                                          help="Backup CronJob schedule.")] = "0 2 * * *",
    verify_schedule: Annotated[str, typer.Option(
        "--verify-schedule", metavar="CRON", help="Verify CronJob schedule.")] = "0 4 * * *",
    prune_schedule: Annotated[str, typer.Option(
        "--prune-schedule", metavar="CRON", help="Prune CronJob schedule.")] = "0 6 * * *",
    incremental_schedule: Annotated[str, typer.Option(
        "--incremental-schedule", metavar="CRON", help="Incremental backup CronJob schedule "
        "(hourly by default; '' renders none).")] = "30 * * * *",
    namespace: Annotated[str, typer.Option(
        "--namespace", help="Namespace of every object (created by you, not by the "
        "manifests).")] = "prefect-dr",
    image: Annotated[str | None, typer.Option("--image", help="Container image.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File (default stdout).")
                      ] = None,
    database_secret: Annotated[str, typer.Option(
        "--database-secret", metavar="NAME[:KEY]",
        help="Secret the jobs read the database URL from (as PREFECT_API_DATABASE_CONNECTION_URL;"
             " default: prefect-helm's). With KEY PGPASSWORD it holds only the password and "
             "the database URL setting goes into the ConfigMap.")
    ] = "prefect-server-postgresql-connection:connection-string",  # noqa: S107 - a name
    database_password_secret: Annotated[str | None, typer.Option(
        "--database-password-secret", metavar="NAME:KEY",
        help="Instead: a Secret whose KEY holds only the database password (prefect-helm's "
             "externalDatabase existingSecret); the jobs get it as PGPASSWORD and the database "
             "URL setting (user, host, database) goes into the ConfigMap.")
    ] = None,
    secret_templates: Annotated[bool, typer.Option(
        "--secret-templates", help="Only the Secret templates (placeholder values): fill "
        "in and create them once; never part of the bundle you apply.")] = False,
    restore_job: Annotated[str | None, typer.Option(
        "--restore-job", metavar="ID|latest",
        help="Only the restore Job of this backup (latest: the newest complete full one, "
             "read from the repository), named after it; --dry-run unless --yes.")
    ] = None,
    yes: Annotated[bool, typer.Option(
        "--yes", help="With --restore-job: a real restore (restore ID --yes), not a plan.")
    ] = False,
    staging_storage_class: Annotated[str | None, typer.Option(
        "--staging-storage-class", metavar="CLASS",
        help="With --restore-job: stage the dump on a generic ephemeral volume of this "
             "StorageClass sized from the manifest (plaintext + 10%), pg_restore in parallel; "
             "without, the restore streams with one job.")
    ] = None,
    notify_secret: Annotated[str | None, typer.Option(
        "--notify-secret", metavar="NAME",
        help="Secret holding the apprise URLs (key urls) every job gets as PREFECT_DR_NOTIFY.")
    ] = None,
    pre_upgrade_hook: Annotated[bool, typer.Option(
        "--pre-upgrade-hook", help="Only the Helm pre-upgrade hook Job: a full backup before "
        "prefect-helm's migration (weight -10 < -5); a failed backup fails the upgrade.")
    ] = False,
    prometheus_rule: Annotated[bool, typer.Option(
        "--prometheus-rule", help="Only the Prometheus Operator objects: a PrometheusRule with "
        "the alerts and a ServiceMonitor for the Pushgateway.")] = False,
    prometheus_label: Annotated[list[str] | None, typer.Option(
        "--prometheus-label", metavar="KEY=VALUE",
        help="Label the Prometheus Operator selects rules and monitors by (repeatable).")
    ] = None,
    workload_identity: Annotated[list[str] | None, typer.Option(
        "--workload-identity", metavar="JOB=IDENTITY",
        help="Bind a job (backup, prune, verify, restore) to a cloud identity instead of a "
             "credential Secret (repeatable): an IAM role ARN (s3://, IRSA), a managed "
             "identity's client id (azure://, AKS workload identity) or a Google service "
             "account e-mail (gs://, GKE Workload Identity).")
    ] = None,
    volume_claim: Annotated[str | None, typer.Option(
        "--volume-claim", metavar="NAME",
        help="file:// repositories: the PersistentVolumeClaim (ReadWriteMany) mounted at the "
             "repository's path in every job (default prefect-dr-repository).")
    ] = None,
    nfs: Annotated[str | None, typer.Option(
        "--nfs", metavar="SERVER:/EXPORT",
        help="file:// repositories: mount this NFS export at the repository's path instead "
             "of a claim.")
    ] = None,
    watch: Annotated[bool, typer.Option(
        "--watch/--no-watch",
        help="Render the watch Deployment (config-only backup within a minute of a "
             "configuration change).")] = True,
) -> None:
    """Print what 'kubectl apply -f' may own: ServiceAccounts, ConfigMap, CronJobs (backup,
    prune, verify) and the watch Deployment for the current settings and repository (s3://,
    azure://, gs:// or file://; schedules validated), never a Secret; or only the Secret
    templates, a restore Job, the pre-upgrade hook and/or the Prometheus Operator objects."""
    from prefect_dr import k8s

    if (yes or staging_storage_class) and not restore_job:
        raise errors.UsageError("--yes and --staging-storage-class go with --restore-job")
    restore: dict[str, object] = {}
    if restore_job:
        restore = _restore_target(restore_job, staging_storage_class, dry_run=not yes)
    try:
        options = k8s.options_from_settings(
            settings(), database_secret=database_secret,
            database_password_secret=database_password_secret, namespace=namespace,
            backup_schedule=schedule,
            verify_schedule=verify_schedule, prune_schedule=prune_schedule, image=image,
            incremental_schedule=incremental_schedule,
            pushgateway_url=state.pushgateway, metrics_instance=state.metrics_instance,
            notify_secret=notify_secret,
            prometheus_labels=parse_labels(prometheus_label or [], "--prometheus-label") or None,
            workload_identities=parse_labels(workload_identity or [],
                                             "--workload-identity") or None,
            volume_claim=volume_claim, nfs=nfs, watch=watch, **restore)
        objects, header = k8s.select(options, pre_upgrade_hook=pre_upgrade_hook,
                                     prometheus_rule=prometheus_rule,
                                     secret_templates=secret_templates,
                                     restore=bool(restore_job))
        text = k8s.to_yaml(objects, header=header)
    except ValueError as exc:
        raise errors.UsageError(str(exc)) from None
    if output:
        output.write_text(text, encoding="utf-8")
        console.info(f"wrote {output}")
    else:
        sys.stdout.write(text)


def _restore_target(ref: str, staging_class: str | None, *, dry_run: bool) -> dict[str, object]:
    """The restore Job's options: the backup ``ref`` names (``latest`` resolved in the
    repository) and, with a staging StorageClass, the room its manifest says staging needs."""
    from prefect_dr import catalog, restore_plan
    from prefect_dr.cli.common import select

    # only names the backup and sizes a volume: the Job's restore checks the signature itself
    manifest = catalog.require_complete(select(ref, False, None), trust=None)
    out: dict[str, object] = {"restore_backup_id": manifest.backup_id,
                              "restore_dry_run": dry_run}
    if staging_class:
        out["restore_staging_class"] = staging_class
        out["restore_staging_bytes"] = restore_plan.staging_need(manifest) or 1
    return out
