"""Fetching: only when asked, atomic, checked, and clear when there is no network."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
import urllib.error
import urllib.request

import pytest
from data_fixtures import write_cifar, write_idx_dataset

import mixlab.data.registry as registry
from mixlab.data import fetch_dataset, find_data, load_dataset
from mixlab.data.registry import Download
from mixlab.errors import MixlabError, MixlabValueError

IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def _serve_mnist(tmp_path, monkeypatch, md5=None):
    """Local IDX files as the 'official' source of mnist (file:// URLs), with their MD5 as the published one."""
    source = tmp_path / "source"
    write_idx_dataset(source)
    downloads = tuple(Download(name, ((source / name).as_uri(),), md5 or _md5(source / name)) for name in IDX_FILES)
    spec = dataclasses.replace(registry.DATASETS["mnist"], downloads=downloads)
    monkeypatch.setitem(registry.DATASETS, "mnist", spec)
    return source


def test_fetch_from_file_url(tmp_path, monkeypatch):
    source = _serve_mnist(tmp_path, monkeypatch)
    dest = fetch_dataset("mnist", tmp_path / "root")
    assert dest == tmp_path / "root" / "mnist"
    assert sorted(p.name for p in dest.iterdir()) == sorted(IDX_FILES)  # no temporary files left
    for name in IDX_FILES:
        assert (dest / name).read_bytes() == (source / name).read_bytes()
    assert find_data("mnist", tmp_path / "root") == dest
    assert len(load_dataset("mnist", root=tmp_path / "root").train) == 30


def test_fetch_default_destination_and_skip(tmp_path, monkeypatch, isolated_data_env):
    _serve_mnist(tmp_path, monkeypatch)
    dest = fetch_dataset("mnist")
    assert dest == isolated_data_env / ".cache" / "mixlab" / "data" / "mnist"

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert fetch_dataset("mnist") == dest  # already there: nothing downloaded
    monkeypatch.setenv("MIXLAB_DATA", str(tmp_path / "env"))
    with pytest.raises(MixlabError):
        fetch_dataset("mnist")  # $MIXLAB_DATA is now the destination, and it is empty


def test_offline_error_names_url_and_leaves_nothing(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(MixlabError) as info:
        fetch_dataset("fashion_mnist", tmp_path / "root")
    message = str(info.value)
    for url in registry.DATASETS["fashion_mnist"].downloads[0].urls:
        assert url in message
    assert "no network access" in message
    assert list((tmp_path / "root" / "fashion_mnist").iterdir()) == []


def test_interrupted_download_leaves_no_partial_file(tmp_path, monkeypatch):
    _serve_mnist(tmp_path, monkeypatch)
    real = urllib.request.urlopen

    class Broken(io.BytesIO):
        def read(self, n=-1):
            if self.tell() > 10:
                raise OSError("connection reset")
            return super().read(n if n > 0 else 20)

        def __enter__(self):
            return self

    def flaky(url, *args, **kwargs):
        if "t10k-images" in url:
            return Broken(b"x" * 100)
        return real(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", flaky)
    with pytest.raises(MixlabError, match="connection reset"):
        fetch_dataset("mnist", tmp_path / "root")
    left = sorted(p.name for p in (tmp_path / "root" / "mnist").iterdir())
    assert left == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    _serve_mnist(tmp_path, monkeypatch, md5="0" * 32)
    with pytest.raises(MixlabError, match="does not match the published") as info:
        fetch_dataset("mnist", tmp_path / "root")
    assert "file://" in str(info.value)
    assert list((tmp_path / "root" / "mnist").iterdir()) == []


def test_urls_override(tmp_path, monkeypatch):
    source = _serve_mnist(tmp_path, monkeypatch)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in IDX_FILES:
        (mirror / name).write_bytes((source / name).read_bytes())
    (source / IDX_FILES[0]).unlink()  # the default source is now broken; the mirror still serves it
    dest = fetch_dataset("mnist", tmp_path / "a", urls=[mirror.as_uri()])
    assert (dest / IDX_FILES[0]).read_bytes() == (mirror / IDX_FILES[0]).read_bytes()
    dest = fetch_dataset("mnist", tmp_path / "b", urls={IDX_FILES[0]: (mirror / IDX_FILES[0]).as_uri()})
    assert find_data("mnist", tmp_path / "b") == dest
    with pytest.raises(MixlabValueError, match="does not have"):
        fetch_dataset("mnist", tmp_path / "c", urls={"other.gz": "file:///x"})


def test_archive_is_unpacked(tmp_path, monkeypatch):
    batches = tmp_path / "build" / "cifar-10-batches-py"
    write_cifar(batches, n=2)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(batches, arcname="cifar-10-batches-py")
    download = Download(archive.name, (archive.as_uri(),), _md5(archive), archive.stat().st_size, extract=True)
    monkeypatch.setitem(
        registry.DATASETS, "cifar10", dataclasses.replace(registry.DATASETS["cifar10"], downloads=(download,))
    )
    dest = fetch_dataset("cifar10", tmp_path / "root")
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-batches-py"]  # archive removed, no staging left
    assert len(load_dataset("cifar10", root=tmp_path / "root").train) == 10


def test_archive_with_unsafe_member_is_refused(tmp_path, monkeypatch):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"boom"
        member = tarfile.TarInfo("../escape.txt")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    download = Download(archive.name, (archive.as_uri(),), _md5(archive), extract=True)
    monkeypatch.setitem(
        registry.DATASETS, "cifar10", dataclasses.replace(registry.DATASETS["cifar10"], downloads=(download,))
    )
    with pytest.raises(MixlabValueError, match="refusing to unpack"):
        fetch_dataset("cifar10", tmp_path / "root")
    assert not (tmp_path / "root" / "escape.txt").exists()


@pytest.mark.parametrize(
    "name, reason",
    [
        ("digits", "scikit-learn"),
        ("diabetes", "scikit-learn"),
        ("mnist1d", "generated locally"),
        ("csv", "your own files"),
        ("imagefolder", "your own files"),
    ],
)
def test_not_fetchable(name, reason):
    with pytest.raises(MixlabValueError, match=f"cannot be fetched.*{reason}"):
        fetch_dataset(name)


def test_load_never_downloads(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("load_dataset must not download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(FileNotFoundError):
        load_dataset("mnist", root=tmp_path)
