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


# ------------------------------------------------------------------ per-sample predictions and schema 2


def _predictions(seed: int = 0):
    import torch

    from mixlab.evaluate.predictions import classification_predictions

    g = torch.Generator().manual_seed(seed)
    return classification_predictions(torch.randn(300, 10, generator=g), torch.randint(0, 10, (300,), generator=g))


def test_predictions_round_trip_and_are_dropped_by_a_redo(tmp_path: Path) -> None:
    predictions = _predictions()
    with ResultStore(tmp_path / "db") as store:
        run_id = _start(store)
        store.finish_run(run_id, metrics={"top1": 0.1}, wall_time_s=1.0, predictions=predictions)
        (record,) = store.records("s", with_predictions=True)
        assert store.records("s")[0].predictions is None  # only read when asked for
        _start(store)  # a redo
        assert store.predictions(run_id) is None
    for name, column in predictions.columns.items():
        assert (record.predictions.columns[name] == column).all(), name


def _v1_store(path: Path) -> None:
    """A store as schema 1 wrote it (no predictions table), holding one finished run."""
    from mixlab.bench import store as store_module

    db = sqlite3.connect(path)
    for statement in filter(str.strip, store_module._SCHEMA.replace(store_module._PREDICTIONS_TABLE, "").split(";")):
        db.execute(statement)
    db.execute(f"PRAGMA application_id={store_module.APPLICATION_ID}")
    db.execute("PRAGMA user_version=1")
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.execute("INSERT INTO suites VALUES ('s', '{}', 't', 't')")
    db.execute(
        "INSERT INTO runs (suite, key, dataset, model, method, seed, config, status, wall_time_s) "
        "VALUES ('s', 'd/m/erm/seed0', 'd', 'm', 'erm', 0, '{}', 'finished', 2.0)"
    )
    db.execute("INSERT INTO final_metrics VALUES (1, 'top1', 0.75)")
    db.commit()
    db.close()


def test_a_schema_1_store_is_migrated_in_place_keeping_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _v1_store(path)
    with ResultStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION == 2
        (record,) = store.records("s", with_predictions=True)
        assert record.final["top1"] == 0.75 and record.finished and record.predictions is None
        run_id = store.start_run("s", "d/m/mixup/seed0", dataset="d", model="m", method="mixup", seed=0, config={})
        store.finish_run(run_id, metrics={"top1": 0.5}, wall_time_s=1.0, predictions=_predictions())
        assert store.predictions(run_id) is not None
    assert sqlite3.connect(path).execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"


def test_a_schema_1_store_that_cannot_be_written_is_refused_unchanged(tmp_path: Path) -> None:
    """As an ordinary user meets it: a store file (and its folder) they may read but not write."""
    import os
    import shutil
    import tempfile

    if os.geteuid() != 0 or not hasattr(os, "fork"):
        pytest.skip("needs root (to drop privileges) and fork")
    top = Path(tempfile.mkdtemp(prefix="mixlab-store-"))  # pytest's tmp_path is closed to other users
    request_cleanup = shutil.rmtree
    folder = top / "shared"
    folder.mkdir()
    path = folder / "old.db"
    _v1_store(path)
    before = path.read_bytes()
    for item, mode in ((top, 0o755), (folder, 0o755), (path, 0o644)):
        os.chmod(item, mode)
    message = top / "message.txt"
    message.touch()
    os.chmod(message, 0o666)
    pid = os.fork()
    if pid == 0:  # the child drops to "nobody" (modules are already imported) and tries to open the store
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            ResultStore(path)
        except StoreError as error:
            message.write_text(str(error))
            code = 0
        except BaseException as error:
            message.write_text(f"unexpected {type(error).__name__}: {error}")
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    text, after = message.read_text(), path.read_bytes()
    request_cleanup(top)
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "could not be migrated" in text and "nothing in it was changed" in text and "writable" in text
    assert after == before


def test_a_failed_migration_rolls_back_entirely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mixlab.bench import store as store_module

    path = tmp_path / "old.db"
    _v1_store(path)
    monkeypatch.setitem(store_module._MIGRATIONS, 1, store_module._PREDICTIONS_TABLE + "; CREATE TABLE runs (x)")
    with pytest.raises(StoreError, match="could not be migrated"):
        ResultStore(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "predictions" not in {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert db.execute("SELECT value FROM final_metrics").fetchone()[0] == 0.75
