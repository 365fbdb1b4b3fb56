"""Download a dataset from its official source, only when asked (``mixlab data fetch NAME``).

Each file is streamed into a temporary file next to its destination, checked (size, MD5 when
known) and only then renamed into place, so an interrupted or failed download leaves nothing
that could later pass for data. Archives are unpacked the same way: into a temporary folder,
then moved.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from mixlab.data.locate import ENV_VAR, atomic_output, user_cache_dir
from mixlab.data.registry import DatasetSpec, Download, get_spec
from mixlab.errors import MixlabError, MixlabTypeError, MixlabValueError

CHUNK = 1 << 20
TIMEOUT_S = 60

_NOT_FETCHABLE = {
    "bundled": "it is bundled with scikit-learn; there is nothing to download",
    "generated": "it is generated locally on first load (and cached); there is nothing to download",
    "path": "it reads your own files (give option path=...); there is nothing to download",
}


def fetch_destination(name: str, root: str | os.PathLike | None = None) -> Path:
    """The folder ``fetch_dataset`` writes to: ``<root or $MIXLAB_DATA or ~/.cache/mixlab/data>/<name>``.

    Example:
        >>> str(fetch_destination("mnist", "/data"))
        '/data/mnist'
    """
    if root is not None:
        base = Path(root).expanduser()
    elif os.environ.get(ENV_VAR):
        base = Path(os.environ[ENV_VAR]).expanduser()
    else:
        base = user_cache_dir()
    return base / name


def fetch_dataset(
    name: str, root: str | os.PathLike | None = None, *, urls: Mapping[str, str] | Sequence[str] | None = None
) -> Path:
    """Download dataset ``name`` into :func:`fetch_destination` and return that folder.

    Args:
        name: a registry name with official downloads (``fashion_mnist``, ``mnist``, ``cifar10``, ``cifar100``).
        root: the base folder (default ``$MIXLAB_DATA``, else ``~/.cache/mixlab/data``).
        urls: other sources: a mapping ``{file name: URL}``, or a list of base URLs (mirrors) to which each
            file name is appended. Known MD5 sums are checked whatever the source.

    Files already present with the right checksum are not downloaded again. Without network access
    the error names the URL and says so. Datasets with nothing to download raise saying why.

    Example:
        >>> try:
        ...     fetch_dataset("digits")
        ... except MixlabValueError as err:
        ...     print("scikit-learn" in str(err))
        True
    """
    spec = get_spec(name)
    if not spec.downloads:
        raise MixlabValueError(
            f"dataset {name!r} cannot be fetched: {_NOT_FETCHABLE.get(spec.kind, 'no source known')}"
        )
    sources = _sources(spec, urls)
    dest = fetch_destination(name, root)
    if spec.has_files is not None and spec.has_files(dest):
        return dest
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MixlabError(f"cannot create {dest} to fetch {name!r} into ({err}); pass another root") from err
    for item in spec.downloads:
        path = dest / item.filename
        if not (path.is_file() and _matches(path, item)):
            _download_any(sources[item.filename], path, item)
        if item.extract:
            _extract(path, dest)
            path.unlink()  # the unpacked batches are what is read; the archive would only double the disk use
    if spec.has_files is not None and not spec.has_files(dest):
        raise MixlabValueError(f"fetched {name!r} into {dest} but it does not hold {spec.needs}")
    return dest


def _sources(spec: DatasetSpec, urls: Mapping[str, str] | Sequence[str] | None) -> dict[str, tuple[str, ...]]:
    names = [d.filename for d in spec.downloads]
    if urls is None:
        return {d.filename: d.urls for d in spec.downloads}
    if isinstance(urls, Mapping):
        unknown = sorted(set(urls) - set(names))
        if unknown:
            raise MixlabValueError(f"urls names files {unknown} that {spec.name!r} does not have; its files: {names}")
        return {d.filename: (urls[d.filename],) if d.filename in urls else d.urls for d in spec.downloads}
    if isinstance(urls, str) or not all(isinstance(u, str) for u in urls):
        raise MixlabTypeError(f"urls must be a mapping of file name to URL, or a list of base URLs; got {urls!r}")
    return {n: tuple(base.rstrip("/") + "/" + n for base in urls) for n in names}


def md5sum(path: Path) -> str:
    """The MD5 hex digest of a file (an integrity check against the published sums, not security).

    Example:
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = Path(d, "f").write_bytes(b"abc")
        ...     md5sum(Path(d, "f"))
        '900150983cd24fb0d6963f7d28e17f72'
    """
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _matches(path: Path, item: Download) -> bool:
    if item.size is not None and path.stat().st_size != item.size:
        return False
    return item.md5 is None or md5sum(path) == item.md5


def _download_any(urls: tuple[str, ...], path: Path, item: Download) -> None:
    failures = []
    for url in urls:
        try:
            _download(url, path, item)
            return
        except _SourceError as err:
            failures.append(str(err))
    if len(failures) == 1:
        raise MixlabError(failures[0])
    raise MixlabError(f"could not download {item.filename} from any source:\n  - " + "\n  - ".join(failures))


class _SourceError(Exception):
    """One URL failed; the next one may work."""


def _download(url: str, path: Path, item: Download) -> None:
    try:
        with atomic_output(path) as tmp:
            digest, size = _stream(url, tmp)
            if item.size is not None and size != item.size:
                raise _SourceError(f"{url}: got {size} bytes, expected {item.size}; the file was not kept")
            if item.md5 is not None and digest != item.md5:
                raise _SourceError(
                    f"{url}: MD5 {digest} does not match the published {item.md5}; the file was not kept"
                )
    except urllib.error.HTTPError as err:
        raise _SourceError(f"{url}: the server answered HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        raise _SourceError(
            f"could not download {url}: {err.reason}. This machine seems to have no network access (or the host is "
            f"unreachable); download the file elsewhere and copy it to {path}"
        ) from err
    except (OSError, ValueError) as err:
        raise _SourceError(f"could not download {url}: {type(err).__name__}: {err}") from err


def _stream(url: str, tmp: Path) -> tuple[str, int]:
    """Copy ``url`` into ``tmp``; return its MD5 and size; a short read raises."""
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    # urllib.request.urlopen is looked up at call time, so tests can stand in for the network.
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, tmp.open("wb") as out:
        expected = response.headers.get("Content-Length") if hasattr(response, "headers") else None
        for chunk in iter(lambda: response.read(CHUNK), b""):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    if expected is not None and expected.isdigit() and int(expected) != size:
        raise _SourceError(f"{url}: connection closed after {size} of {expected} bytes; the file was not kept")
    return digest.hexdigest(), size


def _extract(archive: Path, dest: Path) -> None:
    """Unpack a tar archive into ``dest``: into a temporary folder first, then move each top entry."""
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = _safe_members(tar, archive)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(staging, members=members, filter="data")
                else:  # Python without extraction filters; members were checked above
                    tar.extractall(staging, members=members)
        except (tarfile.TarError, EOFError, OSError) as err:
            raise MixlabValueError(f"{archive}: cannot unpack ({type(err).__name__}: {err})") from err
        for entry in staging.iterdir():
            target = dest / entry.name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(entry, target)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)


def _safe_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for m in members:
        parts = Path(m.name).parts
        if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
            raise MixlabValueError(f"{archive}: refusing to unpack {m.name!r} (only plain files and folders inside)")
    return members
