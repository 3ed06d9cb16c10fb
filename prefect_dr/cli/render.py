"""How each command's result looks on a terminal: tables fitted to its width (ids and times
never split; free text shortened; low-priority columns dropped unless ``--wide``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect_dr import console
from prefect_dr.console import Column, ago, human_bytes, short_time
from prefect_dr.kinds import Standing

UTC_NOTE = "times UTC"


def _labels(labels: dict[str, str], sep: str = ",") -> str:
    return sep.join(f"{k}={v}" for k, v in sorted(labels.items()))


def backups(entries: list[Any], *, wide: bool = False) -> None:
    """`list`: one row per backup, newest last."""
    now = dt.datetime.now(dt.UTC)
    rows = []
    for e in entries:
        verified = e.verification.get("result", "") if e.verification else ""
        if not verified and e.source_verification:  # copied: never a verification here (I6)
            verified = f"{e.source_verification.get('result', '')} at the source"
        duration = f"{e.duration_s:.0f}s" if e.duration_s is not None else ""
        parent = e.manifest.parent if e.manifest else None  # an increment: its chain link
        kind = f"{e.kind} of {parent.rsplit('-', 1)[-1]}" if parent else e.kind or ""
        rows.append((e.backup_id, kind, e.status, short_time(e.started_at),
                     ago(e.started_at, now), duration, human_bytes(e.size),
                     _labels(e.labels, ", " if console.stdout_is_terminal() else ","),
                     verified or (e.error or "")))
    console.table(f"Backups ({UTC_NOTE})", [
        Column("id"), Column("kind"), Column("status"), Column("started"),
        Column("age", priority=2), Column("took", priority=6, justify="right"),
        Column("size", priority=3, justify="right"), Column("labels", 4, wrap=True),
        Column("verified / error", 5, truncate=True)], rows, status_column=2, wide=wide)


def copies(result: Any, *, wide: bool = False) -> None:
    """`copy`: one row per backup, what happened to it."""
    console.table(f"Copy to {result.target}", [
        Column("id"), Column("kind", priority=3), Column("result"),
        Column("copied", priority=2, justify="right"), Column("objects", priority=4),
        Column("detail", 5, truncate=True)], [
        (b.backup_id, b.kind or "", b.result, human_bytes(b.bytes_copied),
         f"{b.objects_copied} new, {b.objects_kept} kept", b.detail)
        for b in result.backups], status_column=2, wide=wide)


def manifest(m: Any, *, wide: bool = False) -> None:
    """`show`: the manifest, its artifacts and its row counts."""
    console.table(f"Backup {m.backup_id} ({UTC_NOTE})", [Column("field"), Column(
        "value", wrap=True)], [
        ("kind", m.kind), ("started", f"{short_time(m.started_at)} ({ago(m.started_at)})"),
        ("finished", short_time(m.finished_at)),
        ("prefect", m.prefect_version or "unknown"), ("alembic revision", m.alembic_revision),
        ("postgres", m.postgres_version), ("pg_dump", m.pg_dump_version),
        ("database", m.database), ("labels", _labels(m.labels)),
        ("block key", ", ".join(f"{k}={v}" for k, v in m.block_key.items())),
        ("signed", f"by key {m.signature.get('key_id')}" if m.signature else "no"),
        ("repository", m.repository or "(not bound: written before issue 27)"),
        *([("chain", f"increment {m.increment['depth']} of base {m.increment['base']}, "
                     f"parent {m.increment['parent']}, history since {m.increment['since']}")]
          if m.increment else []),
    ], wide=wide)
    console.table("Artifacts", [
        Column("name"), Column("size", justify="right"),
        Column("plaintext", priority=1, justify="right"), Column("sha256", priority=3),
        Column("key", priority=2, truncate=True)], [
        (a.name, human_bytes(a.size), human_bytes(a.plaintext_size), a.sha256[:16], a.location)
        for a in m.artifacts], wide=wide)
    console.table("Row counts", [Column("table"), Column("rows", justify="right"),
                                 Column("exact")], [
        (t, c["rows"], "yes" if c.get("exact") else "estimate")
        for t, c in sorted(m.row_counts.items()) if c.get("rows")], wide=wide)


def verification(report: Any) -> None:
    """`verify`: one row per check."""
    rows = [(c.name, c.artifact or "", "ok" if c.ok else "fail", f"{c.duration_s:.2f}s",
             c.detail) for c in report.checks]
    result = report.result.value if report.ok else report.result.value.upper()
    if report.standing != Standing.WHOLE:  # a verified partial backup is still partial (I2)
        result += f" ({report.standing} backup)"
    console.table(f"Verification of {report.backup_id}: {result}", [
        Column("check"), Column("artifact", priority=2), Column("result"),
        Column("time", priority=3, justify="right"), Column("detail", 1, wrap=True)],
        rows, status_column=2)


def plan(p: Any) -> None:
    """`restore`: the plan and its preflight."""
    console.table(f"Restore plan for backup {p.backup_id}", [Column(""), Column(
        "", wrap=True)], [
        ("backup", f"{p.backup_id} ({p.kind}), Prefect {p.prefect_version or '?'}, "
                   f"revision {p.backup_revision}"),
        ("target", f"{p.target} ({'exists' if p.target_exists else 'will be created'}"
                   + (f", revision {p.target_revision}" if p.target_exists else "") + ")"),
        ("target prefect", (f"{p.target_prefect_version} (from {p.target_prefect_source})"
                            if p.target_prefect_version else f"({p.target_prefect_source})")),
        ("schema", ("ok: " if p.schema_ok else "REFUSED: ") + p.schema_reason),
        ("creates", ", ".join(p.creates)),
        ("renames", "; ".join(f"{a} -> {b}" for a, b in p.renames)),
        ("phases", (f"1: everything but the rows of {', '.join(p.deferred)}, swapped in "
                    "(Prefect can serve); 2: those rows loaded into the live database"
                    if p.tiered else "one: everything restored before the swap")),
        ("safety backup", "yes, after the swap, from the kept database (nothing waits for "
                          "it)" if p.safety_backup else "no"),
        ("runs as", (f"{p.restore_role} (owner of the restored database; never a "
                     "superuser)") if p.restore_role else "?"),
        ("foreign objects", ", ".join(p.foreign_objects) or "none"),
        ("pg_restore", p.staging),
        ("reconcile", "before the swap: " + "; ".join(p.reconcile_notes)),
        ("runtime state", "; ".join(p.redis_notes) or "not read"),
        ("disk needed", human_bytes(p.disk_needed) + " (the backed-up database's size; the "
                        "old database is kept too)" if p.disk_needed else "unknown"),
    ])
    changed = [r for r in p.config_diff if r["change"]]
    console.table("Configuration tables (backup vs current)", [
        Column("table"), Column("backup", justify="right"), Column("current", justify="right"),
        Column("change", justify="right")],
        [(r["table"], r["backup"], r["current"], f"{r['change']:+d}")
         for r in (changed or p.config_diff)])
    console.table("Run history (backup vs current)", [
        Column("table"), Column("backup", justify="right"), Column("current", justify="right"),
        Column("change", justify="right")],
        [(r["table"], r["backup"], r["current"] if r["exact"] else f"~{r['current']}",
          f"{r['change']:+d}") for r in p.history_diff if r["backup"] or r["current"]])
    console.table("Preflight", [Column("check"), Column("status"), Column("detail",
                                                                          wrap=True)],
                  [(f.name, "ok" if f.ok else ("REFUSED" if f.blocking else "warn"), f.detail)
                   for f in p.preflight], status_column=1)


def freshness(report: Any) -> None:
    """`status`: one row per schedule, with the rule it was judged by."""
    console.table("prefect-dr status", [Column("what"), Column("status"),
                                        Column("detail", wrap=True),
                                        Column("rule", 1, wrap=True)],
                  [(i.what, "ok" if i.ok else "fail", i.detail, i.rule)
                   for i in report.items], status_column=1)


def prune(result: Any, *, dry_run: bool, wide: bool = False) -> None:
    """`prune`: one row per backup with its action and reasons, oldest first (as `list`)."""
    title = "Prune plan (dry run: nothing deleted)" if dry_run else "Prune"
    console.table(f"{title} ({UTC_NOTE})", [
        Column("kind"), Column("id"), Column("status", priority=3), Column("started"),
        Column("verified", priority=4), Column("size", priority=5, justify="right"),
        Column("action"), Column("reasons", 2, wrap=True)],
        [(r["kind"], r["id"], r["status"], short_time(r["started_at"]),
          {True: "yes", False: "no"}.get(r["verified"], ""), human_bytes(r.get("size")),
          r["action"], "; ".join(r["reasons"])) for r in result.rows()],
        status_column=6, wide=wide)


def kept(rows: list[Any]) -> None:
    """`rollback --list`: databases kept by restore and rollback."""
    console.table("Kept databases", [
        Column("name"), Column("kind"), Column("size", priority=2, justify="right"),
        Column("age", priority=1), Column("note", 3, truncate=True)],
        [(k.name, k.kind, human_bytes(k.size), _age(k.age), k.comment) for k in rows])


def _age(delta: dt.timedelta) -> str:
    return ago((dt.datetime.now(dt.UTC) - delta).isoformat())


def doctor(report: Any) -> None:
    """`doctor`: one row per check."""
    console.table("prefect-dr doctor", [Column("check"), Column("status"),
                                        Column("detail", wrap=True)],
                  [(c.name, c.status, c.detail) for c in report.checks], status_column=1)


def settings(rows: list[dict[str, str]], *, wide: bool = False) -> None:
    """`config show`: every setting, its variable, value and source (value and source wrap,
    never shortened: they are what the command is for)."""
    console.table("Settings", [
        Column("setting"), Column("environment variable", priority=2),
        Column("value", wrap=True), Column("source", wrap=True)],
        [(r["name"], r["env"], r["value"], r["source"]) for r in rows], wide=wide)


def rehearsal(r: Any) -> None:
    """`rehearse-upgrade`: the summary, then every migration, slowest first."""
    console.table(f"Upgrade rehearsal of backup {r.backup_id}", [Column(""), Column(
        "", truncate=True)], [
        ("prefect", f"{r.prefect_version} ({r.prefect_python})"),
        ("revision", f"{r.from_revision} -> {r.to_revision}"),
        ("restore", f"{r.restore_seconds:.1f} s into {r.scratch_database} (dropped)"
         + (", history " + ", ".join(f"{t} {n:,} rows" for t, n in r.history_rows.items())
            if r.history_rows else "")),
        ("migrations", f"{len(r.steps)} in {r.total_seconds:.1f} s"),
        ("size", f"{human_bytes(r.size_before or 0)} -> {human_bytes(r.size_after or 0)}"),
        ("result", "ok" if r.ok else f"FAILED: {r.error}"),
    ])
    if r.steps:
        console.table("Migrations (slowest first; times are estimates, the total is measured)", [
            Column("revision"), Column("first release"),
            Column("est. seconds", justify="right")],
            [(s.revision, s.first_release or "?", f"{s.seconds:.2f}")
             for s in sorted(r.steps, key=lambda s: -s.seconds)])


def before_restore(p: Any, m: Any) -> list[str]:
    """The lines just above the restore's confirmation prompt: they stand on their own when
    the plan has scrolled away (what, how old, what is renamed, that nothing changed yet and
    how to undo it)."""
    renames = "; ".join(f"{a} -> {b}" for a, b in p.renames)
    kept = next((b for a, b in p.renames if a == p.target_db), None)
    return [
        "",
        f"About to restore backup {p.backup_id} ({p.kind}, taken "
        f"{short_time(m.started_at)} UTC, {ago(m.started_at)}) into {p.target}.",
        f"It is restored beside the live database first, then renamed: {renames}.",
        "Nothing has changed yet." + (
            f" The live database is kept as {kept}; 'prefect-dr rollback' undoes the restore."
            if kept else " There is no live database to keep."),
    ]
