"""`verify` and `restore` benchmarks (run through scripts/bench; see docs/benchmarks.md).

Both restore the same fixture: one `prefect-dr backup` (ours) and one peer object
(`pg_dump -Fc | age -r KEY`, uploaded with `aws s3 cp`), made once per database size under
s3://BUCKET/bench/fixture/ and recorded in $PREFECT_DR_STACK_DIR/bench-fixture.json, so that
`scripts/bench verify` and `scripts/bench restore` reuse them (they are not deleted: deleting
makes SeaweedFS compact volumes in the background, which would load the machine).

Variants (interleaved round-robin, the order rotating each round):

  peer           aws s3 cp s3://BUCKET/KEY - | age -d -i KEY | pg_restore -d NEWDB
                 (NEWDB created before the timing: the operator's streamed full restore)
  ours           verify: prefect-dr verify ID --json
                 restore: prefect-dr restore ID --target-url .../NEWDB --yes --json (--jobs 0)
  ours-tiered    prefect-dr restore ID --tiered --target-url .../NEWDB --yes --json
  ours-inplace   prefect-dr restore ID --target-url .../DB --yes --json over an existing DB
                 (a copy of a restored database, made before the timing), safety backup on
  ours-j1        (--jobs1) the plain restore with --jobs 1: streamed, nothing staged
  base, base-tiered  (--baseline-src DIR) ours and ours-tiered run from another checkout's
                 prefect_dr (DIR on PYTHONPATH): one run measures a change against the code before
--variants V1,V2 runs only those of the above (the peer is always run: ratios need it).

Besides wall time, RSS and CPU (scripts/benchlib.py), a restore run records:
  serving_s   `serving_after_s` of the --json result: from the command's start until the target
              held (phase 1 of) the backup under its final name (for ours-inplace: the swap)
  watched_s   the same moment seen from outside: pg_database polled every 50 ms from a
              connection to the `postgres` database (never to the target) until the target
              exists under its final name (ours-inplace: until its pre-restore copy appears)
  steps       each stderr line with its time since the start (the restore's progress log)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import psycopg
from benchlib import (
    QUIET_SHARE,
    BaseBench,
    add_ratios,
    measure,
    mib,
    ratio_verdict,
    say,
    tool_version,
    variant_stats,
)

FIXTURE_PREFIX = "bench/fixture"
#: variants that run a prefect-dr (this checkout's, or the --baseline-src one)
OURS = ("ours", "base")
RESTORE_TARGETS = {"verify": 1.1, "restore": 0.7}
RESTORE_VARIANTS = {"verify": ["ours", "peer"],
                    "restore": ["ours", "ours-tiered", "ours-inplace", "peer"]}
#: issue 15: time to serving <= 0.15x the peer (and at a larger size <= 1.25x the smallest's);
#: time to complete <= 1.0x the peer; in-place time to swap, safety backup on, <= 1.0x the peer
TIERED_TARGETS = {"serving_vs_peer": 0.15, "serving_flat": 1.25, "complete_vs_peer": 1.0,
                  "inplace_swap_vs_peer": 1.0}
#: the database the in-place variant's targets are copied from (not matched by leftover_dbs)
TEMPLATE_DB = "benchtemplate"


class RestoreBench(BaseBench):
    """`prefect-dr verify` / `prefect-dr restore` against `aws s3 cp | age -d | pg_restore`."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.pg_bin = Path(args.pg_bin)
        self.admin_url = self.env["PREFECT_DR_DATABASE_URL"]
        url = self.admin_url
        self.url_base = url[: url.rindex("/") + 1]  # postgresql://prefect@127.0.0.1:PORT/
        self.fixture_path = Path(self.env["PREFECT_DR_STACK_DIR"]) / "bench-fixture.json"
        self.fx: dict[str, Any] = {}
        self.variants = list(RESTORE_VARIANTS[args.what])
        if args.what == "restore" and args.jobs1:
            self.variants.insert(1, "ours-j1")
        if args.what == "restore" and args.baseline_src:
            self.variants[-1:-1] = ["base", "base-tiered"]
        if args.variants:
            wanted = set(args.variants.split(",")) | {"peer"}
            self.variants = [v for v in self.variants if v in wanted]

    # -- SQL helpers (outside every timed section)
    def psql(self, sql: str, *, superuser: bool = False) -> str:
        url, env = self.admin_url, self.env
        if superuser and self.env.get("PREFECT_DR_STACK_PG_ADMIN_URL"):
            # DROP ... WITH (FORCE) must be able to end autovacuum workers: needs the superuser
            url = self.env["PREFECT_DR_STACK_PG_ADMIN_URL"]
            env = {**self.env, "PGPASSWORD": self.env.get("PREFECT_DR_STACK_PG_ADMIN_PASSWORD", "")}
        out = subprocess.run([str(self.pg_bin / "psql"), "-X", "-A", "-t", "-w", "-q",
                              "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
                             env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"bench: psql failed: {sql}\n{out.stderr}")
        return out.stdout.strip()

    def create_db(self, name: str, template: str | None = None) -> None:
        self.drop_db(name)
        tail = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
        self.psql(f'CREATE DATABASE "{name}"{tail}')

    def drop_db(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', superuser=True)

    def db_exists(self, name: str) -> bool:
        return self.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{name}'") == "1"

    def db_size(self, name: str) -> int:
        return int(self.psql(f"SELECT pg_database_size('{name}')"))

    def leftover_dbs(self) -> list[str]:
        rows = self.psql("SELECT datname FROM pg_database WHERE datname LIKE 'bench\\_%' "
                         "OR datname LIKE 'prefect\\_dr\\_scratch\\_%' "
                         "OR datname LIKE 'prefect\\_%restore%'")
        return [r for r in rows.splitlines() if r]

    def watcher(self, variant: str, db: str) -> tuple[psycopg.Connection, Callable[[], bool]]:
        """A check, on a connection to the `postgres` database, that the target holds the
        restore under its final name: it exists (new target), or its pre-restore copy does
        (in place: the swap renames both in one transaction)."""
        conn = psycopg.connect(self.url_base + "postgres", autocommit=True)
        if variant == "ours-inplace":
            query = "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname LIKE %s)"
            param = db.replace("_", "\\_") + "\\_pre\\_restore\\_%"
        else:
            query = "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = %s)"
            param = db

        def check() -> bool:
            row = conn.execute(query, (param,)).fetchone()
            return bool(row and row[0])

        return conn, check

    # -- the fixture
    def ours_env(self) -> dict[str, str]:
        a = self.args
        return {**self.env, "PREFECT_DR_AGE_RECIPIENTS": a.recipient,
                "PREFECT_DR_AGE_IDENTITY_FILE": a.key_file,
                "PREFECT_DR_S3_PREFIX": f"{FIXTURE_PREFIX}/ours",
                "PREFECT_DR_PG_BIN_DIR": str(self.pg_bin)}

    def _show(self, backup_id: str) -> dict[str, Any] | None:
        show = subprocess.run([self.args.prefect_dr, "show", backup_id, "--json"],
                              env=self.ours_env(), capture_output=True, text=True)
        return json.loads(show.stdout) if show.returncode == 0 else None

    def fixture(self) -> dict[str, Any]:
        a = self.args
        with contextlib.suppress(OSError, ValueError):
            fx = json.loads(self.fixture_path.read_text())
            if abs(fx["database_size"] - a.database_size) <= 0.02 * a.database_size:
                shown = self._show(fx["backup_id"])
                names = [x["name"] for x in (shown or {}).get("artifacts", [])]
                # a fixture of this format: history artifacts and (format 4) split runs
                current = (any(n.startswith("history-") for n in names)
                           and any(n.startswith("runs-") for n in names))
                if shown and current and self.head_size(fx["peer_key"]) == fx["peer_size"]:
                    say(f"reusing the fixture: backup {fx['backup_id']} and s3://{self.bucket}/"
                        f"{fx['peer_key']} ({self.fixture_path})")
                    return fx
        say(f"making the fixture (untimed): prefect-dr backup and the peer's pg_dump -Fc | age "
            f"| aws s3 cp, under s3://{self.bucket}/{FIXTURE_PREFIX}/")
        with contextlib.suppress(Exception):
            self.delete_prefix(f"{FIXTURE_PREFIX}/")
        out = subprocess.run([a.prefect_dr, "backup", "--json"], env=self.ours_env(),
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"bench: fixture backup failed:\n{out.stderr[-2000:]}")
        bid = json.loads(out.stdout)["backup_id"]
        shown = self._show(bid) or {}
        dump = next(x for x in shown["artifacts"] if x["name"] == "dump")
        history = {x["name"]: {"size": x["size"], "plaintext_size": x["plaintext_size"]}
                   for x in shown["artifacts"] if x["name"].startswith(("history-", "runs-"))}
        key = f"{FIXTURE_PREFIX}/peer/dump.age"
        script = ('"$B_PG_DUMP" -Fc --no-password --dbname "$B_URL" | age -r "$B_RECIPIENT" | '
                  '"$B_AWS" s3 cp - "s3://$B_BUCKET/$B_KEY" --endpoint-url "$B_ENDPOINT" '
                  '--region "$B_REGION" --only-show-errors')
        env = {**self.env, "B_PG_DUMP": str(self.pg_bin / "pg_dump"), "B_URL": self.admin_url,
               "B_RECIPIENT": a.recipient, "B_AWS": a.aws, "B_BUCKET": self.bucket,
               "B_KEY": key, "B_ENDPOINT": self.endpoint, "B_REGION": self.region}
        subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], env=env, check=True)
        fx = {"backup_id": bid, "ours_key": dump["key"], "ours_size": dump["size"],
              "plaintext_size": dump["plaintext_size"], "history": history, "peer_key": key,
              "peer_size": self.head_size(key), "database_size": a.database_size,
              "made": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        self.fixture_path.write_text(json.dumps(fx, indent=2) + "\n")
        return fx

    # -- variants
    def command(self, variant: str, db: str) -> tuple[list[str], dict[str, str]]:
        a, fx = self.args, self.fx
        if variant.startswith(OURS):
            env = self.ours_env()
            if variant.startswith("base"):
                env["PYTHONPATH"] = a.baseline_src
            if a.what == "verify":
                return [a.prefect_dr, "verify", fx["backup_id"], "--json"], env
            argv = [a.prefect_dr, "restore", fx["backup_id"], "--target-url",
                    self.url_base + db, "--yes", "--json",
                    "--jobs", "1" if variant == "ours-j1" else "0"]
            return argv + (["--tiered"] if variant.endswith("-tiered") else []), env
        if variant == "peer":
            env = {**self.env, "B_AWS": a.aws, "B_BUCKET": self.bucket, "B_KEY": fx["peer_key"],
                   "B_ENDPOINT": self.endpoint, "B_REGION": self.region,
                   "B_KEYFILE": a.key_file, "B_PG_RESTORE": str(self.pg_bin / "pg_restore"),
                   "B_DB_URL": self.url_base + db}
            return ["bash", "-c", "set -euo pipefail\n"
                    '"$B_AWS" s3 cp "s3://$B_BUCKET/$B_KEY" - --endpoint-url "$B_ENDPOINT"'
                    ' --region "$B_REGION" --only-show-errors | age -d -i "$B_KEYFILE"'
                    ' | "$B_PG_RESTORE" --no-password -d "$B_DB_URL"'], env
        raise ValueError(variant)

    def _prepare_target(self, variant: str, db: str) -> None:
        """Untimed: the peer restores into an existing empty database; ours-inplace restores
        over a copy of a restored database; every other ours creates its own."""
        if variant == "peer":
            self.create_db(db)
        elif variant == "ours-inplace":
            if not self.db_exists(TEMPLATE_DB):
                say(f"making {TEMPLATE_DB} (untimed): a plain restore, copied for ours-inplace")
                self._untimed_restore(TEMPLATE_DB)
            self.create_db(db, template=TEMPLATE_DB)
        elif self.args.what == "restore":
            self.drop_db(db)

    def _untimed_restore(self, db: str) -> None:
        self.drop_db(db)
        argv, env = self.command("ours", db)
        subprocess.run(argv, env=env, check=True, capture_output=True)

    def _delete_backup(self, backup_id: str) -> None:
        """Delete a safety backup a run made into the fixture's repository (untimed)."""
        token = None
        while True:
            kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": f"{FIXTURE_PREFIX}/ours/"}
            if token:
                kw["ContinuationToken"] = token
            page = self.s3.list_objects_v2(**kw)
            for item in page.get("Contents", []):
                if f"/{backup_id}/" in item["Key"]:
                    self.s3.delete_object(Bucket=self.bucket, Key=item["Key"])
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def run_one(self, variant: str, number: int) -> dict[str, Any]:
        a = self.args
        run_id = f"{variant}-{number}"
        db = f"bench_{a.what}_{run_id.replace('-', '_')}"
        restoring = a.what == "restore" or variant == "peer"
        self._prepare_target(variant, db)
        argv, env = self.command(variant, db)
        out_path = self.tmp / f"{run_id}.out"
        watch_conn, watch = (self.watcher(variant, db) if a.what == "restore"
                             and variant.startswith(OURS) else (None, None))
        res: dict[str, Any] = {}
        try:
            with open(out_path, "wb") as out:
                res = measure(argv, env, stdout=out, stderr_path=self.tmp / f"{run_id}.err",
                              watch=watch)
            res.update(variant=variant, run=number)
            if res["exit"] != 0:
                err = (self.tmp / f"{run_id}.err").read_text(errors="replace")[-3000:]
                raise SystemExit(f"bench: {run_id} failed (exit {res['exit']}):\n{err}")
            if variant.startswith(OURS):
                with contextlib.suppress(ValueError):
                    res["output"] = json.loads(out_path.read_text())
                    res["serving_s"] = res["output"].get("serving_after_s")
            if restoring:
                res["restored_db_size"] = self.db_size(db)  # untimed
        finally:
            if watch_conn is not None:
                watch_conn.close()
            self._after_run(variant, db, run_id, res)
        res["object_size"] = self.fx["ours_size" if variant.startswith(OURS) else "peer_size"]
        return res

    def _after_run(self, variant: str, db: str, run_id: str, res: dict[str, Any]) -> None:
        """Untimed clean-up: keep the first complete restore as the in-place template, drop
        the rest, the pre-restore copy and the safety backup an in-place run made, and any
        database a run should have dropped itself (recorded under ``left_behind``)."""
        a = self.args
        if a.what == "restore" or variant == "peer":
            if (res.get("exit") == 0 and a.what == "restore" and variant != "ours-inplace"
                    and not self.db_exists(TEMPLATE_DB)):
                self.psql(f'ALTER DATABASE "{db}" RENAME TO "{TEMPLATE_DB}"')
            else:
                self.drop_db(db)
        safety = (res.get("output") or {}).get("safety_backup_id")
        if safety:
            self._delete_backup(safety)
        kept = (res.get("output") or {}).get("kept_database")
        if kept:
            self.drop_db(kept)
        left = [n for n in self.leftover_dbs() if n != db]
        if left:
            sizes = {n: self.db_size(n) for n in left}
            say(f"warning: {run_id} left databases behind: {sizes}; dropping them")
            for n in left:
                self.drop_db(n)
            res["left_behind"] = sizes

    def run(self) -> dict[str, Any]:
        try:
            self.fx = self.fixture()
            return self._rounds()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if self.args.what == "restore":
                self.drop_db(TEMPLATE_DB)

    def _rounds(self) -> dict[str, Any]:
        a = self.args
        say(f"{a.runs} rounds of {', '.join(self.variants)} (no warm-up run: the objects were "
            "just read or written; the rotating order spreads cache effects)")
        runs = self.round_robin(self.variants, "restored_db_size", "db")
        for r in runs:
            if "serving_s" in r or "watched_s" in r:
                say(f"{r['variant']}-{r['run']}: serving after {r.get('serving_s')} s "
                    f"(reported), {r.get('watched_s')} s (watched); complete {r['wall_s']} s")
        left = self.leftover_dbs()
        if left:
            say(f"warning: databases left on the server: {', '.join(left)}")
        return {"runs": runs, "fixture": self.fx, "leftover_databases": left,
                "summary": summarise_restore(runs, self.variants)}


def summarise_restore(runs: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    out = {v: variant_stats([r for r in runs if r["variant"] == v], "restored_db_size")
           for v in variants}
    for v in variants:
        add_ratios(out[v], out["peer"], "peer")
        rs = [r for r in runs if r["variant"] == v]
        for field in ("serving_s", "watched_s"):
            values = [r[field] for r in rs if r.get(field) is not None]
            if values:
                out[v][f"{field}_median"] = statistics.median(values)
                out[v][f"{field}_min"], out[v][f"{field}_max"] = min(values), max(values)
        # The target's "from the command's start" is the watched time: serving_after_s starts
        # when the restore itself starts, after the CLI's start-up, manifest read and plan.
        field = "watched_s" if out[v].get("watched_s_median") is not None else "serving_s"
        if out[v].get(f"{field}_median") is not None:
            out[v]["serving_basis"] = field
            out[v]["serving_vs_peer"] = round(
                out[v][f"{field}_median"] / out["peer"]["wall_median_s"], 3)
            out[v]["serving_vs_peer_best"] = round(
                out[v][f"{field}_min"] / out["peer"]["wall_min_s"], 3)
        if out[v].get("serving_s_median") is not None:
            out[v]["serving_reported_vs_peer"] = round(
                out[v]["serving_s_median"] / out["peer"]["wall_median_s"], 3)
    return out


def _simple(value: float, target: float, **extra: Any) -> dict[str, Any]:
    return {"value": value, "target": f"<= {target}", "met": value <= target, **extra}


def restore_verdicts(what: str, summary: dict[str, Any],
                     smaller: dict[str, Any] | None = None) -> dict[str, Any]:
    """Targets met or not; ``smaller`` is the summary of the same session's smallest size (for
    the flatness of the time to serving)."""
    target = RESTORE_TARGETS[what]
    out = {"wall_vs_peer": ratio_verdict(summary["ours"], "peer", target)}
    if "ours-j1" in summary:
        v = ratio_verdict(summary["ours-j1"], "peer", target)
        v["informative"] = True  # the --jobs 1 variant only shows the effect of staging
        out["wall_vs_peer_jobs1"] = v
    t = TIERED_TARGETS
    tiered, inplace = summary.get("ours-tiered"), summary.get("ours-inplace")
    if tiered and tiered.get("serving_vs_peer") is not None:
        basis = tiered["serving_basis"]
        out["tiered_serving_vs_peer"] = _simple(tiered["serving_vs_peer"], t["serving_vs_peer"],
                                                best_of_runs=tiered["serving_vs_peer_best"],
                                                basis=basis)
        out["tiered_serving_reported_vs_peer"] = _simple(
            tiered["serving_reported_vs_peer"], t["serving_vs_peer"], informative=True,
            basis="serving_s")
        if smaller and smaller.get("ours-tiered", {}).get(f"{basis}_median"):
            base = smaller["ours-tiered"][f"{basis}_median"]
            out["tiered_serving_vs_smaller_size"] = _simple(
                round(tiered[f"{basis}_median"] / base, 3), t["serving_flat"],
                smaller_s=base, this_s=tiered[f"{basis}_median"], basis=basis)
    if tiered:
        out["tiered_complete_vs_peer"] = ratio_verdict(tiered, "peer", t["complete_vs_peer"])
    out["plain_complete_vs_peer"] = ratio_verdict(summary["ours"], "peer",
                                                   t["complete_vs_peer"])
    if inplace and inplace.get("serving_vs_peer") is not None:
        out["inplace_swap_vs_peer"] = _simple(inplace["serving_vs_peer"],
                                              t["inplace_swap_vs_peer"],
                                              best_of_runs=inplace["serving_vs_peer_best"],
                                              basis=inplace["serving_basis"])
        v = ratio_verdict(inplace, "peer", t["inplace_swap_vs_peer"])
        v["informative"] = True  # the whole command, safety backup included
        out["inplace_total_vs_peer"] = v
    return out


_STEP_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]+")
_STEP_DB = re.compile(r"\bbench_\w+?_\d+(?=\b|_restore_|_pre_restore_)")
_STEP_NOISE = re.compile(r"\d+")


def step_table(runs: list[dict[str, Any]], variants: list[str]) -> list[str]:
    """Median time since the start of each logged step of the ours variants (backup ids,
    database names and digits masked to match lines across runs), as markdown rows."""
    table: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        if not r["variant"].startswith(OURS) or "stderr_lines" not in r:
            continue
        seen: set[str] = set()
        for t, line in r["stderr_lines"]:
            try:  # --json: one JSON log record a line
                record = json.loads(line)
                if record.get("logger") == "prefect_dr.progress":
                    continue
                msg = str(record.get("msg", line))
            except ValueError:  # a long record cut at 300 characters
                if '"prefect_dr.progress"' in line:
                    continue
                found = re.search(r'"msg": "([^"]*)', line)
                msg = found.group(1) if found else line
            msg = _STEP_DB.sub("DB", _STEP_ID.sub("ID", msg))
            key = _STEP_NOISE.sub("#", msg)[:110]
            if key in seen or not key.strip():
                continue
            seen.add(key)
            table.setdefault(key, {}).setdefault(r["variant"], []).append(t)
    ours = [v for v in variants if v.startswith(OURS)]
    rows = sorted(table.items(), key=lambda kv: min(statistics.median(x) for x in kv[1].values()))
    lines = ["| step (log line, digits as #) | " + " | ".join(ours) + " |",
             "|---|" + "---|" * len(ours)]
    for key, per in rows:
        cells = [f"{statistics.median(per[v]):.2f}" if v in per else "" for v in ours]
        lines.append(f"| {key.replace('|', '/')} | " + " | ".join(cells) + " |")
    return lines


def restore_markdown(result: dict[str, Any]) -> str:
    s, fx, what = result["summary"], result["fixture"], result["params"]["what"]
    db = result["database_size_bytes"] / 2**30
    restored = next((row["restored_db_size_median"] for row in s.values()
                     if row["restored_db_size_median"]), None)
    hist = ", ".join(f"{k.removeprefix('history-')} {v['size'] / 2**20:.1f}"
                     for k, v in fx.get("history", {}).items())
    lines = [
        f"Database {db:.2f} GiB (pg_database_size); fixture: ours {fx['ours_size'] / 2**20:.1f} "
        f"MiB dump object ({fx['plaintext_size'] / 2**20:.1f} MiB plaintext)"
        + (f" + history and runs objects MiB: {hist}" if hist else "") + ", peer "
        f"{fx['peer_size'] / 2**20:.1f} MiB object; {result['params']['runs']} runs each, median "
        f"wall; RSS = max over runs; quiet = the rest of the machine used < {QUIET_SHARE:g} of a "
        "core.",
        "",
        "| variant | median wall s (min-max) | vs peer | serving s: reported (min-max) / watched "
        "(min-max) | serving (watched) vs peer | peak RSS MiB, main process "
        "| pg_restore RSS MiB (max) | tree RSS MiB (sum) | CPU s: tree / postgres / S3 / machine "
        "| restored DB MiB | quiet runs: n, median wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v, row in s.items():
        procs = row["procs_hwm_max_kib"]
        name = "prefect-dr" if v.startswith(OURS) else "aws"
        main_rss = mib(procs.get(name, row["maxrss_max_kib"]))
        pgr = mib(procs.get("pg_restore"))
        srv = row["server_cpu_median_s"]
        size = row["restored_db_size_median"]
        quiet = row["wall_quiet_median_s"]
        serving = "-"
        if row.get("serving_s_median") is not None:
            serving = (f"{row['serving_s_median']:.2f} ({row['serving_s_min']:.2f}-"
                       f"{row['serving_s_max']:.2f}) / "
                       + (f"{row['watched_s_median']:.2f} ({row['watched_s_min']:.2f}-"
                          f"{row['watched_s_max']:.2f})" if row.get("watched_s_median")
                          is not None else "-"))
        svp = f"{row['serving_vs_peer']:.3f}x" if row.get("serving_vs_peer") is not None else "-"
        lines.append(
            f"| {v} | {row['wall_median_s']:.2f} ({row['wall_min_s']:.2f}-{row['wall_max_s']:.2f})"
            f" | {row['vs_peer']:.2f}x | {serving} | {svp} | {main_rss:.1f} ({name})"
            f" | {f'{pgr:.1f}' if pgr is not None else '-'} | {mib(row['tree_rss_max_kib']):.1f}"
            f" | {row['cpu_median_s']:.1f} / {srv.get('pg', 0):.1f} / {srv.get('s3', 0):.1f}"
            f" / {row['machine_cpu_median_s']:.1f}"
            f" | {f'{size / 2**20:.1f}' if size else '-'}"
            f" | {row['quiet_runs']}, "
            f"{f'{quiet:.2f}' if quiet else '-'} |")
    lines.append("")
    if what == "verify":
        lines.append(f"- scratch disk needed: {restored / 2**20:.1f} MiB (pg_database_size of the "
                     "peer's restored database; ours restores the same dump)" if restored else
                     "- scratch disk needed: not measured")
    else:
        lines.append(f"- staging disk needed by --jobs 0: {fx['plaintext_size'] / 2**20:.1f} MiB "
                     "(the dump artifact's plaintext_size); restored database: "
                     + (f"{restored / 2**20:.1f} MiB" if restored else "not measured"))
    for name, v in result["verdicts"].items():
        tail = ", informative only" if v.get("informative") else ""
        extra = ""
        if "best_of_runs" in v:
            extra += f", best-of-runs {v['best_of_runs']}"
        if "quiet_runs" in v:
            extra += f", quiet-runs {v['quiet_runs']}"
        if v.get("noise_warning"):
            extra += " (UNCERTAIN: quiet runs disagree with the median)"
        if "basis" in v:
            watched = v["basis"] == "watched_s"
            extra += f" [{'watched from outside' if watched else 'serving_after_s'}]"
        if "smaller_s" in v:
            extra += f" ({v['this_s']:.2f} s here vs {v['smaller_s']:.2f} s at the smaller size)"
        lines.append(f"- {name}: {v['value']}{extra} (target {v['target']}{tail}): "
                     f"{'MET' if v['met'] else 'NOT MET'}")
    if what == "restore" and result.get("runs"):
        lines += ["", "Median time of each logged step since the command's start (s):", ""]
        lines += step_table(result["runs"], list(s))
    return "\n".join(lines)


def _smaller_summary(out: Path, session: str | None, size: int) -> dict[str, Any] | None:
    """The summary of the smallest-size restore result of the same scripts/bench session."""
    if not session:
        return None
    best: tuple[int, dict[str, Any]] | None = None
    for path in out.glob("restore-*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            other = json.loads(path.read_text())
            if other["params"].get("session") != session:
                continue
            if other["database_size_bytes"] < size * 0.9 and (
                    best is None or other["database_size_bytes"] < best[0]):
                best = (other["database_size_bytes"], other["summary"])
    return best[1] if best else None


def restore_main(args: argparse.Namespace) -> None:
    bench = RestoreBench(args)
    meta = {
        "date": bench.stamp, "host_cpus": os.cpu_count(),
        "mem_total_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(), "cpu": platform.processor() or platform.machine(),
        "pg_restore": tool_version([str(bench.pg_bin / "pg_restore"), "--version"]),
        "age": tool_version(["age", "--version"]),
        "aws": tool_version([args.aws, "--version"]),
        "prefect_dr": tool_version([args.prefect_dr, "--version"]),
    }
    result: dict[str, Any] = {
        "meta": meta,
        "params": {"what": args.what, "runs": args.runs, "history_gb": args.history_gb,
                   "session": args.session},
        "database_size_bytes": args.database_size,
    }
    result.update(bench.run())
    smaller = _smaller_summary(args.out, args.session, args.database_size)
    result["verdicts"] = restore_verdicts(args.what, result["summary"], smaller)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.what}-{bench.stamp}-{args.database_size / 2**30:.1f}gib.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    say(f"results written to {path}")
    print(restore_markdown(result))


def restore_report(path: Path, result: dict[str, Any], variants: list[str]) -> None:
    """Re-summarise one saved verify/restore result and print it (bench.py report)."""
    what = result["params"]["what"]
    result["summary"] = summarise_restore(result["runs"], variants)
    smaller = _smaller_summary(path.parent, result["params"].get("session"),
                               result["database_size_bytes"])
    result["verdicts"] = restore_verdicts(what, result["summary"], smaller)
    print(f"## {path.name} ({result['meta']['date']})\n")
    print(restore_markdown(result) + "\n")


def add_restore_args(r: argparse.ArgumentParser) -> None:
    """The options of `bench.py verify` and `bench.py restore`."""
    r.add_argument("--runs", type=int, default=3)
    r.add_argument("--history-gb", type=float, required=True, help="requested size (recorded)")
    r.add_argument("--database-size", type=int, required=True, help="pg_database_size bytes")
    r.add_argument("--recipient", required=True)
    r.add_argument("--key-file", required=True, help="age identity file (for decrypting)")
    r.add_argument("--pg-bin", required=True, help="PostgreSQL client bin folder")
    r.add_argument("--aws", required=True)
    r.add_argument("--prefect-dr", required=True)
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--session", help="one id for the sizes of one scripts/bench run (the "
                   "flatness of the time to serving compares them)")
    r.add_argument("--baseline-src", help="restore: also the variants base and base-tiered, "
                   "run with this folder on PYTHONPATH (another checkout's prefect_dr)")
    r.add_argument("--variants", help="restore: only these variants (comma-separated; the "
                   "peer always runs)")
    r.add_argument("--jobs1", action="store_true",
                   help="restore: also the plain restore with --jobs 1 (streamed)")
