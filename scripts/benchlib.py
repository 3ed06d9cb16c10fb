"""Measuring helpers shared by scripts/bench.py (backup) and scripts/bench_restore.py (verify,
restore): one variant's process tree timed and sampled (wall, RSS, CPU of the tree, of the bench
stack's servers and of the whole machine), the round-robin of variants, and the statistics over
runs. See scripts/bench.py for what each measurement means, and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.session
import psutil

SAMPLE_S = 0.1
QUIET_SHARE = 0.25  # a run is "quiet" when other processes used < 1/4 of a core on average
WATCH_S = 0.05  # how often a Watch polls
MAX_LINES = 400  # stderr lines kept per run


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


class Watch(threading.Thread):
    """Polls ``check`` every WATCH_S from the start of a run until it holds; ``at`` is the time
    since ``start`` when it first did (None if never). Used to see from outside when a restored
    database appears under its final name (polled from a connection to another database)."""

    def __init__(self, check: Callable[[], bool], start: float) -> None:
        super().__init__(daemon=True)
        self.check, self.start_t = check, start
        self.stop = threading.Event()
        self.at: float | None = None
        self.error: str | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if self.check():
                    self.at = round(time.perf_counter() - self.start_t, 3)
                    return
            except Exception as exc:  # recorded; the run goes on
                self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                return
            self.stop.wait(WATCH_S)


def _tee_lines(pipe: Any, out: Any, start: float, lines: list[tuple[float, str]]) -> None:
    """Copy ``pipe`` to ``out`` and keep each line with its arrival time (for the steps)."""
    for raw in iter(pipe.readline, b""):
        out.write(raw)
        if len(lines) < MAX_LINES:
            lines.append((round(time.perf_counter() - start, 3),
                          raw.decode(errors="replace").rstrip()[:300]))


def measure(argv: list[str], env: dict[str, str], *, stdout: Any = subprocess.DEVNULL,
            stderr_path: Path, watch: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Run ``argv`` and return wall time, exit status, rusage and sampled RSS; each stderr line
    with its time since the start (``stderr_lines``); with ``watch``, when it first held
    (``watched_s``)."""
    lines: list[tuple[float, str]] = []
    with open(stderr_path, "wb") as err:
        pg_before = _pg_children()
        busy0, _ = machine_cpu()
        servers0 = stack_cpu()
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
        tee = threading.Thread(target=_tee_lines, args=(proc.stderr, err, start, lines),
                               daemon=True)
        tee.start()
        watcher = Watch(watch, start) if watch is not None else None
        if watcher is not None:
            watcher.start()
        sampler = Sampler(proc.pid)
        sampler.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        busy1, _ = machine_cpu()
        if watcher is not None:
            watcher.stop.set()
            watcher.join()
        settle(pg_before)
        servers1 = stack_cpu()
        sampler.stop.set()
        sampler.join()
        tee.join(timeout=5)
        proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
    res = {
        "wall_s": round(wall, 3),
        "exit": proc.returncode,
        "maxrss_kib": ru.ru_maxrss,
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
        "machine_cpu_s": round(busy1 - busy0, 2),
        "server_cpu_s": {k: round(servers1[k] - v, 2) for k, v in servers0.items()
                         if k in servers1},
        "procs_hwm_kib": sampler.by_name(),
        "tree_rss_kib": sampler.tree_peak,
        "stderr_lines": lines,
    }
    if watcher is not None:
        res["watched_s"] = watcher.at
        if watcher.error:
            res["watch_error"] = watcher.error
    return res


# --- the round-robin of variants -----------------------------------------------------------------
class BaseBench:
    """The bench stack's S3 bucket and a round-robin of variants; subclasses say what a
    variant runs (``run_one``)."""

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

    def run_one(self, variant: str, number: int) -> dict[str, Any]:
        raise NotImplementedError

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
                say(f"round {r}/{n} {v:<12} {res['wall_s']:7.2f}s  "
                    f"rss {mib(max(res['procs_hwm_kib'].values(), default=0)):6.1f} MiB  "
                    f"cpu {res['cpu_s']:5.1f}s (postgres {srv.get('pg', 0):5.1f}s, "
                    f"S3 {srv.get('s3', 0):4.1f}s, machine {res['machine_cpu_s']:5.1f}s, "
                    f"foreign {foreign_cpu(res):4.1f}s)"
                    + (f"  {size_label} {size / 2**20:8.1f} MiB" if size else ""))
        return runs


# --- statistics over runs ---
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



def foreign_cpu(run: dict[str, Any]) -> float:
    """CPU seconds the rest of the machine used during a run: machine-wide busy time minus the
    variant's own tree and the bench stack's servers (other users, other stacks)."""
    own = run["cpu_s"] + sum(run.get("server_cpu_s", {}).values())
    return round(max(run.get("machine_cpu_s", own) - own, 0.0), 2)


def is_quiet(run: dict[str, Any]) -> bool:
    """A run during which the rest of the machine used under QUIET_SHARE of one core."""
    return foreign_cpu(run) <= QUIET_SHARE * run["wall_s"]


def ratio_verdict(ours: dict[str, Any], ref: str, target: float) -> dict[str, Any]:
    value, quiet = ours[f"vs_{ref}"], ours.get(f"vs_{ref}_quiet")
    return {"value": value, "best_of_runs": ours[f"vs_{ref}_best"], "quiet_runs": quiet,
            "target": f"<= {target}", "met": value <= target,
            # the median and the quiet-run median disagree: other load decided the verdict
            "noise_warning": quiet is not None and (quiet <= target) != (value <= target)}



def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"

