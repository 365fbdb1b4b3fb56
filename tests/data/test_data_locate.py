"""Where data is looked for, in which order, and what the error says when it is nowhere."""

from __future__ import annotations

import pytest
from data_fixtures import write_idx_dataset

import mixlab.data.locate as locate
from mixlab.data import DataNotFoundError, data_search_paths, dataset_info, find_data, list_datasets, load_dataset
from mixlab.errors import MixlabError, MixlabValueError, UnknownNameError


@pytest.fixture
def places(tmp_path, monkeypatch, isolated_data_env):
    """One folder per level of the search: root, $MIXLAB_DATA, the user cache, a system folder."""
    out = {
        "root": tmp_path / "root",
        "env": tmp_path / "env",
        "cache": isolated_data_env / ".cache" / "mixlab" / "data",
        "system": tmp_path / "sys",
    }
    monkeypatch.setenv("MIXLAB_DATA", str(out["env"]))
    monkeypatch.setattr(locate, "SYSTEM_DATA_DIRS", [out["system"]])
    return out


def test_search_paths_order(places):
    paths = data_search_paths("fashion_mnist", places["root"])
    bases = [places[k] for k in ("root", "env", "cache", "system")]
    expected = []
    for b in bases:
        expected += [b / "fashion_mnist", b / "fashion-mnist", b / "fashionmnist", b / "FashionMNIST" / "raw"]
        if b == places["root"]:  # only the explicit root may hold the files itself
            expected.append(b)
    assert paths == expected


@pytest.mark.parametrize("order", [("root", "env"), ("env", "cache"), ("cache", "system"), ("root", "system")])
def test_earlier_place_wins(places, order):
    first, later = order
    write_idx_dataset(places[later] / "mnist", seed=1)
    write_idx_dataset(places[first] / "mnist", seed=2)
    assert find_data("mnist", places["root"]) == places[first] / "mnist"
    assert load_dataset("mnist", root=places["root"]).info["source"] == str(places[first] / "mnist")


def test_each_level_is_found_alone(places):
    for level in ("system", "cache", "env", "root"):
        write_idx_dataset(places[level] / "fashion-mnist")
        assert find_data("fashion_mnist", places["root"]) == places[level] / "fashion-mnist"


def test_base_itself_and_torchvision_layout(places):
    write_idx_dataset(places["env"])
    with pytest.raises(DataNotFoundError):  # a shared base holding IDX files directly could be MNIST or Fashion-MNIST
        find_data("mnist")
    assert find_data("mnist", places["env"]) == places["env"]  # named explicitly as the root: accepted
    write_idx_dataset(places["cache"] / "MNIST" / "raw")
    assert find_data("mnist") == places["cache"] / "MNIST" / "raw"
    write_idx_dataset(places["env"] / "mnist")
    assert find_data("mnist") == places["env"] / "mnist"  # env comes before the cache


def test_incomplete_folder_is_skipped(places):
    write_idx_dataset(places["root"] / "mnist")
    (places["root"] / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    write_idx_dataset(places["system"] / "mnist")
    assert find_data("mnist", places["root"]) == places["system"] / "mnist"


def test_not_found_message_lists_every_place_and_hints(places):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("fashion_mnist", root=places["root"])
    err = info.value
    assert isinstance(err, FileNotFoundError) and isinstance(err, MixlabError)
    message = str(err)
    for p in data_search_paths("fashion_mnist", places["root"]):
        assert f". {p}\n" in message + "\n"
    assert err.searched == data_search_paths("fashion_mnist", places["root"])
    assert "apt-get install dataset-fashion-mnist" in message
    assert "mixlab data fetch fashion_mnist" in message
    assert "train-images-idx3-ubyte" in message


def test_not_found_without_apt_package(places):
    with pytest.raises(DataNotFoundError) as info:
        find_data("cifar10")
    assert "mixlab data fetch cifar10" in str(info.value) and "apt-get" not in str(info.value)


def test_unknown_dataset_lists_known():
    with pytest.raises(UnknownNameError) as info:
        load_dataset("fashion-mnist")
    for name in list_datasets():
        assert name in str(info.value)
    with pytest.raises(UnknownNameError):
        data_search_paths("nope")


def test_datasets_without_files():
    with pytest.raises(MixlabValueError, match="scikit-learn"):
        find_data("diabetes")
    assert data_search_paths("digits") == [] and data_search_paths("csv") == []


def test_dataset_info(places):
    missing = dataset_info("mnist", places["root"])
    assert missing["found"] is False and missing["searched"][0] == str(places["root"] / "mnist")
    assert "mixlab data fetch mnist" in missing["message"]
    write_idx_dataset(places["system"] / "mnist", n_train=20, n_test=10)
    found = dataset_info("mnist", places["root"], val_fraction=0.5, label_noise=0.5)
    assert found["found"] is True and found["path"] == str(places["system"] / "mnist")
    assert found["splits"] == {"train": 10, "val": 10, "test": 10}
    assert found["details"]["label_noise"]["num_flipped"] == 5 and "flipped" not in found["details"]["label_noise"]
    assert dataset_info("csv")["found"] is False
    assert dataset_info("mnist1d", places["root"], num_samples=100)["found"] is False
    import json

    json.dumps(found), json.dumps(dataset_info("digits"))
