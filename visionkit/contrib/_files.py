"""Writing output files whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

__all__ = ["replaced_on_success"]


@contextlib.contextmanager
def replaced_on_success(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary path next to ``path``; when the block succeeds it replaces ``path`` in one rename.

    A failed or interrupted write (a full disk, an exception, Ctrl-C) leaves an existing file at ``path`` as it was
    and no partial file behind. The temporary name keeps the extension, for writers that check it.

    Example:
        >>> import pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> with replaced_on_success(folder / "a.txt") as partial:
        ...     _ = pathlib.Path(partial).write_text("done")
        >>> sorted(p.name for p in folder.iterdir()), (folder / "a.txt").read_text()
        (['a.txt'], 'done')
    """
    target = os.path.abspath(path)
    folder, name = os.path.split(target)
    handle, partial = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=f".partial{os.path.splitext(name)[1]}")
    os.close(handle)
    try:
        yield partial
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)  # what open() would have given, not mkstemp's owner-only mode
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise
