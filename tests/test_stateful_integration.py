"""The invariants across commands (docs/reliability.md, I1-I8), hunted by random sequences of
documented commands against the real stack (PostgreSQL 15, SeaweedFS S3): backups of both
kinds with labels (some killed), prune with random policies, verify, copy, restore plain and
``--tiered`` (some killed by SIGKILL or SIGTERM at random points), ``restore --resume``,
rollback and ``restore-config --dry-run``. After every step the model's invariants are checked:

- the live database equals exactly the manifest of the last backup restored into it (nothing
  else writes to this private copy), and only restore, resume and rollback change it;
- I1: a backup an unfinished backfill needs survives every prune (and ``--resume`` finishes);
- I2: ``show --latest``, ``show latest`` and ``status`` name the newest *whole* full backup;
  at least one whole full backup that verified survives every prune;
- I3: every command ends (SIGTERM: exit 130 within the bound) and the next one is never
  locked out; I5: no half-restored database survives the next restore or rollback;
- I4: no process's command line ever carries a secret (sampled all along);
- I7: every ``--json`` run that fails prints the error contract; no traceback, ever.

A seed makes each sequence replayable: ``PREFECT_DR_STATEFUL_SEED=N``; the number of steps is
``PREFECT_DR_STATEFUL_STEPS`` (CI: 12 steps, about 50 s; the soak in
docs/reliability.md runs thousands). The seed is printed and named in every failure.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from prefect_dr.runs_split import RUN_TABLES
from tests.chaos.harness import ArgvSampler
from tests.conftest import databases, run_cli
from tests.test_tiered_restore_integration import _with_password, add_history

pytestmark = pytest.mark.integration
FAILPOINT = Path(__file__).resolve().parent / "chaos" / "failpoint.py"
SEED = int(os.environ.get("PREFECT_DR_STATEFUL_SEED")
           or random.SystemRandom().randrange(2**31))
STEPS = int(os.environ.get("PREFECT_DR_STATEFUL_STEPS") or 12)
BUDGET_S = float(os.environ.get("PREFECT_DR_STATEFUL_BUDGET_S") or 200)
DOCUMENTED = {0, 1, 2, 3, 10, 11, 12, 13, 14, 15, 16, 130}
#: what phase 2 loads: the history tables and (format 4) the finished runs
HISTORY = ("events", "event_resources", "log", *RUN_TABLES)


@dataclass
class Backup:
    """What the model knows of one backup."""

    id: str
    kind: str
    standing: str  # whole | partial | safety
    counts: dict[str, int]
    verified: bool = False


@dataclass
class Model:
    """The state the real system must agree with."""

    backups: dict[str, Backup] = field(default_factory=dict)
    live: dict[str, int] = field(default_factory=dict)  # row counts of the live database
    previous: list[dict[str, int]] = field(default_factory=list)  # what rollback brings back
    unfinished: str | None = None  # the backup of an unfinished tiered backfill
    #: a killed restore may have left a half-restored database: until the next restore or
    #: rollback runs (which drops it), doctor and rollback --list show it
    leftover: bool = False
    steps: list[str] = field(default_factory=list)
    figures: dict[str, int] = field(default_factory=lambda: {
        "steps": 0, "kills": 0, "sigterms": 0, "prunes": 0, "restores": 0,
        "increments": 0, "no_parent": 0})

    def whole_full(self) -> list[Backup]:
        return [b for b in self.backups.values() if b.kind == "full" and b.standing == "whole"]


class Run:
    """One random sequence: the commands, the model, the checks."""

    def __init__(self, env: dict[str, str], rng: random.Random) -> None:
        self.env, self.rng, self.model = env, rng, Model()
        self.pw = env["PGPASSWORD"]
        self.url = _with_password(env["PREFECT_DR_DATABASE_URL"], self.pw)
        bucket, prefix = env["PREFECT_DR_S3_BUCKET"], env["PREFECT_DR_S3_PREFIX"]
        self.copy_to = f"s3://{bucket}/{prefix}-copy"

    # -- running the real CLI --------------------------------------------------------------
    def cli(self, *args: str, expect: set[int] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = run_cli(["--json", *args], self.env, timeout=timeout)
        self._judge(args, proc.returncode, proc.stdout, proc.stderr, expect or {0})
        return proc

    def killed(self, args: list[str], sig: str, *, failpoint: str | None = None,
               delay: float = 0.0, also: set[int] | None = None) -> int:
        """Run ``args`` and stop it: at ``failpoint`` (by the process itself), or ``delay``
        seconds in. Returns the exit code (-9 for SIGKILL)."""
        env = dict(self.env)
        if failpoint:
            env.update(PREFECT_DR_CHAOS_FAILPOINT=failpoint,
                       PREFECT_DR_CHAOS_FAILPOINT_SIGNAL=sig)
        proc = subprocess.Popen([sys.executable, str(FAILPOINT), "--json", *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if not failpoint:
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(getattr(signal, f"SIG{sig}"))
        try:  # I3: a stopped command ends within the bound, whatever it was doing
            out, err = proc.communicate(timeout=20 if sig == "TERM" else 120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(self.where(f"{args} did not end within 20 s of SIG{sig}")
                                 ) from None
        self.model.figures["kills" if sig == "KILL" else "sigterms"] += 1
        allowed = {0, 130, -9} | ({2} if "restore" in args else set()) | (also or set())
        self._judge(tuple(args), proc.returncode, out, err, allowed)
        return proc.returncode

    def _judge(self, args: tuple[str, ...] | list[str], code: int, out: str, err: str,
               expect: set[int]) -> None:
        assert "Traceback" not in err, self.where(f"{args}: traceback\n{err}")
        assert code in expect, self.where(f"{args}: exit {code}, expected {expect}\n{err}")
        assert code < 0 or code in DOCUMENTED, self.where(f"{args}: undocumented exit {code}")
        if code > 0 and out.strip():  # I7: the error contract
            doc = json.loads(out)
            assert doc.get("ok") is False and doc.get("exit_code") == code, self.where(
                f"{args}: exit {code} with {out[:300]}")

    def where(self, message: str) -> str:
        return (f"{message}\n(seed {SEED}: PREFECT_DR_STATEFUL_SEED={SEED}; steps: "
                f"{' | '.join(self.model.steps)})")

    # -- reading the real state -------------------------------------------------------------
    def live_counts(self, tables: list[str]) -> dict[str, int]:
        with psycopg.connect(self.url) as conn:
            return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
                    for t in tables}

    def listed(self) -> dict[str, dict]:
        return {b["backup_id"]: b for b in json.loads(self.cli("list").stdout)["backups"]}

    def manifest_counts(self, backup_id: str) -> dict[str, int]:
        shown = json.loads(self.cli("show", backup_id).stdout)
        return {t: int(e["rows"]) for t, e in shown["row_counts"].items()}

    def add(self, backup_id: str) -> None:
        shown = json.loads(self.cli("show", backup_id).stdout)
        labels = shown.get("labels") or {}
        standing = ("safety" if "safety" in labels else
                    "partial" if labels.get("backfill") == "unfinished" else "whole")
        self.model.backups[backup_id] = Backup(
            backup_id, shown["kind"], standing,
            {t: int(e["rows"]) for t, e in shown["row_counts"].items()})

    # -- the commands -----------------------------------------------------------------------
    def backup(self) -> None:
        kind = self.rng.choice(["full", "full", "config-only", "incremental", "incremental"])
        labels = self.rng.choice([[], ["--label", "env=prod"], ["--label", "pin=release"]])
        # an increment has no parent after a restore replaced the database (or before any
        # full backup of it): exit 10, nothing written
        expect = {0, 10} if kind == "incremental" else {0}
        if self.rng.random() < 0.25:
            sig = self.rng.choice(["KILL", "TERM"])
            self.killed(["backup", "--kind", kind, *labels], sig,
                        delay=self.rng.uniform(0.05, 1.5), also=expect)
            self.sync_backups()
            self.cli("backup", "--kind", "config-only")  # I3: never locked out
            self.sync_backups()
            return
        if kind == "incremental" and not self.model.unfinished:
            # new history, so that the increment holds some: written by the test, so the
            # model's live counts follow it
            add_history(self.url, self.pw, rows=self.rng.randrange(1, 60))
            if self.model.live:
                self.model.live = self.live_counts(sorted(self.model.live))
        done = self.cli("backup", "--kind", kind, *labels, expect=expect)
        if kind == "incremental":
            self.model.figures["increments" if done.returncode == 0 else "no_parent"] += 1
        if done.returncode == 0:
            self.add(json.loads(done.stdout)["backup_id"])

    def sync_backups(self) -> None:
        """Take into the model what the repository lists as complete that it does not know
        (a killed backup that finished), and check nothing it knows vanished."""
        listed = self.listed()
        for bid, entry in listed.items():
            if entry["status"] == "complete" and bid not in self.model.backups:
                self.add(bid)
        for bid in self.model.backups:
            assert listed.get(bid, {}).get("status") == "complete", self.where(
                f"backup {bid} the model holds is {listed.get(bid, {}).get('status')}")

    def prune(self) -> None:
        policy = self.rng.choice([["--keep-last", "1"], ["--keep-last", "2"],
                                  ["--keep-daily", "1"], ["--keep-within", "1s"],
                                  ["--keep-label", "pin=release"]])
        extra = self.rng.choice([[], ["--grace", "0s"], ["--keep-safety-within", "1s"]])
        kind = self.rng.choice(["full", "config-only"])  # increments: with their base (full)
        doc = json.loads(self.cli("prune", "--kind", kind, *policy, *extra).stdout)
        self.model.figures["prunes"] += 1
        removed = {b["backup_id"] for b in doc["backups"] if b["action"] == "remove"}
        if self.model.unfinished:  # I1
            assert self.model.unfinished not in removed, self.where(
                f"prune removed {self.model.unfinished}, which the backfill needs")
        verified_whole = {b.id for b in self.model.whole_full() if b.verified}
        if verified_whole:  # a whole full backup that verified survives every prune
            assert verified_whole - removed, self.where(
                f"prune removed every verified whole full backup ({sorted(verified_whole)})")
        for bid in removed:
            self.model.backups.pop(bid, None)
        self.sync_backups()

    def verify(self) -> None:
        complete = sorted(self.model.backups)
        if not complete:
            return
        bid = self.rng.choice(complete)
        self.cli("verify", bid, expect={0})
        self.model.backups[bid].verified = True

    def copy(self) -> None:
        if self.model.backups:
            self.cli("copy", "--all", "--to", self.copy_to)

    def restore(self) -> None:
        candidates = sorted(b.id for b in self.model.backups.values()
                            if b.kind in ("full", "incremental"))
        if not candidates:
            return
        bid = self.rng.choice(candidates)
        args = ["restore", bid, "--yes", "--jobs", self.rng.choice(["1", "2"])]
        if self.rng.random() < 0.5:
            args.append("--no-safety-backup")
        if self.model.unfinished and self.model.unfinished != bid:
            self.cli(*args, expect={2})  # over another backup's unfinished backfill: refused
            return
        if self.model.unfinished == bid:  # the same restore again resumes the backfill
            self.cli(*args)
            self.model.live, self.model.unfinished = dict(self.model.backups[bid].counts), None
            return
        before = self.live_counts(sorted(self.model.backups[bid].counts))
        self.model.figures["restores"] += 1
        tiered = self.rng.random() < 0.4
        if tiered:
            args.append("--tiered")
        mode = self.rng.choice(["ok", "ok", "kill-phase-2", "kill-anywhere"])
        if mode == "ok":
            doc = json.loads(self.cli(*args).stdout)
            self._swapped(bid, before, doc.get("safety_backup_id"))
        elif mode == "kill-phase-2" and tiered and self.model.backups[bid].counts:
            code = self.killed(args, self.rng.choice(["KILL", "TERM"]),
                               failpoint="prefect_dr.restore:finish_backfill:before:1")
            assert code in (-9, 130), self.where(f"phase 2 kill: exit {code}")
            self.model.previous.append(before)
            self.model.live, self.model.unfinished = dict(self.model.backups[bid].counts), bid
        else:
            self.killed(args, self.rng.choice(["KILL", "TERM"]),
                        delay=self.rng.uniform(0.1, 4.0))
            self.model.leftover = True
            self._after_kill(bid, before, tiered)
        self.sync_backups()

    def _swapped(self, bid: str, before: dict[str, int], safety: str | None) -> None:
        self.model.leftover = False  # the restore dropped any a killed one left
        self.model.previous.append(before)
        self.model.live = dict(self.model.backups[bid].counts)
        self.model.unfinished = None
        if safety:
            self.add(safety)

    def _after_kill(self, bid: str, before: dict[str, int], tiered: bool) -> None:
        """A restore killed at a random point: unchanged, or swapped (then, tiered, maybe with
        an unfinished backfill)."""
        want = self.model.backups[bid].counts
        now = self.live_counts(sorted(want))
        if now == before and now != want:
            return  # unchanged
        listed = json.loads(self.cli("rollback", "--list").stdout)
        backfill = listed.get("unfinished_backfill")
        if backfill:
            self.model.previous.append(before)
            self.model.live, self.model.unfinished = dict(want), bid
        elif now == want:
            self.model.previous.append(before)
            self.model.live = dict(want)
        else:
            raise AssertionError(self.where(f"after a killed restore of {bid} the live "
                                            f"database is neither before nor restored: {now}"))

    def resume(self) -> None:
        if not self.model.unfinished:
            self.cli("restore", "--resume")
            return
        bid = self.model.unfinished
        self.cli("restore", "--resume")
        self.model.live = dict(self.model.backups[bid].counts)
        self.model.unfinished = None

    def rollback(self) -> None:
        listed = json.loads(self.cli("rollback", "--list").stdout)
        if not any(k["kind"] == "pre_restore" for k in listed.get("kept", [])) or \
                not self.model.previous:
            return
        proc = self.cli("rollback", "--yes", expect={0, 1})
        if proc.returncode == 0:  # 1: not made by a restore (rolled back already)
            self.model.leftover = False
            self.model.live = self.model.previous.pop()
            self.model.unfinished = None

    def restore_config_dry_run(self) -> None:
        if any(b for b in self.model.backups.values()):
            self.cli("restore-config", "--latest", "--dry-run", expect={0, 10})

    # -- invariants after every step --------------------------------------------------------
    def check(self) -> None:
        model = self.model
        if model.live:  # the live database equals the last restore's manifest exactly
            tables = sorted(model.live)
            got = self.live_counts(tables)
            if model.unfinished:  # phase 1 whole, the history not yet all there
                short = {t: got[t] for t in tables if (t in HISTORY and got[t] > model.live[t])
                         or (t not in HISTORY and got[t] != model.live[t])}
                assert not short, self.where(f"unfinished backfill: {short} vs {model.live}")
            else:
                assert got == model.live, self.where(f"live database {got} != {model.live}")
        whole = sorted(b.id for b in model.whole_full())
        if whole:  # I2
            shown = json.loads(self.cli("show", "--latest").stdout)
            assert shown["backup_id"] == whole[-1], self.where(
                f"--latest is {shown['backup_id']}, the newest whole full is {whole[-1]}")
            status = json.loads(self.cli("status").stdout)
            assert status["items"][0]["newest"] == whole[-1], self.where(str(status))
        listed = self.listed()  # I9: every complete increment's chain is whole
        for bid, entry in listed.items():
            parent = entry.get("parent")
            if entry["status"] == "complete" and parent:
                assert listed.get(parent, {}).get("status") == "complete", self.where(
                    f"increment {bid} is listed complete, its parent {parent} is "
                    f"{listed.get(parent, {}).get('status')}")
        left = databases(self.env, self.env["_DB"] + "_restore_")  # I5
        assert not left or model.leftover, self.where(
            f"half-restored {left} outlived the restore or rollback after the kill")
        if left:
            kept = json.loads(self.cli("rollback", "--list").stdout)["kept"]
            assert set(left) <= {k["name"] for k in kept if k["kind"] == "restore"}, \
                self.where(f"half-restored {left} not shown by rollback --list")

    def step(self) -> None:
        actions = [(self.backup, 5), (self.prune, 3), (self.verify, 2), (self.copy, 1),
                   (self.restore, 4), (self.resume, 2), (self.rollback, 2),
                   (self.restore_config_dry_run, 1)]
        action = self.rng.choices([a for a, _ in actions], [w for _, w in actions])[0]
        self.model.steps.append(action.__name__)
        action()
        self.model.figures["steps"] += 1
        self.check()


@pytest.mark.timeout(int(BUDGET_S) + 300)  # the budget, then the last step and the checks
def test_random_sequences_keep_every_invariant(clone: dict[str, str]) -> None:
    """Random documented commands, the invariants after each (module docstring)."""
    rng = random.Random(SEED)
    print(f"stateful seed {SEED} (replay: PREFECT_DR_STATEFUL_SEED={SEED})")
    env = dict(clone, PREFECT_DR_S3_RETRY_DEADLINE="5")
    add_history(_with_password(env["PREFECT_DR_DATABASE_URL"], env["PGPASSWORD"]),
                env["PGPASSWORD"], rows=300)
    identity = Path(env["PREFECT_DR_AGE_IDENTITY_FILE"]).read_text()
    secrets = [s for s in (env["PGPASSWORD"], env["AWS_SECRET_ACCESS_KEY"],
                           *[ln for ln in identity.splitlines()
                             if ln.startswith("AGE-SECRET-KEY-")]) if s]
    sampler = ArgvSampler(interval=0.05)
    sampler.start()
    run = Run(env, rng)
    started = time.monotonic()
    try:
        json.loads(run.cli("backup").stdout)  # a first whole full backup, then verified
        run.sync_backups()
        first = next(iter(run.model.backups))
        run.cli("verify", first)
        run.model.backups[first].verified = True
        run.model.live = dict(run.model.backups[first].counts)  # what it holds now
        for _ in range(STEPS):
            if time.monotonic() - started > BUDGET_S:
                break
            run.step()
    finally:
        sampler.stop()
    leaked = [line for line in sampler.seen for s in secrets if s in line]
    assert not leaked, run.where(f"a secret in a command line ({len(leaked)} processes)")
    figures = {**run.model.figures, "argv_samples": sampler.samples, "seed": SEED}
    print("stateful figures: " + json.dumps(figures))
    out = os.environ.get("PREFECT_DR_STATEFUL_FIGURES")
    if out:
        Path(out).write_text(json.dumps(figures) + "\n")
