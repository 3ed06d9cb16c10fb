"""Corruption and tampering: flipped, truncated, appended and swapped objects; a manifest edited
or replaced by another backup's; a forged verification record.

Two repositories of real backups of the chaos stack's Prefect database: an unsigned one and a
signed one (PREFECT_DR_SIGNING_KEY_FILE + PREFECT_DR_VERIFY_KEY). Each case damages one backup
(the place, the bytes and the field are drawn at random), then requires `verify` to fail naming
the damage and `restore` to refuse it with the documented exit code, one error line, no
traceback, the live database unchanged and no half-restored database left. The damage is then
undone (the repository is put back object by object) for the next case.

The unsigned repository is written with signing.required = false and read with
--allow-unsigned. Unsigned manifests are checked against what they describe, so an edit is
caught when it changes something restored or checked (sizes, digests, row counts, revision,
keys, ids); edits of descriptive fields (labels, times) need a signed manifest, where any
edit is caught.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from .conftest import FIGURES, SEED, SOAK, Chaos
from .harness import (
    LIVE,
    Run,
    cli,
    databases,
    error_problem,
    fingerprint,
    get,
    keys,
    listing,
    manifest_key,
    need,
    prefix_root,
    put,
    replace_field,
)

pytestmark = pytest.mark.integration

ROUNDS = 2 if SOAK else 1
CI_CASES = 5  # cases drawn per CI run (every case in soak mode, ROUNDS times)
DAMAGE_EXIT = FIGURES.scenario(
    "corruption-restore-exit", group="Corruption and tampering",
    title="restore of a damaged dump: exit code",
    invariant="exit 13, a backup failed a check (found by this suite: it was exit 1; fixed in "
              "6225c1c)")
SCENARIO = FIGURES.scenario(
    "corruption", group="Corruption and tampering",
    title="damaged or tampered backup objects and records",
    invariant="`verify` fails naming the damage (exit 13, or 10 for a backup no longer "
              "complete); `restore` refuses (13/14/10) and changes nothing")


@dataclass
class Repo:
    env: dict[str, str]
    ids: list[str]  # [A, B]: A is damaged, B lends its objects
    snapshot: dict[str, bytes]
    signed: bool

    @property
    def flags(self) -> list[str]:
        """What readers of this repository pass (an unsigned one needs --allow-unsigned)."""
        return [] if self.signed else ["--allow-unsigned"]


def _make_repo(chaos: Chaos, name: str, signed: bool) -> Repo:
    extra: dict[str, str] = {"PREFECT_DR_SIGNING_REQUIRED": "false"}
    if signed:
        key = chaos.tmp / f"{name}-signing.pem"
        public = cli(["keygen", "--signing", "-o", str(key)], chaos.env("keygen")).stdout.strip()
        chaos.secrets["signing_key"] = "".join(
            ln for ln in key.read_text().splitlines() if not ln.startswith("-----"))
        extra = {"PREFECT_DR_SIGNING_KEY_FILE": str(key), "PREFECT_DR_VERIFY_KEY": public}
    env = chaos.env(name, **extra)
    if not signed:  # written unsigned on purpose, read with --allow-unsigned
        env.pop("PREFECT_DR_SIGNING_KEY_FILE")
    ids = []
    for _ in range(2):
        run = cli(["backup", "--json"], env)
        need(run.returncode == 0, run.describe())
        ids.append(run.json["backup_id"])
    run = cli(["verify", ids[1], "--json", *([] if signed else ["--allow-unsigned"])],
              env)  # B gets a genuine passed record
    need(run.returncode == 0, run.describe())
    root = prefix_root(env)
    return Repo(env, ids, {k: get(chaos.stack, k) for k in keys(chaos.stack, root)}, signed)


@pytest.fixture(scope="module")
def repos(chaos: Chaos) -> dict[str, Repo]:
    return {"unsigned": _make_repo(chaos, "corrupt", False),
            "signed": _make_repo(chaos, "corrupt-signed", True)}


def _reset(chaos: Chaos, repo: Repo) -> None:
    """Put the repository back exactly as it was after set-up."""
    root = prefix_root(repo.env)
    now = keys(chaos.stack, root)
    s3 = chaos.stack.s3()
    for key in now:
        if key not in repo.snapshot:
            s3.delete_object(Bucket=chaos.stack.bucket, Key=key)
    for key, body in repo.snapshot.items():
        if key not in now or now[key] != len(body) or get(chaos.stack, key) != body:
            put(chaos.stack, key, body)


# -- the cases ----------------------------------------------------------------------------------
# Each takes (chaos, repo, rng), damages repo.ids[0] and returns (description, expected verify
# exit, expected failed check (prefix) or None, allowed restore exits).
Case = Callable[[Chaos, Repo, random.Random], tuple[str, int, str | None, tuple[int, ...]]]


def _art(repo: Repo, name: str, which: int = 0) -> str:
    root = prefix_root(repo.env)
    file = {"dump": "db.dump.zst.age", "config": "config.json.zst.age"}[name]
    return f"{root}backups/{repo.ids[which]}/{file}"


def _manifest(repo: Repo, which: int = 0) -> dict[str, Any]:
    return json.loads(repo.snapshot[manifest_key(repo.env, repo.ids[which])])


def flip(chaos: Chaos, repo: Repo, rng: random.Random) -> tuple:
    name = rng.choice(["dump", "config"])
    body = bytearray(repo.snapshot[_art(repo, name)])
    at, bit = rng.randrange(len(body)), rng.randrange(8)
    body[at] ^= 1 << bit
    put(chaos.stack, _art(repo, name), bytes(body))
    return f"{name}: bit {bit} of byte {at} of {len(body)} flipped", 13, \
        f"integrity ({name})", (13,)


def truncate(chaos: Chaos, repo: Repo, rng: random.Random) -> tuple:
    name = rng.choice(["dump", "config"])
    body = repo.snapshot[_art(repo, name)]
    cut = rng.randrange(0, len(body))
    put(chaos.stack, _art(repo, name), body[:cut])
    return f"{name}: truncated to {cut} of {len(body)} bytes", 13, f"integrity ({name})", (13,)


def append(chaos: Chaos, repo: Repo, rng: random.Random) -> tuple:
    name = rng.choice(["dump", "config"])
    extra = rng.randbytes(rng.randint(1, 4096))
    put(chaos.stack, _art(repo, name), repo.snapshot[_art(repo, name)] + extra)
    return f"{name}: {len(extra)} bytes appended", 13, f"integrity ({name})", (13,)


def swap_with_other_backup(chaos: Chaos, repo: Repo, rng: random.Random) -> tuple:
    name = rng.choice(["dump", "config"])
    put(chaos.stack, _art(repo, name), repo.snapshot[_art(repo, name, 1)])
    return f"{name} replaced by the other backup's {name}", 13, f"integrity ({name})", (13,)


def swap_within(chaos: Chaos, repo: Repo, rng: random.Random) -> tuple:
    dump, config = repo.snapshot[_art(repo, "dump")], repo.snapshot[_art(repo, "config")]
    put(chaos.stack, _art(repo, "dump"), config)
    put(chaos.stack, _art(repo, "config"), dump)
    return "dump and configuration export swapped", 13, "integrity (config)", (13,)


def edit_manifest(chaos: Chaos, repo: Repo, rng: random.Random) -> tuple:
    m = _manifest(repo)
    other = _manifest(repo, 1)
    if repo.signed:  # any field at all: the signature covers everything
        field, value = rng.choice([
            ("labels", {"env": "tampered"}), ("kind", "config-only"),
            ("finished_at", "2001-01-01T00:00:00+00:00"), ("prefect_version", "9.9.9"),
            ("artifacts.0.sha256", other["artifacts"][0]["sha256"]),
            ("database", "elsewhere:5432/prefect as prefect"),
        ])
        expect: tuple = (13, "manifest signature", (13,))
    else:
        exact = sorted(t for t, c in m["row_counts"].items()
                       if c.get("exact") and c.get("data", True))
        table = rng.choice(exact)
        choices = [
            ("artifacts.0.sha256", other["artifacts"][0]["sha256"], "integrity (dump)", (13,)),
            ("artifacts.0.size", m["artifacts"][0]["size"] + rng.randint(1, 99),
             "integrity (dump)", (13,)),
            ("artifacts.0.plaintext_sha256", "0" * 64, "integrity (dump)", (13,)),
            ("artifacts.1.sha256", "f" * 64, "integrity (config)", (13,)),
            (f"row_counts.{table}.rows", m["row_counts"][table]["rows"] + rng.randint(1, 5),
             "row counts", (13,)),
            ("alembic_revision", "000000000000", "schema revision", (13, 14)),
            ("artifacts.0.key", other["artifacts"][0]["key"], None, (13,)),
            ("backup_id", repo.ids[1], None, (13,)),
            ("format_version", 3, None, (13,)),
        ]
        field, value, check, restore = rng.choice(choices)
        expect = (13, check, restore)
    body = json.dumps(replace_field(m, field, value)).encode()
    put(chaos.stack, manifest_key(repo.env, repo.ids[0]), body)
    return (f"manifest field {field} edited", *expect)


def manifest_of_other_backup(chaos: Chaos, repo: Repo, rng: random.Random) -> tuple:
    other = _manifest(repo, 1)
    if rng.random() < 0.5:  # as is: it names the other backup
        put(chaos.stack, manifest_key(repo.env, repo.ids[0]), json.dumps(other).encode())
        return "manifest replaced by the other backup's", 13, None, (13,)
    # re-labelled to pass for this backup: ids and keys rewritten, digests the other's
    text = json.dumps(other).replace(repo.ids[1], repo.ids[0])
    put(chaos.stack, manifest_key(repo.env, repo.ids[0]), text.encode())
    check = "manifest signature" if repo.signed else "integrity"
    return "manifest replaced by the other backup's, ids rewritten", 13, check, (13,)


def mangle_manifest(chaos: Chaos, repo: Repo, rng: random.Random) -> tuple:
    body = repo.snapshot[manifest_key(repo.env, repo.ids[0])]
    how = rng.choice(["truncated", "garbage", "empty object", "not an object"])
    new = {"truncated": body[:rng.randrange(len(body))], "garbage": rng.randbytes(200),
           "empty object": b"{}", "not an object": b"[1, 2, 3]"}[how]
    put(chaos.stack, manifest_key(repo.env, repo.ids[0]), new)
    return f"manifest {how}", 13, None, (13,)


def remove_manifest(chaos: Chaos, repo: Repo, rng: random.Random) -> tuple:
    chaos.stack.s3().delete_object(Bucket=chaos.stack.bucket,
                                   Key=manifest_key(repo.env, repo.ids[0]))
    return "manifest deleted (the backup is no longer complete)", 10, None, (10,)


def forge_record(chaos: Chaos, repo: Repo, rng: random.Random) -> tuple:
    """The dump is damaged, and a verification record claims it passed."""
    root = prefix_root(repo.env)
    b_records = sorted(k for k in repo.snapshot
                       if k.startswith(f"{root}backups/{repo.ids[1]}/verifications/"))
    record = json.loads(repo.snapshot[b_records[-1]])
    how = rng.choice(["copied from the other backup", "rewritten for this backup",
                      "failed record edited to passed"])
    if how == "rewritten for this backup":
        record["backup_id"] = repo.ids[0]
    elif how == "failed record edited to passed":
        record = dict(record, backup_id=repo.ids[0], result="failed",
                      failed_check="integrity (dump)")
        if repo.signed:
            from prefect_dr import signing

            key = signing.load_private(__import__("pathlib").Path(
                repo.env["PREFECT_DR_SIGNING_KEY_FILE"]))
            record.pop("signature", None)
            record = signing.sign_record(record, key)
        record["result"], record["failed_check"] = "passed", None
    put(chaos.stack, f"{root}backups/{repo.ids[0]}/verifications/29991231T235959Z-f0f0f0.json",
        json.dumps(record).encode())
    body = bytearray(repo.snapshot[_art(repo, "dump")])
    body[len(body) // 2] ^= 0x10
    put(chaos.stack, _art(repo, "dump"), bytes(body))
    listed = listing(repo.env)[repo.ids[0]].verification
    shown = cli(["list", "--json"], repo.env)
    result = next(b for b in shown.json["backups"]
                  if b["backup_id"] == repo.ids[0])["verification"]
    expected = "forged" if how == "copied from the other backup" else "unsigned"
    assert listed is not None and result["result"] == expected, (how, result)
    return f"verification record forged ({how}; list shows {result['result']})", 13, \
        "integrity (dump)", (13,)


CASES: list[Case] = [flip, truncate, append, swap_with_other_backup, swap_within,
                     edit_manifest, manifest_of_other_backup, mangle_manifest, remove_manifest,
                     forge_record]


def _plan(rng: random.Random) -> list[tuple[str, Case]]:
    every = [(kind, case) for _ in range(ROUNDS) for case in CASES
             for kind in ("unsigned", "signed")]
    if SOAK:
        return every
    rng.shuffle(every)
    return every[:CI_CASES]


def _check_refused(t: Any, run: Run, codes: tuple[int, ...], what: str) -> None:
    t.check(run.returncode in codes, f"{what}: expected exit {codes}: {run.describe()}")
    problem = error_problem(run, run.returncode)
    t.check(problem is None, f"{what}: {problem}")


@pytest.mark.timeout(1800)
def test_damage_is_detected_by_verify_and_refused_by_restore(
        chaos: Chaos, repos: dict[str, Repo], rng: random.Random) -> None:
    before = fingerprint(chaos.stack, LIVE)
    for i, (kind, case) in enumerate(_plan(rng)):
        repo = repos[kind]
        _reset(chaos, repo)
        with SCENARIO.trial(seed=SEED, trial=i, repo=kind, case=case.__name__) as t:
            what, code, check, restore_codes = case(chaos, repo, rng)
            what = f"{kind} repo, {what}"
            t.fault()
            verified = cli(["verify", repo.ids[0], "--json", *repo.flags], repo.env)
            _check_refused(t, verified, (code,), f"verify ({what})")
            if check is not None and verified.stdout.strip():
                report = verified.json["reports"][0]
                t.check(report["result"] == "failed" and
                        str(report["failed_check"]).startswith(check),
                        f"verify ({what}) failed {report['failed_check']!r}, expected {check!r}")
            restored = cli(["restore", repo.ids[0], "--yes", "--no-safety-backup",
                            "--force-disconnect", "--json", *repo.flags], repo.env)
            _check_refused(t, restored, restore_codes, f"restore ({what})")
            t.check(not databases(chaos.stack, f"{LIVE}_%restore%"),
                    f"restore ({what}) left or swapped databases: "
                    f"{databases(chaos.stack, f'{LIVE}_%')}")
            t.check(fingerprint(chaos.stack, LIVE) == before,
                    f"restore ({what}) changed the live database", lost=True)
            t.outcome(f"{case.__name__}: verify {verified.returncode}, restore "
                      f"{restored.returncode}")
    for repo in repos.values():
        _reset(chaos, repo)
        good = cli(["verify", repo.ids[0], "--json", *repo.flags], repo.env)
        need(good.returncode == 0, f"the undamaged backup must verify: {good.describe()}")


def test_restore_of_a_damaged_dump_exits_13(chaos: Chaos, repos: dict[str, Repo],
                                            rng: random.Random) -> None:
    repo = repos["unsigned"]
    _reset(chaos, repo)
    try:
        with DAMAGE_EXIT.trial(seed=SEED) as t:
            what = flip(chaos, repo, rng)[0]
            t.fault()
            run = cli(["restore", repo.ids[0], "--yes", "--no-safety-backup",
                       "--force-disconnect", "--json", *repo.flags], repo.env)
            t.outcome(f"exit {run.returncode}")
            t.check(error_problem(run, 13) is None, f"{what}: {error_problem(run, 13)}")
    finally:
        _reset(chaos, repo)
