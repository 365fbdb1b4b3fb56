"""MNIST-1D: generated locally, cached as .npz, and the global RNGs left as they were."""

from __future__ import annotations

import random

import mnist1d.data
import numpy as np
import pytest
import torch

from mixlab.data import load_dataset
from mixlab.data.mnist1d import cache_file_name, mnist1d_args


def _cache_files(folder):
    return sorted((folder / "mnist1d").glob("*.npz"))


def test_generates_shapes_and_caches_in_root(tmp_path):
    s = load_dataset("mnist1d", root=tmp_path, num_samples=200)
    assert s.train.x.shape == (160, 1, 40) and s.train.x.dtype == torch.float32
    assert s.test.x.shape == (40, 1, 40) and s.input_shape == (1, 40)
    assert s.train.y.dtype == torch.int64 and s.num_classes == 10
    assert set(s.train.y.tolist()) <= set(range(10))
    files = _cache_files(tmp_path)
    assert [f.name for f in files] == [cache_file_name(mnist1d_args(200, 42))]
    assert s.info["generated"] is True and s.info["cache"] == str(files[0])
    assert not list((tmp_path / "mnist1d").glob(".*part"))  # the atomic write left no temporary file


def test_matches_the_package_generator(tmp_path):
    s = load_dataset("mnist1d", root=tmp_path, num_samples=200, generation_seed=3)
    args = mnist1d.data.get_dataset_args()
    args.num_samples, args.seed = 200, 3
    ref = mnist1d.data.make_dataset(args)
    assert np.allclose(s.train.x[:, 0].numpy(), ref["x"], atol=1e-6)
    assert np.array_equal(s.test.y.numpy(), ref["y_test"])


def test_second_load_reads_the_cache(tmp_path, monkeypatch):
    first = load_dataset("mnist1d", root=tmp_path, num_samples=200)
    (cache,) = _cache_files(tmp_path)
    mtime = cache.stat().st_mtime_ns

    def must_not_run(args):
        raise AssertionError("regenerated although the cache exists")

    monkeypatch.setattr(mnist1d.data, "make_dataset", must_not_run)
    second = load_dataset("mnist1d", root=tmp_path, num_samples=200)
    assert second.info["generated"] is False and cache.stat().st_mtime_ns == mtime
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.test.y, second.test.y)


def test_global_rng_state_unchanged(tmp_path):
    np.random.seed(123)
    random.seed(456)
    np_before, py_before = np.random.get_state(), random.getstate()
    load_dataset("mnist1d", root=tmp_path, num_samples=200)
    np_after = np.random.get_state()
    assert np_after[0] == np_before[0] and np.array_equal(np_after[1], np_before[1]) and np_after[2:] == np_before[2:]
    assert random.getstate() == py_before


def test_cache_location_order(tmp_path, monkeypatch, isolated_data_env):
    load_dataset("mnist1d", num_samples=100)  # no root, no $MIXLAB_DATA: the user cache
    assert len(_cache_files(isolated_data_env / ".cache" / "mixlab" / "data")) == 1
    env = tmp_path / "env"
    monkeypatch.setenv("MIXLAB_DATA", str(env))
    load_dataset("mnist1d", num_samples=120)
    assert len(_cache_files(env)) == 1


def test_unwritable_root_falls_back(tmp_path, monkeypatch, isolated_data_env):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("x")  # a root that cannot hold a folder
    s = load_dataset("mnist1d", root=blocked, num_samples=100)
    assert s.info["cache"].startswith(str(isolated_data_env))


def test_different_settings_different_files(tmp_path):
    load_dataset("mnist1d", root=tmp_path, num_samples=100)
    load_dataset("mnist1d", root=tmp_path, num_samples=100, generation_seed=1)
    assert len(_cache_files(tmp_path)) == 2


def test_damaged_cache_is_regenerated(tmp_path):
    load_dataset("mnist1d", root=tmp_path, num_samples=100)
    (cache,) = _cache_files(tmp_path)
    cache.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="regenerating"):
        s = load_dataset("mnist1d", root=tmp_path, num_samples=100)
    assert s.info["generated"] is True and len(s.train) == 80
