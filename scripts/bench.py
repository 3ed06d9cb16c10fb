"""Backup benchmark: `prefect-dr backup` against the peer pipeline and the pg_dump floor.

Also `verify` and `restore` (scripts/bench_restore.py): `prefect-dr verify ID` / `prefect-dr
restore ID ...` (new database, --tiered, in place with the safety backup) against
`aws s3 cp | age -d -i KEY | pg_restore -d DB`, on one fixture backup reused across runs; the
measuring helpers are in scripts/benchlib.py; see docs/benchmarks.md.

Run through scripts/bench, which bootstraps, starts the bench stack, seeds it and makes a key:

    scripts/bench backup [--history-gb N[,M...]] [--runs K] [--stages]

This file does the measuring. Variants (each a fresh process tree, interleaved round-robin with a
rotating order so machine noise hits all alike; K runs each, medians reported):

  ours   prefect-dr backup --json        pg_dump -Fc -Z0 -> zstd -3 (threads) -> age -> S3 multipart
  peer   pg_dump -Fc | age -r KEY | aws s3 cp - s3://BUCKET/KEY   (what an operator would script)
  floor  pg_dump -Fc -Z0 > /dev/null     (reading the database; nothing can be faster)

With --stages, also (no S3 involved, to see where the time goes):

  zstd        pg_dump -Fc -Z0 | zstd -3 -T0 > /dev/null
  zstd-age    pg_dump -Fc -Z0 | zstd -3 -T0 | age -r KEY > /dev/null
  ours-nos3   prefect_dr.pipeline.encrypt_to(pg_dump stdout) into a null writer (in-process)
  peer-nos3   pg_dump -Fc | age -r KEY > /dev/null

What is measured, per run:
  wall_s        from spawn to exit of the variant's process tree (includes interpreter start-up)
  procs         per process name, its peak RSS: VmHWM (the kernel's high-water mark), read from
                /proc every 0.1 s while it runs (so only growth in its last 0.1 s could be missed)
  maxrss_kib    ru_maxrss from wait4(): the peak RSS of the largest single process of the tree.
                Exact for big processes, but it also counts the forked bench process before
                exec (~50 MiB), so small ones read too high; kept in the JSON as a cross-check
  tree_rss_kib  the largest sum of VmRSS over all processes of the tree at one sample
  cpu_s         user + system CPU seconds of the whole tree (rusage of wait4)
  server_cpu_s  CPU seconds of the bench stack's servers during the run: "pg" (the postmaster and
                its backends, e.g. the one serving pg_dump), "s3" (SeaweedFS), "prefect"
  machine_cpu_s busy CPU seconds of the whole machine (/proc/stat); what is left after the two
                above is other users' load ("foreign"). A run is "quiet" when foreign load was
                under QUIET_SHARE of one core; medians over quiet runs are reported beside the
                plain medians because this benchmark is CPU-bound on small machines.
  object_size   ours: the sum of every artifact's `size` in the manifest (dump, history
                tables, configuration; each checked against S3 HEAD); `dump_size` the dump's;
                peer: ContentLength of S3 HEAD of the uploaded object
The PostgreSQL server backend that serves pg_dump is outside every tree (the same for all).
Uploaded objects are deleted when all rounds are done. Progress goes to stderr; the markdown
table goes to stdout; JSON results go to --out. `bench.py report FILE...` re-prints saved results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psutil
from bench_restore import RESTORE_TARGETS, add_restore_args, restore_main, restore_report
from bench_scale import scale_report
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

TARGETS = {"peer_ratio": 0.6, "floor_ratio": 1.3, "rss_mib": 150.0}
MAIN_VARIANTS = ["ours", "peer", "floor"]
# Empties the repositories named in argv (run with the project's python, which has prefect_dr).
EMPTY_REPOSITORIES = """
import sys
from prefect_dr import config
from prefect_dr.storage import factory
settings = config.load()
for url in sys.argv[1:]:
    store = factory.open_url(url, settings)
    prefix = factory.parse(url).prefix
    for info in list(store.list(prefix + "/" if prefix else "")):
        store.delete(info.key)
"""
STAGE_VARIANTS = ["zstd", "zstd-age", "ours-nos3", "peer-nos3"]

# In-process run of prefect-dr's own streaming pipeline into a null writer: the cost of
# zstd + age + hashing in Python, without S3 and without the backup's bookkeeping.
OURS_NOS3 = r"""
import os, sys
from prefect_dr import crypto, pipeline
from prefect_dr.pg import dump
class Null:
    n = 0
    def write(self, b):
        self.n += len(b)
        return len(b)
argv = [os.environ["B_PG_DUMP"], "--format=custom", "--compress=0", "--no-password",
        "--dbname", os.environ["PREFECT_DR_DATABASE_URL"]]
with dump.ClientProcess(argv, dict(os.environ), "pg_dump") as proc:
    stats = pipeline.encrypt_to(proc.stdout, Null(),
                                [crypto.parse_recipient(os.environ["B_RECIPIENT"])])
    proc.wait()
print(stats.size)
"""



# --- the benchmark ------------------------------------------------------------------------------
class Bench(BaseBench):
    """`prefect-dr backup` against the peer pipeline and the pg_dump floor."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.repos = {f"ours@{url.split(':', 1)[0]}": url for url in args.repository}
        self.cleanup: list[str] = []  # repositories to empty at the end

    def command(self, variant: str, run_id: str) -> tuple[list[str], dict[str, str]]:
        a = self.args
        base = {"B_PG_DUMP": a.pg_dump, "B_URL": self.env["PREFECT_DR_DATABASE_URL"],
                "B_RECIPIENT": a.recipient, "B_AWS": a.aws, "B_BUCKET": self.bucket,
                "B_ENDPOINT": self.endpoint, "B_REGION": self.region}
        if variant == "ours":
            env = {**self.env, "PREFECT_DR_AGE_RECIPIENTS": a.recipient,
                   "PREFECT_DR_S3_PREFIX": f"{self.prefix}/ours",
                   "PREFECT_DR_PG_BIN_DIR": str(Path(a.pg_dump).parent)}
            return [a.prefect_dr, "backup", "--json"], env
        if variant in self.repos:
            url = self.repos[variant].rstrip("/") + f"/{self.prefix}/{run_id}"
            if url.startswith("file://"):
                Path(url[len("file://"):]).mkdir(parents=True, exist_ok=True)
            env = {**self.env, "PREFECT_DR_AGE_RECIPIENTS": a.recipient,
                   "PREFECT_DR_REPOSITORY": url,
                   "PREFECT_DR_PG_BIN_DIR": str(Path(a.pg_dump).parent)}
            return [a.prefect_dr, "backup", "--json"], env
        if variant == "floor":
            return [a.pg_dump, "--format=custom", "--compress=0", "--no-password",
                    "--dbname", self.env["PREFECT_DR_DATABASE_URL"]], self.env
        dump_fc = '"$B_PG_DUMP" -Fc --no-password --dbname "$B_URL"'
        dump_z0 = '"$B_PG_DUMP" -Fc -Z0 --no-password --dbname "$B_URL"'
        if variant == "peer":
            key = f"{self.prefix}/peer/{run_id}.dump.age"
            base["B_KEY"] = key
            return self._shell(
                f'{dump_fc} | age -r "$B_RECIPIENT" | "$B_AWS" s3 cp - "s3://$B_BUCKET/$B_KEY"'
                ' --endpoint-url "$B_ENDPOINT" --region "$B_REGION" --only-show-errors', base)
        if variant == "zstd":
            return self._shell(f"{dump_z0} | zstd -3 -T0 -q -c > /dev/null", base)
        if variant == "zstd-age":
            return self._shell(f'{dump_z0} | zstd -3 -T0 -q -c | age -r "$B_RECIPIENT"'
                               " > /dev/null", base)
        if variant == "peer-nos3":
            return self._shell(f'{dump_fc} | age -r "$B_RECIPIENT" > /dev/null', base)
        if variant == "ours-nos3":
            return [a.project_python, "-c", OURS_NOS3], {**self.env, **base}
        raise ValueError(variant)

    def run_one(self, variant: str, number: int) -> dict[str, Any]:
        run_id = f"{variant}-{number}"
        argv, env = self.command(variant, run_id)
        out_path = self.tmp / f"{run_id}.out"
        with open(out_path, "wb") as out:
            res = measure(argv, env, stdout=out, stderr_path=self.tmp / f"{run_id}.err")
        res.update(variant=variant, run=number)
        if res["exit"] != 0:
            err = (self.tmp / f"{run_id}.err").read_text(errors="replace")[-2000:]
            raise SystemExit(f"bench: {run_id} failed (exit {res['exit']}):\n{err}")
        if variant == "ours":
            out = json.loads(out_path.read_text())
            bid = out["backup_id"]
            show = subprocess.run([self.args.prefect_dr, "show", bid, "--json"], env=env,
                                  capture_output=True, check=True, text=True)
            manifest = json.loads(show.stdout)
            dump = next(x for x in manifest["artifacts"] if x["name"] == "dump")
            # every artifact the restore needs (format 2: the dump, the history tables, the
            # configuration; the backup's own `size` is their sum), not the dump alone: that is
            # what compares with the peer's object
            res.update(backup_id=bid, object_size=out["size"], dump_size=dump["size"],
                       plaintext_size=dump["plaintext_size"], total_size=out["size"])
            for x in manifest["artifacts"]:
                head = self.head_size(x["key"])
                if head != x["size"]:
                    raise SystemExit(f"bench: {x['name']}: manifest size {x['size']} != "
                                     f"S3 size {head}")
        elif variant in self.repos:
            out = json.loads(out_path.read_text())
            res.update(backup_id=out["backup_id"], object_size=out["size"],
                       total_size=out["size"])
            self.cleanup.append(env["PREFECT_DR_REPOSITORY"])
        elif variant == "peer":
            key = env["B_KEY"]
            res["object_size"] = self.head_size(key)
        elif variant == "ours-nos3":
            res["object_size"] = int(out_path.read_text().split()[-1])
        return res

    def run(self) -> dict[str, Any]:
        try:
            return self._rounds()
        finally:
            # Objects are deleted only at the end: deleting between runs makes SeaweedFS compact
            # volumes in the background, which would load the machine during later runs.
            say(f"deleting the benchmark's objects under s3://{self.bucket}/{self.prefix}/")
            try:
                self.delete_prefix(f"{self.prefix}/")
            except Exception as exc:
                say(f"warning: could not delete s3://{self.bucket}/{self.prefix}/: {exc}")
            shutil.rmtree(self.tmp, ignore_errors=True)
            if self.cleanup:
                say(f"deleting the {len(self.cleanup)} backups of the --repository variants")
                subprocess.run([self.args.project_python, "-c", EMPTY_REPOSITORIES,
                                *self.cleanup], env=self.env, check=False)

    def _rounds(self) -> dict[str, Any]:
        a = self.args
        variants = MAIN_VARIANTS + list(self.repos) + (STAGE_VARIANTS if a.stages else [])
        say(f"warm-up: one untimed floor run (page cache), then {a.runs} rounds of "
            f"{', '.join(variants)}")
        self.run_one("floor", 0)
        runs = self.round_robin(variants, "object_size", "object")
        return {"runs": runs, "summary": summarise(runs, variants)}



