"""Where data lives: the search order, the error that lists it, and atomic file writes.

Data is looked for, in order, under
1. the ``root`` given by the caller (``--data-root`` or the config),
2. ``$MIXLAB_DATA``,
3. ``~/.cache/mixlab/data`` (the user cache, where ``mixlab data fetch`` writes),
4. the system locations in :data:`SYSTEM_DATA_DIRS` (Debian's ``dataset-*`` packages install to
   ``/usr/share/datasets/<name>``).
Under each base ``B`` the candidates are ``B/<name>`` and ``B/<alias>`` for each alias; the
explicit root may also hold the files itself.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from mixlab.errors import MixlabError

ENV_VAR = "MIXLAB_DATA"
# A module-level list so tests and packagers can change it.
SYSTEM_DATA_DIRS: list[Path] = [Path("/usr/share/datasets")]


class DataNotFoundError(MixlabError, FileNotFoundError):
    """A dataset's files are in none of the places searched; the message lists each place and how to get the data.

    Example:
        >>> err = DataNotFoundError("toy", [Path("/nowhere/toy")], ["mixlab data fetch toy"])
        >>> isinstance(err, FileNotFoundError), "/nowhere/toy" in str(err)
        (True, True)
    """

    def __init__(self, name: str, searched: Sequence[Path], hints: Sequence[str], needs: str = ""):
        self.dataset = name
        self.searched = [Path(p) for p in searched]
        self.hints = list(hints)
        lines = [f"dataset {name!r} not found. Looked in, in order:"]
        lines += [f"  {i}. {p}" for i, p in enumerate(self.searched, start=1)]
        if needs:
            lines.append(f"Each place must hold {needs}.")
        if self.hints:
            lines.append("To get it:")
            lines += [f"  - {h}" for h in self.hints]
        super().__init__("\n".join(lines))

    def __str__(self) -> str:
        return str(self.args[0])


def user_cache_dir() -> Path:
    """``~/.cache/mixlab/data`` (``Path.home()`` is read at each call, so ``$HOME`` can change).

    Example:
        >>> user_cache_dir().parts[-3:]
        ('.cache', 'mixlab', 'data')
    """
    return Path.home() / ".cache" / "mixlab" / "data"


def search_bases(root: str | os.PathLike | None = None) -> list[Path]:
    """The base folders searched, in order: ``root``, ``$MIXLAB_DATA``, the user cache, the system folders.

    Example:
        >>> search_bases("/data")[0]
        PosixPath('/data')
    """
    bases = [Path(root).expanduser()] if root is not None else []
    env = os.environ.get(ENV_VAR)
    if env:
        bases.append(Path(env).expanduser())
    bases.append(user_cache_dir())
    bases.extend(Path(p) for p in SYSTEM_DATA_DIRS)
    return _unique(bases)


def writable_bases(root: str | os.PathLike | None = None) -> list[Path]:
    """Where mixlab may write data, in order of preference: ``root``, ``$MIXLAB_DATA``, the user cache."""
    bases = [Path(root).expanduser()] if root is not None else []
    env = os.environ.get(ENV_VAR)
    if env:
        bases.append(Path(env).expanduser())
    bases.append(user_cache_dir())
    return _unique(bases)


def candidate_dirs(names: Sequence[str], root: str | os.PathLike | None = None) -> list[Path]:
    """``B/<name>`` for each of ``names`` (the name, then its aliases) for each base ``B``; ``root`` itself too.

    Only the explicitly given ``root`` may hold the files directly: in a shared
    base (``$MIXLAB_DATA``, the cache, the system folders) MNIST's and
    Fashion-MNIST's identical file names would otherwise be taken for each other.

    Example:
        >>> [str(p) for p in candidate_dirs(["toy"], "/d")][:2]
        ['/d/toy', '/d']
    """
    out = []
    explicit = Path(root).expanduser() if root is not None else None
    for base in search_bases(root):
        out.extend(base / n for n in names)
        if base == explicit:
            out.append(base)
    return _unique(out)


def first_writable(dirs: Sequence[Path]) -> Path | None:
    """The first of ``dirs`` that exists or can be created and that this process may write to."""
    for d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(d, os.W_OK | os.X_OK):
            return d
    return None


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, on error remove it.

    Readers never see a half-written file, and an interrupted write leaves nothing behind.

    Example:
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with atomic_output(Path(d, "f.txt")) as tmp:
        ...         _ = tmp.write_text("done")
        ...     Path(d, "f.txt").read_text(), len(os.listdir(d))
        ('done', 1)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs are ordinary, readable files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _unique(paths: list[Path]) -> list[Path]:
    seen: set[Path] = set()
    out = []
    for p in paths:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out
