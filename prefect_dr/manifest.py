"""The manifest: the one record that makes a backup complete. Format in docs/format.md.

A manifest is plaintext JSON holding no secret. It is written last, after every artifact was
uploaded and its size checked, so its presence is what ``list`` calls complete. Readers refuse
a ``format_version`` they do not know instead of guessing.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from prefect_dr.errors import DRError, VerificationError
from prefect_dr.kinds import KINDS

FORMAT = "prefect-dr-manifest"
FORMAT_VERSION = 2
#: The version of an increment's manifest (kind incremental, with ``increment``): full and
#: config-only backups are still written as 2, so older readers keep reading them.
INCREMENT_FORMAT_VERSION = 3
#: The version of a full backup whose runs are split (``runs-live-*`` and ``runs-done-*``
#: artifacts, issue 25): older readers refuse it instead of restoring it without its runs.
RUNS_FORMAT_VERSION = 4
#: Versions this prefect-dr reads: 1 (one dump), 2 (the history tables' data as separate
#: artifacts, dumped in the same snapshot), 3 (increments) and 4 (split runs; docs/format.md).
READABLE_VERSIONS = (1, 2, 3, 4)
#: The parts of a split run table (format 4): ``live``, the rows Prefect needs to serve and
#: schedule (loaded in phase 1), ``done``, the finished runs' rows (loaded in phase 2).
LIVE, DONE = "live", "done"
PARTS = (LIVE, DONE)


class ManifestError(VerificationError):
    """A manifest is malformed, of an unknown version, or its signature does not match."""


#: The names of a backup's artifacts in its manifest (docs/format.md): the one definition.
ARTIFACT_DUMP = "dump"
ARTIFACT_CONFIG = "config"
ARTIFACT_BLOCK_KEY = "block-key"


def history_artifact(table: str) -> str:
    """The artifact name of one history table's rows."""
    return f"history-{table}"


def runs_artifact(table: str, part: str) -> str:
    """The artifact name of one part (:data:`PARTS`) of a split run table's rows."""
    return f"runs-{part}-{table}"


@dataclass(frozen=True)
class Artifact:
    """One encrypted object of a backup."""

    name: str  # "dump" | "config" | "block-key" | "history-<table>" | "runs-<part>-<table>"
    key: str
    #: "pg_dump-custom" | "prefect-config-export+json" | "fernet-key+json" | "pg-copy-text"
    content: str
    size: int  # ciphertext bytes, as stored
    sha256: str  # of the ciphertext
    plaintext_size: int
    plaintext_sha256: str
    compression: str  # "zstd" | "none"
    encryption: str = "age"
    recipients: tuple[str, ...] = ()  # fingerprints (crypto.fingerprint)
    #: Where the artifact is in the repository that holds this copy of the backup, when that
    #: differs from ``key`` (a copy under another prefix); never stored nor signed.
    stored_at: str = field(default="", compare=False)
    #: History artifacts (format 2): the table whose data this is, its columns in COPY order,
    #: and how many rows it holds (exact, counted by COPY). None elsewhere, and never stored.
    table: str | None = None
    columns: tuple[str, ...] | None = None
    rows: int | None = None
    #: Split run tables (format 4): which part of ``table``'s rows this is (:data:`PARTS`).
    part: str | None = None

    @property
    def location(self) -> str:
        """The key to read this artifact from, in the repository the manifest was read from."""
        return self.stored_at or self.key


@dataclass(frozen=True)
class Manifest:
    """Everything known of a complete backup."""

    backup_id: str
    kind: str
    started_at: str
    finished_at: str
    tool_version: str
    prefect_version: str | None
    alembic_revision: str | None
    postgres_version: str
    pg_dump_version: str
    database: str  # host:port/db, no credentials
    row_counts: dict[str, dict[str, Any]]  # table -> {"rows": int, "exact": bool}
    artifacts: tuple[Artifact, ...]
    block_key: dict[str, Any]
    labels: dict[str, str] = field(default_factory=dict)
    consistency: str = "exported-snapshot"
    database_size: int | None = None  # pg_database_size at backup time, for disk planning
    #: the client programs used, program -> path (absent in manifests before issue 14)
    clients: dict[str, str] | None = None
    #: the repository the backup is bound to (trust.repository_name; absent before issue 27):
    #: signed, so a manifest moved into another repository is refused there
    repository: str | None = None
    #: Prefect's runtime state in the backup's snapshot (reconcile.Counts.to_dict), what a
    #: restore reconciles (absent in manifests before issue 21)
    runtime: dict[str, int] | None = None
    #: comments, storage parameters and grants of the public schema's relations and the
    #: schema's grants, where not the defaults (pg.privileges.record; absent before issue 21)
    privileges: dict[str, Any] | None = None
    #: ``{"at": <the snapshot transaction's start, PostgreSQL's clock>, "database": <system
    #: identifier/database oid>}``: where the next increment starts, and of which database
    #: (absent before issue 26; an increment's parent needs it)
    watermark: dict[str, str] | None = None
    #: an increment's link (format 3 only): parent, base, depth, since, overlap_s, column,
    #: floors (docs/format.md, "Increments")
    increment: dict[str, Any] | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    signature: dict[str, str] | None = None
    #: an increment's ancestors, base first, attached by prefect_dr.chain.resolve once each
    #: was found complete and trusted; never stored nor signed
    chain: tuple[Manifest, ...] = field(default=(), compare=False, repr=False)

    def artifact(self, name: str) -> Artifact | None:
        """The artifact called ``name``, if the backup has one."""
        return next((a for a in self.artifacts if a.name == name), None)

    @property
    def history(self) -> tuple[Artifact, ...]:
        """The history tables' data artifacts (format 2 full backups), in manifest order."""
        return tuple(a for a in self.artifacts if a.table and not a.part)

    def runs(self, part: str) -> tuple[Artifact, ...]:
        """This backup's artifacts of one part of its split run tables (format 4), in
        manifest order (never a chain's: a run table is not incremental)."""
        return tuple(a for a in self.artifacts if a.table and a.part == part)

    @property
    def run_tables(self) -> frozenset[str]:
        """The run tables whose rows are split into a live and a done part (format 4)."""
        return frozenset(a.table for a in self.runs(DONE) if a.table)

    @property
    def backfill_tables(self) -> frozenset[str]:
        """Every table phase 2 loads: the history tables and the split run tables."""
        return self.history_tables | self.run_tables

    @property
    def needs_backfill(self) -> bool:
        """Whether a restore of this backup has a phase 2 (history or split runs)."""
        return bool(self.backfill_tables)

    @property
    def history_tables(self) -> frozenset[str]:
        """The tables whose data is in a history artifact rather than in the dump."""
        return frozenset(a.table for a in self.history if a.table)

    @property
    def parent(self) -> str | None:
        """The backup an increment continues (None for every other kind)."""
        return str(self.increment["parent"]) if self.increment else None

    def segments(self, table: str) -> tuple[Artifact, ...]:
        """The history artifacts that make up ``table``'s rows, oldest link first: the
        chain's (attached by prefect_dr.chain.resolve) and this backup's own. Raises
        VerificationError for an increment whose chain is not attached."""
        if self.increment and not self.chain:
            raise VerificationError(f"backup {self.backup_id} is an increment whose chain was "
                                    "not resolved")
        return tuple(a for m in (*self.chain, self) for a in m.history if a.table == table)

    @property
    def payload_size(self) -> int:
        """Ciphertext bytes of the dump and history artifacts (what a restore downloads)."""
        return sum(a.size for a in self.artifacts if a.name == ARTIFACT_DUMP or a.table)

    def to_dict(self, *, signed: bool = True) -> dict[str, Any]:
        """JSON-ready form; ``signed=False`` leaves the signature out (what gets signed)."""
        data = asdict(replace(self, chain=()))
        data.pop("chain")
        data["artifacts"] = [_artifact_dict(a) for a in self.artifacts]
        if not signed or self.signature is None:
            data.pop("signature")
        if self.clients is None:
            data.pop("clients")  # older manifests: their signed bytes stay the same
        if self.repository is None:
            data.pop("repository")
        if self.runtime is None:
            data.pop("runtime")
        if self.privileges is None:
            data.pop("privileges")
        for name in ("watermark", "increment"):  # absent before issue 26: old bytes unchanged
            if data[name] is None:
                data.pop(name)
        return data

    def signing_bytes(self) -> bytes:
        """The canonical bytes a signature covers: sorted keys, no whitespace, no signature."""
        return json.dumps(self.to_dict(signed=False), sort_keys=True,
                          separators=(",", ":")).encode()

    def to_json(self) -> bytes:
        """The bytes stored in the bucket."""
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode()


def _artifact_dict(a: Artifact) -> dict[str, Any]:
    data = dict(asdict(a), recipients=list(a.recipients))
    data.pop("stored_at")
    for name in ("table", "columns", "rows", "part"):  # absent before format 2 (4): unchanged
        if data[name] is None:
            data.pop(name)
    if a.columns is not None:
        data["columns"] = list(a.columns)
    return data


def _require(data: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in data:
        raise ManifestError(f"{where}: missing field {name!r}")
    value = data[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ManifestError(f"{where}: field {name!r} has the wrong type")
    return value


def parse(raw: bytes, where: str = "manifest") -> Manifest:
    """Parse and validate manifest bytes. Raises ManifestError naming the problem."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ManifestError(f"{where} is not valid JSON") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{where} is not a JSON object")
    if data.get("format") != FORMAT:
        raise ManifestError(f"{where} is not a prefect-dr manifest")
    version = _require(data, "format_version", int, where)
    if version not in READABLE_VERSIONS:
        raise ManifestError(f"{where} has format_version {version}; this prefect-dr reads "
                            f"{', '.join(map(str, READABLE_VERSIONS))} (upgrade prefect-dr)")
    strs = ("backup_id", "kind", "started_at", "finished_at", "tool_version",
            "postgres_version", "pg_dump_version", "database", "consistency")
    for name in strs:
        _require(data, name, str, where)
    for name in ("prefect_version", "alembic_revision"):
        _require(data, name, (str, type(None)), where)
    if data["kind"] not in KINDS:
        raise ManifestError(f"{where}: unknown kind {data['kind']!r}")
    counts = _require(data, "row_counts", dict, where)
    for table, entry in counts.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("rows"), int)
                and isinstance(entry.get("exact"), bool)):
            raise ManifestError(f"{where}: row count of {table!r} is malformed")
    labels = _require(data, "labels", dict, where)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ManifestError(f"{where}: labels must map strings to strings")
    block_key = _require(data, "block_key", dict, where)
    artifacts = []
    names = {f.name for f in fields(Artifact)} - {"stored_at"}
    for i, item in enumerate(_require(data, "artifacts", list, where)):
        spot = f"{where}: artifact {i}"
        if not isinstance(item, dict) or set(item) - names:
            raise ManifestError(f"{spot} is malformed")
        for name in ("name", "key", "content", "sha256", "plaintext_sha256", "compression",
                     "encryption"):
            _require(item, name, str, spot)
        for name in ("size", "plaintext_size"):
            if _require(item, name, int, spot) < 0:
                raise ManifestError(f"{spot}: negative {name}")
        recipients = _require(item, "recipients", list, spot)
        extra = _history_fields(item, spot)
        artifacts.append(Artifact(**{**item, "recipients": tuple(map(str, recipients)),
                                     **extra}))
    _check_parts(artifacts, version, where)
    signature = data.get("signature")
    if signature is not None and not isinstance(signature, dict):
        raise ManifestError(f"{where}: signature is malformed")
    return Manifest(
        backup_id=data["backup_id"], kind=data["kind"], started_at=data["started_at"],
        finished_at=data["finished_at"], tool_version=data["tool_version"],
        prefect_version=data["prefect_version"], alembic_revision=data["alembic_revision"],
        postgres_version=data["postgres_version"], pg_dump_version=data["pg_dump_version"],
        database=data["database"], row_counts=counts, artifacts=tuple(artifacts),
        block_key=block_key, labels=labels, consistency=data["consistency"],
        format_version=version, signature=signature,
        database_size=data.get("database_size") if isinstance(data.get("database_size"), int)
        else None,
        clients=_clients(data.get("clients"), where),
        repository=_require(data, "repository", str, where) if "repository" in data else None,
        runtime=_runtime(data.get("runtime"), where),
        privileges=_privileges(data.get("privileges"), where),
        watermark=_watermark(data.get("watermark"), where),
        increment=_increment(data, version, where),
    )


def _check_parts(artifacts: list[Artifact], version: int, where: str) -> None:
    """Split run tables exactly in format 4, each with one live and one done part."""
    parts = [(a.table, a.part) for a in artifacts if a.part]
    if (version == RUNS_FORMAT_VERSION) != bool(parts):
        raise ManifestError(f"{where}: split run tables (format {RUNS_FORMAT_VERSION}) and "
                            "their artifacts go together")
    tables = {t for t, _ in parts}
    if sorted(parts) != sorted((t, p) for t in tables for p in PARTS):
        raise ManifestError(f"{where}: every split run table needs one live and one done part")


def _watermark(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not (isinstance(value, dict) and isinstance(value.get("at"), str)
            and isinstance(value.get("database"), str)):
        raise ManifestError(f"{where}: watermark is malformed")
    return dict(value)


def _increment(data: dict[str, Any], version: int, where: str) -> dict[str, Any] | None:
    """An increment's link, checked: present exactly in format-3 manifests of kind
    incremental, naming its parent, base, depth and since."""
    value = data.get("increment")
    wants = data["kind"] == "incremental"
    if wants != (value is not None) or (version == INCREMENT_FORMAT_VERSION) != wants:
        raise ManifestError(f"{where}: an increment (format 3, kind incremental) and its "
                            "'increment' field go together")
    if value is None:
        return None
    ok = (isinstance(value, dict) and all(isinstance(value.get(k), str) and value.get(k)
                                          for k in ("parent", "base", "since"))
          and isinstance(value.get("depth"), int) and value["depth"] >= 1
          and isinstance(value.get("floors", {}), dict))
    if not ok:
        raise ManifestError(f"{where}: increment is malformed")
    return dict(value)


def _history_fields(item: dict[str, Any], spot: str) -> dict[str, Any]:
    """The optional history fields of an artifact, checked; {} when it has none."""
    if not any(name in item for name in ("table", "columns", "rows", "part")):
        return {}
    table = _require(item, "table", str, spot)
    columns = _require(item, "columns", list, spot)
    rows = _require(item, "rows", int, spot)
    if (not table or not columns or rows < 0
            or not all(isinstance(c, str) and c for c in columns)):
        raise ManifestError(f"{spot}: history table fields are malformed")
    extra: dict[str, Any] = {"table": table, "columns": tuple(columns), "rows": rows}
    if "part" in item:
        if item["part"] not in PARTS or item.get("name") != runs_artifact(table, item["part"]):
            raise ManifestError(f"{spot}: the part of a split run table is malformed")
        extra["part"] = item["part"]
    return extra


def _clients(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not (isinstance(value, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())):
        raise ManifestError(f"{where}: clients must map program names to paths")
    return dict(value)


def _runtime(value: Any, where: str) -> dict[str, int] | None:
    if value is None:
        return None
    if not (isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in value.items())):
        raise ManifestError(f"{where}: runtime must map names to counts")
    return dict(value)


def _grants_ok(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(g, list) and len(g) == 3 and isinstance(g[0], str) and isinstance(g[1], str)
        and g[1].replace(" ", "").isalpha() and isinstance(g[2], bool) for g in value)


def _privileges(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    tables = value.get("tables") if isinstance(value, dict) else None
    ok = (isinstance(tables, dict) and _grants_ok(value.get("schema_grants", []))
          and all(isinstance(t, str) and isinstance(e, dict)
                  and isinstance(e.get("comment", ""), str)
                  and isinstance(e.get("options", []), list)
                  and all(isinstance(o, str) for o in e.get("options", []))
                  and _grants_ok(e.get("grants", [])) for t, e in tables.items()))
    if not ok:
        raise ManifestError(f"{where}: privileges are malformed")
    return dict(value)


def b64(data: bytes) -> str:
    """Standard base64 text of ``data``."""
    return base64.b64encode(data).decode()


def unb64(text: str, what: str) -> bytes:
    """Decode base64 ``text``; raises DRError naming ``what`` when malformed."""
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise DRError(f"{what} is not valid base64") from None
