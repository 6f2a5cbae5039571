"""Writing files so that a killed writer leaves the previous file intact."""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def replaced_atomically(path, suffix=""):
    """Yields a temporary path beside `path` that replaces `path` on success.

    The caller writes the whole file to the temporary path; when the block
    ends without an error the file is flushed to disk and renamed over
    `path` in one `os.replace`, so a reader (or a process started after a
    crash) sees either the previous file or the new one, never a part. On
    an error the temporary file is removed and `path` is left as it was; a
    process killed outright (SIGKILL, power loss) can leave the temporary
    file behind, named `.<name>.<random>.partial<suffix>`, never a broken
    `path`.

    Args:
        path: the file to write.
        suffix: the temporary file's ending, for writers that require one
            (Keras' `.keras`).

    Yields:
        str: the temporary path to write to (it exists, empty).

    Example:

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "notes.txt")
    >>> with replaced_atomically(path) as temporary:
    ...     with open(temporary, "w") as f:
    ...         _ = f.write("hello")
    >>> open(path).read()
    'hello'
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(
        dir=directory,
        prefix=f".{os.path.basename(path)}.",
        suffix=".partial" + suffix,
    )
    os.close(handle)
    try:
        yield temporary
        _flush_to_disk(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    _flush_to_disk(directory)  # makes the rename itself durable


def _flush_to_disk(path):
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) * os.path.isdir(path)
    try:
        handle = os.open(path, flags)
    except OSError:  # directories cannot be opened on some platforms
        return
    try:
        os.fsync(handle)
    except OSError:  # e.g. file systems without fsync for directories
        pass
    finally:
        os.close(handle)
