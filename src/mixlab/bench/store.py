"""The results store: one SQLite file (WAL mode) that users can query directly.

Tables (``sqlite3 runs/mixlab.db .schema`` shows them):

- ``meta(key, value)``: ``schema_version`` and ``created``;
- ``suites(name, definition, created, updated)``: the suite's YAML definition as JSON;
- ``runs``: one row per (suite, run key) with the full resolved config as JSON,
  the status (``running``, ``finished``, ``failed``), start and end times, seed,
  package versions, device, the error of a failed run and the attempt count;
- ``epoch_metrics(run_id, epoch, metric, value)``: the training log, long format;
- ``final_metrics(run_id, metric, value)``: evaluation metrics and cost;
- ``artifacts(run_id, name, value)``: JSON blobs such as reliability-diagram bins;
- ``predictions(run_id, split, task, num_samples, data)``: each run's per-sample test
  predictions (:class:`mixlab.evaluate.predictions.SamplePredictions`, compressed), from
  which any two runs are compared sample by sample.

A store written by schema 1 (before ``predictions``) is migrated in place when opened,
in one transaction that only adds the table; its runs keep everything they had, but
have no predictions until they are run again.

Every write is one transaction, so a killed process loses at most the run in
progress, which is redone on the next launch. A file that is not a mixlab store,
or was written by a newer schema, is refused before anything touches it.

Example (shell)::

    sqlite3 runs/mixlab.db "SELECT method, value FROM runs JOIN final_metrics ON id = run_id WHERE metric = 'top1'"
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mixlab.bench.records import RunRecord
from mixlab.errors import MixlabValueError
from mixlab.evaluate.predictions import SamplePredictions

SCHEMA_VERSION = 2
#: the older schemas this version migrates in place, each to the next.
#: PRAGMA application_id of a mixlab store ("MIXL"): tells our files from other SQLite databases.
APPLICATION_ID = 0x4D49584C
DEFAULT_STORE = Path("runs") / "mixlab.db"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE suites (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    suite TEXT NOT NULL REFERENCES suites(name),
    key TEXT NOT NULL,
    dataset TEXT NOT NULL,
    model TEXT NOT NULL,
    method TEXT NOT NULL,
    seed INTEGER NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    started TEXT,
    ended TEXT,
    wall_time_s REAL,
    error TEXT,
    versions TEXT,
    device TEXT,
    host TEXT,
    pid INTEGER,
    attempts INTEGER NOT NULL DEFAULT 1,
    output TEXT,
    UNIQUE (suite, key)
);
CREATE TABLE epoch_metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, epoch, metric)
);
CREATE TABLE final_metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    metric TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, metric)
);
CREATE TABLE artifacts (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE INDEX runs_by_suite ON runs (suite, status);
"""
_PREDICTIONS_TABLE = """
CREATE TABLE predictions (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    split TEXT NOT NULL,
    task TEXT NOT NULL,
    num_samples INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, split)
);
"""
_SCHEMA += _PREDICTIONS_TABLE
#: the statements that migrate a store of schema N to N + 1 (adding only: nothing stored is changed).
_MIGRATIONS = {1: _PREDICTIONS_TABLE}


_V1_TABLES = ("meta", "suites", "runs", "epoch_metrics", "final_metrics", "artifacts")
#: the tables of each schema version.
_TABLES = {1: _V1_TABLES, 2: (*_V1_TABLES, "predictions")}


class StoreError(MixlabValueError):
    """The store file cannot be used (not a mixlab store, or another schema); it was left untouched."""


def now() -> str:
    """The current UTC time as ISO 8601, to the microsecond (how the store writes times).

    Example:
        >>> now().endswith("+00:00")
        True
    """
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


class ResultStore:
    """Open (or create) the results store at ``path``; refuse a file that is not one.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     store = ResultStore(Path(tmp) / "mixlab.db")
        ...     store.schema_version()
        2
    """

    def __init__(self, path: str | os.PathLike = DEFAULT_STORE):
        self.path = Path(path)
        version = _check_existing(self.path)
        if version is not None and version < SCHEMA_VERSION and not _writable(self.path):
            raise StoreError(_migration_refused(self.path, version, "the file or its folder is not writable"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self.transaction() as db:
            if _user_tables(db) == set():
                for statement in filter(str.strip, _SCHEMA.split(";")):  # executescript would commit early
                    db.execute(statement)
                db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                db.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [("schema_version", str(SCHEMA_VERSION)), ("created", now())],
                )
        self._migrate()

    def _migrate(self) -> None:
        """Bring an older store to :data:`SCHEMA_VERSION`, all steps in one transaction (all or nothing)."""
        if self.schema_version() == SCHEMA_VERSION:
            return
        try:
            with self.transaction() as db:
                version = int(db.execute("PRAGMA user_version").fetchone()[0])
                while version < SCHEMA_VERSION:
                    for statement in filter(str.strip, _MIGRATIONS[version].split(";")):
                        db.execute(statement)
                    version += 1
                db.execute(f"PRAGMA user_version={version}")
                db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(version),))
                db.execute("INSERT OR REPLACE INTO meta VALUES ('migrated', ?)", (now(),))
        except sqlite3.Error as error:
            version = self.schema_version()
            self.close()
            raise StoreError(_migration_refused(self.path, version, str(error))) from None

    # ------------------------------------------------------------ basics

    def close(self) -> None:
        """Close the connection (the data is already committed)."""
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: everything inside is committed together or not at all."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLite may have rolled back already
                self._db.execute("ROLLBACK")
            raise

    def schema_version(self) -> int:
        """The schema version the file was written with."""
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # ------------------------------------------------------------ suites and runs

    def save_suite(self, name: str, definition: dict[str, Any]) -> None:
        """Record (or update) a suite's definition."""
        stamp = now()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO suites VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, updated = excluded.updated",
                (name, json.dumps(definition, sort_keys=True), stamp, stamp),
            )

    def suite_definition(self, name: str) -> dict[str, Any]:
        """The stored definition of suite ``name`` (as :meth:`save_suite` recorded it), ``{}`` when unknown."""
        row = self._db.execute("SELECT definition FROM suites WHERE name = ?", (name,)).fetchone()
        return {} if row is None else json.loads(row[0])

    def suite_names(self) -> list[str]:
        """Suites in the store, the most recently updated first."""
        return [row[0] for row in self._db.execute("SELECT name FROM suites ORDER BY updated DESC, name")]

    def run_status(self, suite: str, key: str) -> dict[str, Any] | None:
        """The stored row of one run (status, config, pid, host, ...) or ``None``."""
        row = self._db.execute("SELECT * FROM runs WHERE suite = ? AND key = ?", (suite, key)).fetchone()
        return None if row is None else dict(row)

    def start_run(
        self,
        suite: str,
        key: str,
        *,
        dataset: str,
        model: str,
        method: str,
        seed: int,
        config: dict[str, Any],
        output: str | None = None,
        pid: int | None = None,
    ) -> int:
        """Mark a run as running (a new row, or a redo of an unfinished or failed one); return its id.

        A redo drops the earlier attempt's metrics in the same transaction, so a run is never counted twice.
        """
        with self.transaction() as db:
            row = db.execute("SELECT id, attempts FROM runs WHERE suite = ? AND key = ?", (suite, key)).fetchone()
            values = (
                dataset, model, method, seed, json.dumps(config, sort_keys=True), now(), output,
                socket.gethostname(), os.getpid() if pid is None else pid,
            )  # fmt: skip
            if row is None:
                cursor = db.execute(
                    "INSERT INTO runs (dataset, model, method, seed, config, started, output, host, pid, suite, key,"
                    " status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running')",
                    (*values, suite, key),
                )
                return int(cursor.lastrowid)
            run_id = int(row["id"])
            for table in ("epoch_metrics", "final_metrics", "artifacts", "predictions"):
                db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            db.execute(
                "UPDATE runs SET dataset = ?, model = ?, method = ?, seed = ?, config = ?, started = ?, output = ?,"
                " host = ?, pid = ?, status = 'running', ended = NULL, wall_time_s = NULL, error = NULL,"
                " versions = NULL, device = NULL, attempts = attempts + 1 WHERE id = ?",
                (*values, run_id),
            )
            return run_id

    def log_epoch(self, run_id: int, record: dict[str, Any]) -> None:
        """Store one epoch's numeric metrics (``record["epoch"]`` is the epoch number)."""
        epoch = int(record["epoch"])
        rows = [(run_id, epoch, k, float(v)) for k, v in record.items() if k != "epoch" and _is_number(v)]
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO epoch_metrics VALUES (?, ?, ?, ?)", rows)

    def finish_run(
        self,
        run_id: int,
        *,
        metrics: dict[str, Any],
        wall_time_s: float,
        versions: dict[str, Any] | None = None,
        device: str | None = None,
        artifacts: dict[str, Any] | None = None,
        predictions: SamplePredictions | None = None,
    ) -> None:
        """Store the final metrics, artifacts and test predictions and mark the run finished, in one transaction."""
        rows = [(run_id, k, float(v)) for k, v in metrics.items() if _is_number(v)]
        blob = None if predictions is None else predictions.to_bytes()
        with self.transaction() as db:
            if predictions is not None:
                db.execute(
                    "INSERT OR REPLACE INTO predictions VALUES (?, 'test', ?, ?, ?)",
                    (run_id, predictions.task, len(predictions), blob),
                )
            db.executemany("INSERT OR REPLACE INTO final_metrics VALUES (?, ?, ?)", rows)
            db.executemany(
                "INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?)",
                [(run_id, name, json.dumps(value)) for name, value in (artifacts or {}).items()],
            )
            db.execute(
                "UPDATE runs SET status = 'finished', ended = ?, wall_time_s = ?, versions = ?, device = ?"
                " WHERE id = ?",
                (now(), wall_time_s, json.dumps(versions or {}, sort_keys=True), device, run_id),
            )

    def fail_run(self, run_id: int, error: str, *, wall_time_s: float | None = None) -> None:
        """Mark a run failed with its error message; its partial metrics are kept for inspection."""
        with self.transaction() as db:
            db.execute(
                "UPDATE runs SET status = 'failed', ended = ?, error = ?, wall_time_s = ? WHERE id = ?",
                (now(), error, wall_time_s, run_id),
            )

    # ------------------------------------------------------------ reading

    def records(self, suite: str | None = None, *, with_predictions: bool = False) -> list[RunRecord]:
        """Every run of ``suite`` (all suites when ``None``) with its metrics, in insertion order.

        ``with_predictions`` also reads each run's test predictions (``RunRecord.predictions``).
        """
        query, args = "SELECT * FROM runs", ()
        if suite is not None:
            query, args = query + " WHERE suite = ?", (suite,)
        runs = self._db.execute(query + " ORDER BY id", args).fetchall()
        records = [self._record(row) for row in runs]
        if with_predictions:
            for record in records:
                record.predictions = self.predictions(record.run_id)
        return records

    def run_record(self, run_id: int, *, with_predictions: bool = True) -> RunRecord | None:
        """One run by its id (``runs.id``), or ``None``."""
        row = self._db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        record = self._record(row)
        if with_predictions:
            record.predictions = self.predictions(run_id)
        return record

    def find_runs(self, text: str) -> list[RunRecord]:
        """Runs named by ``text``: a run id, ``SUITE:KEY``, or a run key (in any suite), without predictions.

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     ResultStore(Path(tmp) / "s.db").find_runs("7")
            []
        """
        if text.isdigit():
            record = self.run_record(int(text), with_predictions=False)
            return [] if record is None else [record]
        suite, _, key = text.rpartition(":")
        query, args = "SELECT * FROM runs WHERE key = ?", [key]
        if suite:
            query, args = query + " AND suite = ?", [key, suite]
        return [self._record(row) for row in self._db.execute(query + " ORDER BY id", args)]

    def predictions(self, run_id: int, split: str = "test") -> SamplePredictions | None:
        """A run's stored per-sample predictions, or ``None`` (a run stored before schema 2, or unfinished)."""
        row = self._db.execute(
            "SELECT data FROM predictions WHERE run_id = ? AND split = ?", (run_id, split)
        ).fetchone()
        return None if row is None else SamplePredictions.from_bytes(row[0])

    def _record(self, row: sqlite3.Row) -> RunRecord:
        run_id = int(row["id"])
        final = {
            r["metric"]: r["value"]
            for r in self._db.execute("SELECT metric, value FROM final_metrics WHERE run_id = ?", (run_id,))
        }
        if row["wall_time_s"] is not None:
            final.setdefault("wall_time_s", row["wall_time_s"])
        epochs: dict[int, dict[str, float]] = {}
        for r in self._db.execute(
            "SELECT epoch, metric, value FROM epoch_metrics WHERE run_id = ? ORDER BY epoch", (run_id,)
        ):
            epochs.setdefault(r["epoch"], {"epoch": r["epoch"]})[r["metric"]] = r["value"]
        artifacts = {
            r["name"]: json.loads(r["value"])
            for r in self._db.execute("SELECT name, value FROM artifacts WHERE run_id = ? ORDER BY name", (run_id,))
        }
        return RunRecord(
            suite=row["suite"],
            run_id=run_id,
            key=row["key"],
            dataset=row["dataset"],
            model=row["model"],
            method=row["method"],
            seed=int(row["seed"]),
            status=row["status"],
            config=json.loads(row["config"]),
            final=final,
            epochs=[epochs[e] for e in sorted(epochs)],
            reliability=artifacts.get("reliability"),
            artifacts=artifacts,
            started=row["started"],
            ended=row["ended"],
            error=row["error"],
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _user_tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _writable(path: Path) -> bool:
    """Whether this process may write the store and create its WAL files next to it."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)


def _migration_refused(path: Path, version: int, reason: str) -> str:
    return (
        f"{str(path)!r} is a mixlab store of schema {version} and could not be migrated to schema {SCHEMA_VERSION} "
        f"({reason}); nothing in it was changed. Make the file and its folder writable and open it again "
        "(the migration, done in one transaction, only adds the predictions table), or choose another --store"
    )


def _check_existing(path: Path) -> int | None:
    """Refuse, without writing to it, a file that is not a mixlab store or has a newer schema.

    Returns the schema version of an existing store, ``None`` for a new (or empty) file.
    """
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return None
    if not path.is_file():
        raise StoreError(f"store path {str(path)!r} exists and is not a file")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = _user_tables(db)
        finally:
            db.close()
    except sqlite3.DatabaseError as error:
        raise StoreError(
            f"{str(path)!r} is not a mixlab results store (not an SQLite database: {error}); "
            "it was left untouched. Choose another file with --store"
        ) from None
    if app_id != APPLICATION_ID:
        if not tables:  # an empty SQLite file: the schema is created in it
            return None
        raise StoreError(
            f"{str(path)!r} is an SQLite database but not a mixlab results store (application_id {app_id:#x}, "
            f"tables: {', '.join(sorted(tables))}); it was left untouched. Choose another file with --store"
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{str(path)!r} was written by a newer mixlab (store schema {version}; this version reads up to "
            f"{SCHEMA_VERSION}); it was left untouched. Upgrade mixlab or choose another file with --store"
        )
    missing = sorted(set(_TABLES.get(version, _TABLES[SCHEMA_VERSION])) - tables)
    if version not in _TABLES or missing:
        raise StoreError(
            f"{str(path)!r} is a damaged mixlab store (schema {version}, missing tables: {', '.join(missing) or 'none'}; "
            f"expected schema {SCHEMA_VERSION}); it was left untouched. Choose another file with --store"
        )
    return int(version)
