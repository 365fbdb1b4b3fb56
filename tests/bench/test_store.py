"""The results store: schema, transactions, refusals that leave files untouched, reading back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mixlab.bench.store import SCHEMA_VERSION, ResultStore, StoreError


def _start(store: ResultStore, key: str = "d/m/mixup/seed0", **kw) -> int:
    store.save_suite("s", {"name": "s"})
    fields = {"dataset": "d", "model": "m", "method": "mixup", "seed": 0, "config": {"train": {"epochs": 2}}}
    return store.start_run("s", key, **{**fields, **kw})


def test_new_store_is_wal_with_schema(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "mixlab.db"
    with ResultStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"meta", "suites", "runs", "epoch_metrics", "final_metrics", "artifacts"} <= tables


def test_round_trip_of_a_finished_run(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "db") as store:
        run_id = _start(store)
        store.log_epoch(run_id, {"epoch": 1, "train_loss": 1.5, "lr": 0.1, "note": "not a number"})
        store.log_epoch(run_id, {"epoch": 2, "train_loss": 1.0, "test_acc": 0.5})
        store.finish_run(
            run_id, metrics={"top1": 0.5, "ece": 0.1}, wall_time_s=3.5, versions={"torch": "x"},
            device="cpu", artifacts={"reliability": {"count": [1, 2]}},
        )  # fmt: skip
    with ResultStore(tmp_path / "db") as store:  # reopening keeps everything
        (record,) = store.records("s")
    assert record.finished and record.method == "mixup" and record.config == {"train": {"epochs": 2}}
    assert record.final == {"top1": 0.5, "ece": 0.1, "wall_time_s": 3.5}
    assert record.epochs == [
        {"epoch": 1, "train_loss": 1.5, "lr": 0.1},
        {"epoch": 2, "train_loss": 1.0, "test_acc": 0.5},
    ]
    assert record.reliability == {"count": [1, 2]}


def test_redo_replaces_the_earlier_attempt(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "db") as store:
        first = _start(store)
        store.log_epoch(first, {"epoch": 1, "train_loss": 9.0})
        store.fail_run(first, "RuntimeError: boom")
        assert store.records("s")[0].error == "RuntimeError: boom"
        second = _start(store)
        store.log_epoch(second, {"epoch": 1, "train_loss": 1.0})
        (record,) = store.records("s")
        row = store.run_status("s", "d/m/mixup/seed0")
    assert second == first and row["attempts"] == 2 and row["error"] is None
    assert record.status == "running" and record.epochs == [{"epoch": 1, "train_loss": 1.0}]


def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "db") as store:
        run_id = _start(store)
        with pytest.raises(RuntimeError), store.transaction() as db:
            db.execute("INSERT INTO final_metrics VALUES (?, 'top1', 0.9)", (run_id,))
            raise RuntimeError("killed half-way")
        assert store.records("s")[0].final == {}


def test_not_a_database_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"my precious notes\n" * 100)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a mixlab results store"):
        ResultStore(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("notes")] == ["notes.db"]  # no -wal, -shm


def test_foreign_sqlite_database_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER)")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="invoices"):
        ResultStore(path)
    assert path.read_bytes() == before


def test_newer_schema_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "mixlab.db"
    ResultStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match=f"schema {SCHEMA_VERSION + 1}"):
        ResultStore(path)
    assert path.read_bytes() == before


def test_suite_names_latest_first(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "db") as store:
        store.save_suite("b", {})
        store.save_suite("a", {})
        assert store.suite_names() == ["a", "b"]
        store.save_suite("b", {"changed": True})
        assert store.suite_names() == ["b", "a"]


def test_a_damaged_mixlab_store_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "mixlab.db"
    ResultStore(path).close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE artifacts")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"damaged mixlab store.*missing tables: artifacts"):
        ResultStore(path)
    assert path.read_bytes() == before


def test_an_empty_sqlite_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    sqlite3.connect(path).execute("PRAGMA user_version=0").close()
    with ResultStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
