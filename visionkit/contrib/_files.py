"""Writing output files whole or not at all."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator

__all__ = ["replaced_on_success"]


def _umask() -> int:
    """The process umask, read without changing it where Linux reports it (``os.umask`` sets it while reading)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def replaced_on_success(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary path next to ``path``; when the block succeeds it replaces ``path`` in one rename.

    A failed or interrupted write (a full disk, an exception, Ctrl-C) leaves an existing file at ``path`` as it was
    and no partial file behind. The temporary name keeps the extension, for writers that check it. A symbolic link
    is followed (the file it points to is replaced, the link stays), the new file gets the old one's permissions
    (or those ``open`` would give a new file), and a path that is not a regular file, such as ``/dev/null``, is
    written directly.

    Example:
        >>> import pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> with replaced_on_success(folder / "a.txt") as partial:
        ...     _ = pathlib.Path(partial).write_text("done")
        >>> sorted(p.name for p in folder.iterdir()), (folder / "a.txt").read_text()
        (['a.txt'], 'done')
    """
    target = os.path.realpath(path)
    if os.path.exists(target) and not os.path.isfile(target):  # a device or a pipe: nothing to replace
        yield target
        return
    mode = stat.S_IMODE(os.stat(target).st_mode) if os.path.exists(target) else 0o666 & ~_umask()
    folder, name = os.path.split(target)
    handle, partial = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=f".partial{os.path.splitext(name)[1]}")
    os.close(handle)
    try:
        yield partial
        os.chmod(partial, mode)  # not mkstemp's owner-only mode
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise
