"""Backup benchmark: `prefect-dr backup` against the peer pipeline and the pg_dump floor.

Also `verify` and `restore` (RestoreBench, below): `prefect-dr verify ID` / `prefect-dr restore ID
--target-url ...` (--jobs 0 and --jobs 1) against `aws s3 cp | age -d -i KEY | pg_restore -d DB`,
on one fixture backup reused across runs; see docs/benchmarks.md.

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
  object_size   ours: the dump artifact's `size` in the manifest (checked against S3 HEAD);
                peer: ContentLength of S3 HEAD of the uploaded object
The PostgreSQL server backend that serves pg_dump is outside every tree (the same for all).
Uploaded objects are deleted when all rounds are done. Progress goes to stderr; the markdown
table goes to stdout; JSON results go to --out. `bench.py report FILE...` re-prints saved results.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import botocore.session
import psutil

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
SAMPLE_S = 0.1
QUIET_SHARE = 0.25  # a run is "quiet" when other processes used < 1/4 of a core on average

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


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def mib(kib: float | None) -> float | None:
    return None if kib is None else kib / 1024


# --- measuring one process tree -----------------------------------------------------------------
def _status_kib(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) of a process in KiB, (0, 0) when gone."""
    hwm = rss = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return hwm, rss


class Sampler(threading.Thread):
    """Polls the process tree under ``pid``: per-process VmHWM, and the largest RSS sum."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.stop = threading.Event()
        self.hwm: dict[int, tuple[str, int]] = {}
        self.tree_peak = 0

    def _names(self) -> list[tuple[int, str]]:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return []
        out = []
        for p in procs:
            try:
                out.append((p.pid, p.name()))
            except psutil.Error:
                continue
        return out

    def sample(self) -> None:
        total = 0
        for pid, name in self._names():
            hwm, rss = _status_kib(pid)
            if hwm == 0 and rss == 0:
                continue
            total += rss
            old = self.hwm.get(pid, (name, 0))[1]
            self.hwm[pid] = (name, max(old, hwm))
        self.tree_peak = max(self.tree_peak, total)

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(SAMPLE_S)

    def by_name(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, hwm in self.hwm.values():
            out[name] = max(out.get(name, 0), hwm)
        return out


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already included in user/nice
    return (total - idle) / tick, total / tick


def _proc_cpu(pid: int, *, reaped: bool = False) -> float:
    """CPU seconds of ``pid`` (all its threads); with ``reaped``, plus its reaped children's."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if reaped:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def stack_cpu() -> dict[str, float]:
    """CPU seconds used so far by the bench stack's servers: PostgreSQL (the postmaster, its live
    backends and the reaped ones, e.g. pg_dump's), SeaweedFS and the Prefect server."""
    pids = Path(os.environ["PREFECT_DR_STACK_DIR"]) / "pids"
    out: dict[str, float] = {}
    for name in ("pg", "s3", "prefect"):
        try:
            pid = int((pids / f"{name}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        total = _proc_cpu(pid, reaped=name == "pg")
        if name == "pg":
            with contextlib.suppress(psutil.Error):
                total += sum(_proc_cpu(c.pid) for c in psutil.Process(pid).children())
        out[name] = total
    return out


def _pg_children() -> set[int]:
    try:
        pid = int((Path(os.environ["PREFECT_DR_STACK_DIR"]) / "pids" / "pg.pid").read_text())
        return {c.pid for c in psutil.Process(pid).children()}
    except (OSError, ValueError, psutil.Error):
        return set()


def settle(before: set[int], timeout: float = 3.0) -> None:
    """Wait until the PostgreSQL backends that served the run have exited and been reaped, so
    their CPU time is in the postmaster's cutime (else it would count for the next run)."""
    deadline = time.monotonic() + timeout
    while _pg_children() - before and time.monotonic() < deadline:
        time.sleep(0.05)


def measure(argv: list[str], env: dict[str, str], *, stdout: Any = subprocess.DEVNULL,
            stderr_path: Path) -> dict[str, Any]:
    """Run ``argv`` and return wall time, exit status, rusage and sampled RSS."""
    with open(stderr_path, "wb") as err:
        pg_before = _pg_children()
        busy0, _ = machine_cpu()
        servers0 = stack_cpu()
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=err,
                                stdin=subprocess.DEVNULL)
        sampler = Sampler(proc.pid)
        sampler.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        busy1, _ = machine_cpu()
        settle(pg_before)
        servers1 = stack_cpu()
        sampler.stop.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
    return {
        "wall_s": round(wall, 3),
        "exit": proc.returncode,
        "maxrss_kib": ru.ru_maxrss,
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
        "machine_cpu_s": round(busy1 - busy0, 2),
        "server_cpu_s": {k: round(servers1[k] - v, 2) for k, v in servers0.items()
                         if k in servers1},
        "procs_hwm_kib": sampler.by_name(),
        "tree_rss_kib": sampler.tree_peak,
    }


# --- the benchmark ------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.env = dict(os.environ)
        self.bucket = self.env["PREFECT_DR_S3_BUCKET"]
        self.endpoint = self.env["PREFECT_DR_S3_ENDPOINT_URL"]
        self.region = self.env.get("PREFECT_DR_S3_REGION", "us-east-1")
        self.stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        self.prefix = f"bench/{self.stamp}"
        self.tmp = Path(tempfile.mkdtemp(prefix="prefect-dr-bench."))
        self.s3 = botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name=self.region)
        self.repos = {f"ours@{url.split(':', 1)[0]}": url for url in args.repository}
        self.cleanup: list[str] = []  # repositories to empty at the end

    # -- S3 helpers
    def head_size(self, key: str) -> int:
        return int(self.s3.head_object(Bucket=self.bucket, Key=key)["ContentLength"])

    def delete_prefix(self, prefix: str) -> None:
        token = None
        while True:
            kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            page = self.s3.list_objects_v2(**kw)
            for item in page.get("Contents", []):
                self.s3.delete_object(Bucket=self.bucket, Key=item["Key"])
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    # -- variants
    def _shell(self, script: str, extra: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        env = {**self.env, **extra}
        return ["bash", "-c", "set -euo pipefail\n" + script], env

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
            res.update(backup_id=bid, object_size=dump["size"],
                       plaintext_size=dump["plaintext_size"], total_size=out["size"])
            head = self.head_size(dump["key"])
            if head != dump["size"]:
                raise SystemExit(f"bench: manifest size {dump['size']} != S3 size {head}")
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

    def round_robin(self, variants: list[str], size_field: str, size_label: str
                    ) -> list[dict[str, Any]]:
        """``--runs`` rounds of every variant, the order rotating by one each round (spreads
        cache and warm-up effects); one progress line per run."""
        runs: list[dict[str, Any]] = []
        n = self.args.runs
        for r in range(1, n + 1):
            shift = (r - 1) % len(variants)
            for v in variants[shift:] + variants[:shift]:
                res = self.run_one(v, r)
                runs.append(res)
                size = res.get(size_field)
                srv = res["server_cpu_s"]
                say(f"round {r}/{n} {v:<10} {res['wall_s']:7.2f}s  "
                    f"rss {mib(max(res['procs_hwm_kib'].values(), default=0)):6.1f} MiB  "
                    f"cpu {res['cpu_s']:5.1f}s (postgres {srv.get('pg', 0):5.1f}s, "
                    f"S3 {srv.get('s3', 0):4.1f}s, machine {res['machine_cpu_s']:5.1f}s, "
                    f"foreign {foreign_cpu(res):4.1f}s)"
                    + (f"  {size_label} {size / 2**20:8.1f} MiB" if size else ""))
        return runs


def variant_stats(rs: list[dict[str, Any]], size_field: str) -> dict[str, Any]:
    """Medians, extremes and peaks of one variant's runs; ``size_field`` is the size each run
    records (the object, or the restored database), summarised as ``<size_field>_median``."""
    walls = [r["wall_s"] for r in rs]
    procs: dict[str, int] = {}
    for r in rs:
        for name, kib in r["procs_hwm_kib"].items():
            procs[name] = max(procs.get(name, 0), kib)
    sizes = [r[size_field] for r in rs if r.get(size_field)]
    quiet = [r for r in rs if is_quiet(r)]
    return {
        "runs": len(rs), "wall_median_s": statistics.median(walls),
        "wall_min_s": min(walls), "wall_max_s": max(walls),
        "cpu_median_s": statistics.median(r["cpu_s"] for r in rs),
        "machine_cpu_median_s": statistics.median(r["machine_cpu_s"] for r in rs),
        "server_cpu_median_s": {
            k: statistics.median(r["server_cpu_s"].get(k, 0.0) for r in rs)
            for k in ("pg", "s3", "prefect")},
        "maxrss_max_kib": max(r["maxrss_kib"] for r in rs),
        "tree_rss_max_kib": max(r["tree_rss_kib"] for r in rs),
        "procs_hwm_max_kib": procs,
        f"{size_field}_median": statistics.median(sizes) if sizes else None,
        "foreign_cpu_median_s": statistics.median(foreign_cpu(r) for r in rs),
        "quiet_runs": len(quiet),
        "wall_quiet_median_s": (statistics.median(r["wall_s"] for r in quiet)
                                if quiet else None),
    }


def add_ratios(row: dict[str, Any], ref_row: dict[str, Any], ref: str) -> None:
    """``vs_<ref>`` (medians), ``vs_<ref>_best`` (best of K: less sensitive to other load on a
    shared machine) and ``vs_<ref>_quiet`` (quiet runs only) of ``row`` against ``ref_row``."""
    row[f"vs_{ref}"] = round(row["wall_median_s"] / ref_row["wall_median_s"], 3)
    row[f"vs_{ref}_best"] = round(row["wall_min_s"] / ref_row["wall_min_s"], 3)
    a, b = row["wall_quiet_median_s"], ref_row["wall_quiet_median_s"]
    row[f"vs_{ref}_quiet"] = round(a / b, 3) if a and b else None


def summarise(runs: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    out = {v: variant_stats([r for r in runs if r["variant"] == v], "object_size")
           for v in variants}
    for v in variants:
        for ref in ("peer", "floor"):
            add_ratios(out[v], out[ref], ref)
    return out


def foreign_cpu(run: dict[str, Any]) -> float:
    """CPU seconds the rest of the machine used during a run: machine-wide busy time minus the
    variant's own tree and the bench stack's servers (other users, other stacks)."""
    own = run["cpu_s"] + sum(run.get("server_cpu_s", {}).values())
    return round(max(run.get("machine_cpu_s", own) - own, 0.0), 2)


def is_quiet(run: dict[str, Any]) -> bool:
    """A run during which the rest of the machine used under QUIET_SHARE of one core."""
    return foreign_cpu(run) <= QUIET_SHARE * run["wall_s"]


def _ratio_verdict(ours: dict[str, Any], ref: str, target: float) -> dict[str, Any]:
    value, quiet = ours[f"vs_{ref}"], ours.get(f"vs_{ref}_quiet")
    return {"value": value, "best_of_runs": ours[f"vs_{ref}_best"], "quiet_runs": quiet,
            "target": f"<= {target}", "met": value <= target,
            # the median and the quiet-run median disagree: other load decided the verdict
            "noise_warning": quiet is not None and (quiet <= target) != (value <= target)}


def verdicts(summary: dict[str, Any]) -> dict[str, Any]:
    ours, peer = summary["ours"], summary["peer"]
    rss = mib(ours["procs_hwm_max_kib"].get("prefect-dr", ours["maxrss_max_kib"])) or 0.0
    return {
        "wall_vs_peer": _ratio_verdict(ours, "peer", TARGETS["peer_ratio"]),
        "wall_vs_floor": _ratio_verdict(ours, "floor", TARGETS["floor_ratio"]),
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


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def report(paths: list[Path]) -> None:
    """Re-summarise saved results (e.g. after changing this script's analysis) and print them."""
    for path in paths:
        result = json.loads(path.read_text())
        variants = list(dict.fromkeys(r["variant"] for r in result["runs"]))
        what = result["params"].get("what", "backup")
        if what in RESTORE_TARGETS:
            result["summary"] = summarise_restore(result["runs"], variants)
            result["verdicts"] = restore_verdicts(what, result["summary"])
            print(f"## {path.name} ({result['meta']['date']})\n")
            print(restore_markdown(result) + "\n")
            continue
        result["summary"] = summarise(result["runs"], variants)
        result["verdicts"] = verdicts(result["summary"])
        print(f"## {path.name} ({result['meta']['date']})\n")
        print(markdown(result) + "\n")


# --- verify / restore benchmarks ----------------------------------------------------------------
# Both restore the same fixture: one `prefect-dr backup` (ours) and one peer object
# (`pg_dump -Fc | age -r KEY`, uploaded with `aws s3 cp`), made once per database size under
# s3://BUCKET/bench/fixture/ and recorded in $PREFECT_DR_STACK_DIR/bench-fixture.json, so that
# `scripts/bench verify` and `scripts/bench restore` reuse them (they are not deleted: deleting
# makes SeaweedFS compact volumes in the background, which would load the machine).
FIXTURE_PREFIX = "bench/fixture"
RESTORE_TARGETS = {"verify": 1.1, "restore": 0.7}
RESTORE_VARIANTS = {"verify": ["ours", "peer"], "restore": ["ours", "ours-j1", "peer"]}


class RestoreBench(Bench):
    """`prefect-dr verify` / `prefect-dr restore` against `aws s3 cp | age -d | pg_restore`."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.pg_bin = Path(args.pg_bin)
        self.admin_url = self.env["PREFECT_DR_DATABASE_URL"]
        url = self.admin_url
        self.url_base = url[: url.rindex("/") + 1]  # postgresql://prefect@127.0.0.1:PORT/
        self.fixture_path = Path(self.env["PREFECT_DR_STACK_DIR"]) / "bench-fixture.json"
        self.fx: dict[str, Any] = {}
        self.dbs: dict[str, int] = {}  # run id -> pg_database_size of the restored database

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

    def create_db(self, name: str) -> None:
        self.drop_db(name)
        self.psql(f'CREATE DATABASE "{name}"')

    def drop_db(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', superuser=True)

    def db_size(self, name: str) -> int:
        return int(self.psql(f"SELECT pg_database_size('{name}')"))

    def leftover_dbs(self) -> list[str]:
        rows = self.psql("SELECT datname FROM pg_database WHERE datname LIKE 'bench\\_%' "
                         "OR datname LIKE 'prefect\\_dr\\_scratch\\_%' "
                         "OR datname LIKE 'prefect\\_%restore%'")
        return [r for r in rows.splitlines() if r]

    # -- the fixture
    def ours_env(self) -> dict[str, str]:
        a = self.args
        return {**self.env, "PREFECT_DR_AGE_RECIPIENTS": a.recipient,
                "PREFECT_DR_AGE_IDENTITY_FILE": a.key_file,
                "PREFECT_DR_S3_PREFIX": f"{FIXTURE_PREFIX}/ours",
                "PREFECT_DR_PG_BIN_DIR": str(self.pg_bin)}

    def fixture(self) -> dict[str, Any]:
        a = self.args
        with contextlib.suppress(OSError, ValueError):
            fx = json.loads(self.fixture_path.read_text())
            if abs(fx["database_size"] - a.database_size) <= 0.02 * a.database_size:
                show = subprocess.run([a.prefect_dr, "show", fx["backup_id"], "--json"],
                                      env=self.ours_env(), capture_output=True, text=True)
                if show.returncode == 0 and self.head_size(fx["peer_key"]) == fx["peer_size"]:
                    say(f"reusing the fixture: backup {fx['backup_id']} and s3://{self.bucket}/"
                        f"{fx['peer_key']} ({self.fixture_path})")
                    return fx
        say(f"making the fixture (untimed): prefect-dr backup and the peer's pg_dump -Fc | age "
            f"| aws s3 cp, under s3://{self.bucket}/{FIXTURE_PREFIX}/")
        with contextlib.suppress(Exception):
            self.delete_prefix(f"{FIXTURE_PREFIX}/")
        env = self.ours_env()
        out = subprocess.run([a.prefect_dr, "backup", "--json"], env=env, capture_output=True,
                             text=True)
        if out.returncode != 0:
            raise SystemExit(f"bench: fixture backup failed:\n{out.stderr[-2000:]}")
        bid = json.loads(out.stdout)["backup_id"]
        show = subprocess.run([a.prefect_dr, "show", bid, "--json"], env=env,
                              capture_output=True, check=True, text=True)
        dump = next(x for x in json.loads(show.stdout)["artifacts"] if x["name"] == "dump")
        key = f"{FIXTURE_PREFIX}/peer/dump.age"
        script = ('"$B_PG_DUMP" -Fc --no-password --dbname "$B_URL" | age -r "$B_RECIPIENT" | '
                  '"$B_AWS" s3 cp - "s3://$B_BUCKET/$B_KEY" --endpoint-url "$B_ENDPOINT" '
                  '--region "$B_REGION" --only-show-errors')
        env = {**self.env, "B_PG_DUMP": str(self.pg_bin / "pg_dump"), "B_URL": self.admin_url,
               "B_RECIPIENT": a.recipient, "B_AWS": a.aws, "B_BUCKET": self.bucket,
               "B_KEY": key, "B_ENDPOINT": self.endpoint, "B_REGION": self.region}
        subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], env=env, check=True)
        fx = {"backup_id": bid, "ours_key": dump["key"], "ours_size": dump["size"],
              "plaintext_size": dump["plaintext_size"], "peer_key": key,
              "peer_size": self.head_size(key), "database_size": a.database_size,
              "made": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        self.fixture_path.write_text(json.dumps(fx, indent=2) + "\n")
        return fx

    # -- variants
    def command(self, variant: str, run_id: str) -> tuple[list[str], dict[str, str]]:
        a, fx = self.args, self.fx
        db = f"bench_{a.what}_{run_id.replace('-', '_')}"
        if variant.startswith("ours"):
            env = self.ours_env()
            if a.what == "verify":
                return [a.prefect_dr, "verify", fx["backup_id"], "--json"], env
            jobs = "1" if variant == "ours-j1" else "0"
            return [a.prefect_dr, "restore", fx["backup_id"], "--target-url",
                    self.url_base + db, "--yes", "--json", "--jobs", jobs], env
        if variant == "peer":
            env = {**self.env, "B_AWS": a.aws, "B_BUCKET": self.bucket, "B_KEY": fx["peer_key"],
                   "B_ENDPOINT": self.endpoint, "B_REGION": self.region,
                   "B_KEYFILE": a.key_file, "B_PG_RESTORE": str(self.pg_bin / "pg_restore"),
                   "B_DB_URL": self.url_base + db}
            return self._shell(
                '"$B_AWS" s3 cp "s3://$B_BUCKET/$B_KEY" - --endpoint-url "$B_ENDPOINT"'
                ' --region "$B_REGION" --only-show-errors | age -d -i "$B_KEYFILE"'
                ' | "$B_PG_RESTORE" --no-password -d "$B_DB_URL"', env)
        raise ValueError(variant)

    def run_one(self, variant: str, number: int) -> dict[str, Any]:
        a = self.args
        run_id = f"{variant}-{number}"
        db = f"bench_{a.what}_{run_id.replace('-', '_')}"
        if variant == "peer":
            self.create_db(db)  # untimed: the peer restores into an existing empty database
        elif a.what == "restore":
            self.drop_db(db)  # ours must create it
        argv, env = self.command(variant, run_id)
        out_path = self.tmp / f"{run_id}.out"
        try:
            with open(out_path, "wb") as out:
                res = measure(argv, env, stdout=out, stderr_path=self.tmp / f"{run_id}.err")
            res.update(variant=variant, run=number)
            if res["exit"] != 0:
                err = (self.tmp / f"{run_id}.err").read_text(errors="replace")[-3000:]
                raise SystemExit(f"bench: {run_id} failed (exit {res['exit']}):\n{err}")
            if variant.startswith("ours"):
                with contextlib.suppress(ValueError):
                    res["output"] = json.loads(out_path.read_text())
            if variant == "peer" or a.what == "restore":
                res["restored_db_size"] = self.db_size(db)  # untimed
        finally:
            if variant == "peer" or a.what == "restore":
                self.drop_db(db)  # untimed
            # Databases the run should have dropped itself (a verify scratch database, a
            # restore's temporary one): recorded, then dropped here, outside the timing.
            left = [n for n in self.leftover_dbs() if n != db]
            if left:
                sizes = {n: self.db_size(n) for n in left}
                say(f"warning: {run_id} left databases behind: {sizes}; dropping them")
                for n in left:
                    self.drop_db(n)
                with contextlib.suppress(NameError):
                    res["left_behind"] = sizes
        if variant.startswith("ours"):
            res["object_size"] = self.fx["ours_size"]
        else:
            res["object_size"] = self.fx["peer_size"]
        return res

    def run(self) -> dict[str, Any]:
        try:
            self.fx = self.fixture()
            return self._rounds()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if self.cleanup:
                say(f"deleting the {len(self.cleanup)} backups of the --repository variants")
                subprocess.run([self.args.project_python, "-c", EMPTY_REPOSITORIES,
                                *self.cleanup], env=self.env, check=False)

    def _rounds(self) -> dict[str, Any]:
        a = self.args
        variants = RESTORE_VARIANTS[a.what]
        say(f"{a.runs} rounds of {', '.join(variants)} (no warm-up run: the objects were just "
            f"read or written; the rotating order spreads cache effects)")
        runs = self.round_robin(variants, "restored_db_size", "db")
        left = self.leftover_dbs()
        if left:
            say(f"warning: databases left on the server: {', '.join(left)}")
        return {"runs": runs, "fixture": self.fx, "leftover_databases": left,
                "summary": summarise_restore(runs, variants)}


def summarise_restore(runs: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    out = {v: variant_stats([r for r in runs if r["variant"] == v], "restored_db_size")
           for v in variants}
    for v in variants:
        add_ratios(out[v], out["peer"], "peer")
    return out


def restore_verdicts(what: str, summary: dict[str, Any]) -> dict[str, Any]:
    target = RESTORE_TARGETS[what]
    out = {"wall_vs_peer": _ratio_verdict(summary["ours"], "peer", target)}
    if "ours-j1" in summary:
        v = _ratio_verdict(summary["ours-j1"], "peer", target)
        v["informative"] = True  # the --jobs 1 variant only shows the effect of staging
        out["wall_vs_peer_jobs1"] = v
    return out


def restore_markdown(result: dict[str, Any]) -> str:
    s, fx, what = result["summary"], result["fixture"], result["params"]["what"]
    db = result["database_size_bytes"] / 2**30
    restored = next((row["restored_db_size_median"] for row in s.values()
                     if row["restored_db_size_median"]), None)
    lines = [
        f"Database {db:.2f} GiB (pg_database_size); fixture: ours {fx['ours_size'] / 2**20:.1f} "
        f"MiB object ({fx['plaintext_size'] / 2**20:.1f} MiB dump plaintext), peer "
        f"{fx['peer_size'] / 2**20:.1f} MiB object; {result['params']['runs']} runs each, median "
        f"wall; RSS = max over runs; quiet = the rest of the machine used < {QUIET_SHARE:g} of a "
        "core.",
        "",
        "| variant | median wall s (min-max) | vs peer | peak RSS MiB, main process "
        "| pg_restore RSS MiB (max) | tree RSS MiB (sum) | CPU s: tree / postgres / S3 / machine "
        "| restored DB MiB | quiet runs: n, median wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v, row in s.items():
        procs = row["procs_hwm_max_kib"]
        name = "prefect-dr" if v.startswith("ours") else "aws"
        main_rss = mib(procs.get(name, row["maxrss_max_kib"]))
        pgr = mib(procs.get("pg_restore"))
        srv = row["server_cpu_median_s"]
        size = row["restored_db_size_median"]
        quiet = row["wall_quiet_median_s"]
        lines.append(
            f"| {v} | {row['wall_median_s']:.2f} ({row['wall_min_s']:.2f}-{row['wall_max_s']:.2f})"
            f" | {row['vs_peer']:.2f}x | {main_rss:.1f} ({name})"
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
        warn = " (UNCERTAIN: quiet runs disagree with the median)" if v["noise_warning"] else ""
        lines.append(f"- {name}: {v['value']}, best-of-runs {v['best_of_runs']}, quiet-runs "
                     f"{v['quiet_runs']}{warn} (target {v['target']}{tail}): "
                     f"{'MET' if v['met'] else 'NOT MET'}")
    return "\n".join(lines)


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
        "params": {"what": args.what, "runs": args.runs, "history_gb": args.history_gb},
        "database_size_bytes": args.database_size,
    }
    result.update(bench.run())
    result["verdicts"] = restore_verdicts(args.what, result["summary"])
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.what}-{bench.stamp}-{args.database_size / 2**30:.1f}gib.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    say(f"results written to {path}")
    print(restore_markdown(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    rep = sub.add_parser("report", help="print the tables of saved results")
    rep.add_argument("files", nargs="+", type=Path)
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
        r = sub.add_parser(what, help=f"run the {what} benchmark (use scripts/bench)")
        r.add_argument("--runs", type=int, default=3)
        r.add_argument("--history-gb", type=float, required=True, help="requested size (recorded)")
        r.add_argument("--database-size", type=int, required=True, help="pg_database_size bytes")
        r.add_argument("--recipient", required=True)
        r.add_argument("--key-file", required=True, help="age identity file (for decrypting)")
        r.add_argument("--pg-bin", required=True, help="PostgreSQL client bin folder")
        r.add_argument("--aws", required=True)
        r.add_argument("--prefect-dr", required=True)
        r.add_argument("--out", required=True, type=Path)
    args = p.parse_args()
    if args.what == "report":
        report(args.files)
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