def summarise(runs: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    out = {v: variant_stats([r for r in runs if r["variant"] == v], "object_size")
           for v in variants}
    for v in variants:
        for ref in ("peer", "floor"):
            add_ratios(out[v], out[ref], ref)
    return out



def verdicts(summary: dict[str, Any]) -> dict[str, Any]:
    ours, peer = summary["ours"], summary["peer"]
    rss = mib(ours["procs_hwm_max_kib"].get("prefect-dr", ours["maxrss_max_kib"])) or 0.0
    return {
        "wall_vs_peer": ratio_verdict(ours, "peer", TARGETS["peer_ratio"]),
        "wall_vs_floor": ratio_verdict(ours, "floor", TARGETS["floor_ratio"]),
        "object_vs_peer": {"value": ours["object_size_median"],
                           "peer": peer["object_size_median"],
                           "target": "<= peer's object",
                           "met": ours["object_size_median"] <= peer["object_size_median"]},
        "rss_mib": {"value": round(rss, 1), "target": f"<= {TARGETS['rss_mib']:.0f} MiB",
                    "met": rss <= TARGETS["rss_mib"]},
        **{f"rss_mib@{v.split('@', 1)[1]}": _rss_verdict(row)
           for v, row in summary.items() if v.startswith("ours@")},
    }


def _rss_verdict(row: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS of prefect-dr in one --repository variant against the target."""
    rss = mib(row["procs_hwm_max_kib"].get("prefect-dr", row["maxrss_max_kib"])) or 0.0
    return {"value": round(rss, 1), "target": f"<= {TARGETS['rss_mib']:.0f} MiB",
            "met": rss <= TARGETS["rss_mib"]}


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    db = result["database_size_bytes"] / 2**30
    lines = [
        f"Database {db:.2f} GiB (pg_database_size), {result['params']['runs']} runs each, "
        f"median wall; RSS = max over runs; a run is quiet when the rest of the machine used "
        f"< {QUIET_SHARE:g} of a core.",
        "",
        "| variant | median wall s (min-max) | vs peer | vs floor | peak RSS MiB, main process "
        "| pg_dump RSS MiB | tree RSS MiB (sum) | CPU s: tree / postgres / S3 / machine "
        "| object MiB | quiet runs: n, median wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    main = {"ours": "prefect-dr", "peer": "aws", "floor": "pg_dump", "ours-nos3": "python3.11",
            "zstd": "zstd", "zstd-age": "zstd", "peer-nos3": "age"}
    for v, row in s.items():
        procs = row["procs_hwm_max_kib"]
        name = main.get(v, "prefect-dr" if v.startswith("ours@") else "")
        if v == "ours-nos3":
            name = next((n for n in procs if n.startswith("python")), name)
        main_rss = mib(procs.get(name, row["maxrss_max_kib"]))
        pgd = mib(procs.get("pg_dump"))
        size = row["object_size_median"]
        srv = row["server_cpu_median_s"]
        size_s = f"{size / 2**20:.1f}" if size else "-"
        pgd_s = f"{pgd:.1f}" if pgd is not None else "-"
        quiet_s = f"{row['wall_quiet_median_s']:.2f}" if row["wall_quiet_median_s"] else "-"
        lines.append(
            f"| {v} | {row['wall_median_s']:.2f} ({row['wall_min_s']:.2f}-{row['wall_max_s']:.2f})"
            f" | {row['vs_peer']:.2f}x | {row['vs_floor']:.2f}x | {main_rss:.1f} ({name})"
            f" | {pgd_s} | {mib(row['tree_rss_max_kib']):.1f}"
            f" | {row['cpu_median_s']:.1f} / {srv.get('pg', 0):.1f} / {srv.get('s3', 0):.1f}"
            f" / {row['machine_cpu_median_s']:.1f}"
            f" | {size_s} | {row['quiet_runs']}, {quiet_s} |")
    lines.append("")
    for name, v in result["verdicts"].items():
        best = ""
        if "best_of_runs" in v:
            best = f", best-of-runs {v['best_of_runs']}, quiet-runs {v['quiet_runs']}"
            if v["noise_warning"]:
                best += " (UNCERTAIN: quiet runs disagree with the median)"
        value = v["value"]
        if name == "object_vs_peer":
            value = (f"{v['value'] / 2**20:.1f} MiB vs peer {v['peer'] / 2**20:.1f} MiB "
                     f"({v['value'] / v['peer']:.2f}x)")
        lines.append(f"- {name}: {value}{best} (target {v['target']}): "
                     f"{'MET' if v['met'] else 'NOT MET'}")
    return "\n".join(lines)



def report(paths: list[Path]) -> None:
    """Re-summarise saved results (e.g. after changing this script's analysis) and print them."""
    for path in paths:
        result = json.loads(path.read_text())
        variants = list(dict.fromkeys(r["variant"] for r in result["runs"]))
        what = result["params"].get("what", "backup")
        if what in RESTORE_TARGETS:
            restore_report(path, result, variants)
            continue
        result["summary"] = summarise(result["runs"], variants)
        result["verdicts"] = verdicts(result["summary"])
        print(f"## {path.name} ({result['meta']['date']})\n")
        print(markdown(result) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    rep = sub.add_parser("report", help="print the tables of saved results")
    rep.add_argument("files", nargs="+", type=Path)
    sc = sub.add_parser("scale", help="paired ratios per round, and slopes across sizes")
    sc.add_argument("files", nargs="+", type=Path)
    b = sub.add_parser("backup", help="run the backup benchmark (use scripts/bench)")
    b.add_argument("--runs", type=int, default=3)
    b.add_argument("--stages", action="store_true")
    b.add_argument("--repository", action="append", default=[],
                   help="also back up into this repository URL (variant ours@SCHEME)")
    b.add_argument("--history-gb", type=float, required=True, help="requested size (recorded)")
    b.add_argument("--database-size", type=int, required=True, help="pg_database_size bytes")
    b.add_argument("--recipient", required=True)
    b.add_argument("--pg-dump", required=True)
    b.add_argument("--aws", required=True)
    b.add_argument("--prefect-dr", required=True)
    b.add_argument("--project-python", required=True)
    b.add_argument("--out", required=True, type=Path)
    for what in ("verify", "restore"):
        add_restore_args(sub.add_parser(what, help=f"run the {what} benchmark (use scripts/bench)"))
    args = p.parse_args()
    if args.what == "report":
        report(args.files)
        return
    if args.what == "scale":
        scale_report(args.files)
        return
    if args.what in ("verify", "restore"):
        if args.runs < 1:
            p.error("--runs must be >= 1")
        restore_main(args)
        return
    if args.runs < 1:
        p.error("--runs must be >= 1")

    bench = Bench(args)
    meta = {
        "date": bench.stamp, "host_cpus": os.cpu_count(),
        "mem_total_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(), "cpu": platform.processor() or platform.machine(),
        "pg_dump": tool_version([args.pg_dump, "--version"]),
        "age": tool_version(["age", "--version"]), "zstd_cli": tool_version(["zstd", "-V"]),
        "aws": tool_version([args.aws, "--version"]),
        "prefect_dr": tool_version([args.prefect_dr, "--version"]),
    }
    result: dict[str, Any] = {
        "meta": meta,
        "params": {"what": args.what, "runs": args.runs, "history_gb": args.history_gb,
                   "stages": args.stages},
        "database_size_bytes": args.database_size,
    }
    result.update(bench.run())
    result["verdicts"] = verdicts(result["summary"])
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"backup-{bench.stamp}-{args.database_size / 2**30:.1f}gib.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    say(f"results written to {path}")
    print(markdown(result))


if __name__ == "__main__":
    main()
