"""The suite runner: records, skips what is finished, records failures and goes on, parallel workers, kill-resume."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from bench_fixtures import tiny_suite

from mixlab.bench import runner
from mixlab.bench.runner import run_suite
from mixlab.bench.store import ResultStore
from mixlab.bench.suite import SuiteError, load_suite, plan_suite

METRICS = {"top1", "nll", "ece", "brier", "ece_ts", "fgsm_acc", "noise_acc", "images_per_s", "wall_time_s"}


def _plan(path: Path, **kw):
    return plan_suite(load_suite(path), **kw)


def test_runs_are_recorded_then_skipped(tmp_path: Path) -> None:
    path = tiny_suite(tmp_path, methods=[{"name": "erm"}, {"name": "mixup", "mix": {"method": "mixup"}}])
    with ResultStore(tmp_path / "db") as store:
        outcome = run_suite(_plan(path), store, output=tmp_path / "runs")
        assert sorted(outcome.finished) == ["fashion_mnist/cnn_small/erm/seed0", "fashion_mnist/cnn_small/mixup/seed0"]
        records = store.records("tiny")
        again = run_suite(_plan(path), store, output=tmp_path / "runs")
        assert again.finished == [] and len(again.skipped) == 2
        assert [r.ended for r in store.records("tiny")] == [r.ended for r in records]
    for record in records:
        assert record.finished and set(record.final) >= METRICS
        assert 0.0 <= record.final["top1"] <= 1.0 and record.final["wall_time_s"] > 0
        assert [e["epoch"] for e in record.epochs] == [1, 2]
        assert sum(record.reliability["count"]) == 200  # the fixture's test split
        assert record.config["mix"]["method"] == ("none" if record.method == "erm" else "mixup")
        assert record.config["data"]["val_fraction"] == 0.2  # the full resolved config is stored
        assert (tmp_path / "runs" / "tiny" / record.key / "checkpoint.pt").is_file()
    # the engine's own test accuracy and the evaluation's top-1 are the same number
    erm = records[0]
    assert erm.final["top1"] == pytest.approx(erm.epochs[-1]["test_acc"], abs=1e-6)
    # every finished run keeps its per-sample test predictions, which give back its metrics
    with ResultStore(tmp_path / "db") as store:
        for record in store.records("tiny", with_predictions=True):
            assert len(record.predictions) == 200
            for name in ("top1", "nll", "brier", "ece"):
                assert record.predictions.metric(name) == pytest.approx(record.final[name], abs=1e-5), name


def test_a_regression_suite_is_evaluated_and_keeps_its_errors(tmp_path: Path) -> None:
    suite = {
        "name": "reg",
        "base": {
            "optim": {"name": "adamw", "lr": 1e-3},
            "train": {"epochs": 2, "batch_size": 32, "progress": "off", "threads": 1},
        },
        "datasets": [{"name": "diabetes"}],
        "models": ["mlp"],
        "methods": [
            {"name": "erm", "mix": {"loss": "mse"}},
            {"name": "c_mixup", "mix": {"method": "mixup", "options": {"pairing": "c_mixup", "sigma": 1.0}, "loss": "mse"}},
        ],
        "seeds": [0],
    }
    path = tmp_path / "reg.yaml"
    path.write_text(yaml.safe_dump(suite))
    with ResultStore(tmp_path / "db") as store:
        outcome = run_suite(_plan(path), store, output=tmp_path / "runs")
        assert outcome.failed == [] and len(outcome.finished) == 2
        for record in store.records("reg", with_predictions=True):
            assert {"rmse", "mae", "mse", "num_test"} <= set(record.final) and "top1" not in record.final
            assert record.predictions.task == "regression" and len(record.predictions) == record.final["num_test"]
            # the evaluation's RMSE is the engine's own test RMSE, in the targets' units
            assert record.final["rmse"] == pytest.approx(record.epochs[-1]["test_rmse"], rel=1e-4)


def test_a_failed_run_is_recorded_and_the_suite_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tiny_suite(tmp_path, methods=[{"name": "erm"}, {"name": "mixup", "mix": {"method": "mixup"}}], epochs=1)
    real_train = runner.train

    def flaky_train(config, *args, **kwargs):
        if config.mix.method == "mixup":
            raise RuntimeError("out of memory (simulated)")
        return real_train(config, *args, **kwargs)

    monkeypatch.setattr(runner, "train", flaky_train)
    with ResultStore(tmp_path / "db") as store:
        outcome = run_suite(_plan(path), store, output=tmp_path / "runs")
        assert outcome.failed == ["fashion_mnist/cnn_small/mixup/seed0"] and len(outcome.finished) == 1
        failed = store.records("tiny")[1]
        assert failed.status == "failed" and "RuntimeError: out of memory (simulated)" in failed.error
        monkeypatch.setattr(runner, "train", real_train)
        retry = run_suite(_plan(path), store, output=tmp_path / "runs")  # a re-run retries failed runs only
        assert retry.finished == ["fashion_mnist/cnn_small/mixup/seed0"] and len(retry.skipped) == 1
        row = store.run_status("tiny", "fashion_mnist/cnn_small/mixup/seed0")
        assert row["status"] == "finished" and row["attempts"] == 2 and row["error"] is None


def test_a_changed_config_is_redone(tmp_path: Path) -> None:
    path = tiny_suite(tmp_path, methods=[{"name": "erm"}], epochs=1)
    with ResultStore(tmp_path / "db") as store:
        run_suite(_plan(path), store, output=tmp_path / "runs")
        again = run_suite(_plan(path, overrides=["optim.lr=0.01"]), store, output=tmp_path / "runs")
        assert len(again.finished) == 1 and again.skipped == []
        assert store.records("tiny")[0].config["optim"]["lr"] == 0.01


def test_parallel_workers(tmp_path: Path) -> None:
    path = tiny_suite(tmp_path, methods=[{"name": "erm"}, {"name": "cutmix", "mix": {"method": "cutmix"}}])
    with ResultStore(tmp_path / "db") as store:
        outcome = run_suite(_plan(path), store, output=tmp_path / "runs", workers=2)
        records = store.records("tiny")
        pids = {store.run_status("tiny", r.key)["pid"] for r in records}
    assert sorted(outcome.finished) == sorted(r.key for r in records) and outcome.failed == []
    assert all(r.finished and len(r.epochs) == 2 and set(r.final) >= METRICS for r in records)
    assert os.getpid() not in pids  # trained in worker processes


def test_workers_must_be_positive(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "db") as store, pytest.raises(SuiteError, match="at least 1; got 0"):
        run_suite(_plan(tiny_suite(tmp_path)), store, workers=0)


def _bench(tmp_path: Path, suite: Path) -> list[str]:
    return [
        sys.executable, "-m", "mixlab", "bench", "--suite", str(suite), "--store", str(tmp_path / "mixlab.db"),
        "--output", str(tmp_path / "runs"), "--report", str(tmp_path / "report"),
    ]  # fmt: skip


def _rows(db_path: Path) -> list[tuple]:
    if not db_path.is_file():
        return []
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(
            "SELECT key, status, (SELECT COUNT(*) FROM epoch_metrics e WHERE e.run_id = runs.id AND metric = 'train_loss')"
            " FROM runs ORDER BY id"
        ).fetchall()
    except sqlite3.OperationalError:  # the schema is being created
        return []
    finally:
        db.close()


def test_sigkill_mid_suite_then_resume(tmp_path: Path) -> None:
    """Kill the suite while its second run trains; the rerun keeps run 1, redoes run 2 and counts nothing twice."""
    suite = tiny_suite(tmp_path, epochs=4, n_train=2048)
    env = {**os.environ, "CI": "true"}
    proc = subprocess.Popen(_bench(tmp_path, suite), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    rows: list[tuple] = []
    while time.monotonic() < deadline and proc.poll() is None:
        rows = _rows(tmp_path / "mixlab.db")
        if len(rows) >= 2 and rows[0][1] == "finished" and rows[1][1] == "running" and rows[1][2] >= 1:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the suite ended before it could be killed: {proc.stdout.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with ResultStore(tmp_path / "mixlab.db") as store:
        killed = {r.key: r for r in store.records("tiny")}
    first, second = list(killed.values())[:2]
    assert first.finished and second.status == "running" and 1 <= len(second.epochs) < 4

    done = subprocess.run(_bench(tmp_path, suite), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 run(s) finished, 1 skipped" in done.stdout
    with ResultStore(tmp_path / "mixlab.db") as store:
        after = store.records("tiny")
        attempts = {key: store.run_status("tiny", key)["attempts"] for key in killed}
    keys = [f"fashion_mnist/cnn_small/{m}/seed0" for m in ("erm", "mixup", "cutmix")]
    assert [r.key for r in after] == keys and list(killed) == keys[:2]  # each run once, none counted twice
    assert all(r.finished and [e["epoch"] for e in r.epochs] == [1, 2, 3, 4] for r in after)
    assert after[0].ended == first.ended and after[0].final == first.final  # the finished run was kept
    assert attempts[second.key] == 2 and attempts[first.key] == 1  # the interrupted one was redone
    # the report was written at the end, and the leaderboard printed
    assert (tmp_path / "report" / "leaderboard.md").is_file() and (tmp_path / "report" / "index.html").is_file()
    assert "### fashion_mnist · cnn_small" in done.stdout and "| 1 |" in done.stdout


def test_bench_cli_refuses_a_foreign_store_before_training(tmp_path: Path) -> None:
    store = tmp_path / "mixlab.db"
    store.write_text("not a database")
    result = subprocess.run(_bench(tmp_path, tiny_suite(tmp_path)), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "not a mixlab results store" in result.stderr
    assert store.read_text() == "not a database" and not (tmp_path / "runs").exists()


def test_bench_cli_refuses_an_unknown_method_before_training(tmp_path: Path) -> None:
    path = tiny_suite(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["methods"].append({"name": "bad", "mix": {"method": "superduper_mix"}})
    path.write_text(yaml.safe_dump(raw))
    result = subprocess.run(_bench(tmp_path, path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown mixer 'superduper_mix'; known:" in result.stderr
    assert not (tmp_path / "mixlab.db").exists() and not (tmp_path / "runs").exists()


def test_report_cli_without_finished_runs_writes_nothing(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "mixlab", "report", "--store", str(tmp_path / "mixlab.db"), "--output", str(tmp_path / "report")]
    missing = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no results store" in missing.stderr
    with ResultStore(tmp_path / "mixlab.db") as store:
        store.save_suite("tiny", {})
        run_id = store.start_run("tiny", "k", dataset="d", model="m", method="erm", seed=0, config={})
        store.fail_run(run_id, "boom")
    empty = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert empty.returncode == 2 and "no finished runs" in empty.stderr
    assert not (tmp_path / "report").exists()


def test_a_second_launch_on_the_same_store_is_refused(tmp_path: Path) -> None:
    fcntl = pytest.importorskip("fcntl")
    with ResultStore(tmp_path / "db") as store, open(f"{store.path}.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running `mixlab bench` holds it
        with pytest.raises(SuiteError, match="another `mixlab bench` is using the store"):
            run_suite(_plan(tiny_suite(tmp_path)), store, output=tmp_path / "runs")
        assert store.records() == [] and not (tmp_path / "runs").exists()
