"""Writing files so that a failure never leaves a partial file or loses the previous one.

Every file the scripts write (checkpoints, plots, histories, datasets) goes through
`atomic_write`: the bytes go to a hidden temporary file next to the target, which is then
renamed over it. A full disk or an I/O error becomes one UserError naming the file and the
cause; the temporary file is removed and the previous target, if any, is untouched.
`RunLock` keeps two training runs from writing the same checkpoint.
"""
import fcntl
import hashlib
import html
import json
import os
import re
from pathlib import Path

from core.util.errors import UserError


def tmp_path(path):
    """The temporary name `atomic_write` uses for `path`: .NAME.tmp in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def describe_os_error(e):
    """OSError -> its cause in words (e.g. "No space left on device")."""
    if e.errno:
        return os.strerror(e.errno)  # one line, also for h5py, whose strerror spans several
    return (e.strerror or str(e)).splitlines()[0]


def atomic_write(path, write):
    """Call write(binary file object) on a temporary file next to `path`, flush it to disk
    and rename it to `path`.

    Raises UserError ("cannot write PATH: cause") when the folder cannot be made or the
    write fails; then no partial file is left and an existing `path` is kept as it was.
    """
    path = Path(path)
    tmp = tmp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {describe_os_error(e)}; the previous file, if any, "
                        f"is kept") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def check_writable(files=(), folders=()):
    """Before any work: UserError naming the first output that could not be written later: a file
    path that is a directory (or a folder path that is a file), or one whose nearest existing folder
    is not writable. files and folders: (flag, path) pairs; the flag is for the message."""
    for flag, path, is_file in [(f, Path(p), True) for f, p in files] + [(f, Path(p), False) for f,
                                                                         p in folders]:
        if is_file and path.is_dir():
            raise UserError(f"{flag} {path} is a directory: pass a file name (e.g. "
                            f"{path / 'model.npz'})")
        if not is_file and path.exists() and not path.is_dir():
            raise UserError(f"{flag} {path} is a file, not a folder")
        existing = path.parent if is_file else path
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {path} cannot be written ({existing} is not a writable "
                            f"folder): choose another location")


def check_owner(path, checkpoint, flag, same_run=None):
    """Before any work: UserError when `path`, a JSON output this project writes (a history, an
    evaluation), a figure (its PNG text) or a results page (its meta element), records that it
    belongs to the run of another checkpoint (`checkpoint_path`), so that two runs whose
    checkpoints share a name keep each other's files. Files that record none
    (older ones) or cannot be read are left to be replaced. same_run: where the checkpoint of the
    run being resumed was first written (a copied run folder's files name that one)."""
    try:
        if Path(path).suffix == ".png":  # a figure: its text records it
            from PIL import Image

            with Image.open(path) as image:
                other = image.text.get("checkpoint_path")
        elif Path(path).suffix == ".html":  # a results page: its <meta name="checkpoint_path">
            found = re.search(r'<meta name="checkpoint_path" content="([^"]*)">',
                              Path(path).read_text(encoding="utf-8", errors="replace"))
            other = found and html.unescape(found.group(1))
        else:
            other = json.loads(Path(path).read_text()).get("checkpoint_path")
    except (OSError, ValueError, AttributeError, SyntaxError):
        return
    mine = str(Path(checkpoint).resolve())
    if other and other not in (mine, same_run):
        raise UserError(f"{path} belongs to the run of {other}, not {mine}: pass another "
                        f"--out_dir, or a {flag} of another name")


def file_sha256(path):
    """The SHA-256 of a file's bytes, hex."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def atomic_write_text(path, text):
    """Write a str to `path` as UTF-8 with `atomic_write`."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_figure(fig, path, dpi=100, owner=None):
    """Write a matplotlib Figure to `path` as PNG with `atomic_write`; owner: the checkpoint the
    figure is of, recorded in the PNG's text (its "checkpoint_path", as check_owner reads it)."""
    metadata = {"checkpoint_path": str(Path(owner).resolve())} if owner else None
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, metadata=metadata))


class RunLock:
    """An exclusive lock on a checkpoint path (or another output), held while a run writes it.

    The lock is `flock` on .NAME.lock next to the file, removed when the run ends; the kernel
    releases it when the process ends in any way (even SIGKILL), so a leftover file is never a
    stale lock. Acquiring it also removes the temporary files a killed run may have left next to
    `paths`. who, hint: the run that holds it and what to do, in the message of a second one.
    """

    def __init__(self, checkpoint, paths=(), who="training run",
                 hint="wait for it or pass another --checkpoint"):
        self.checkpoint = Path(checkpoint)
        self.path = self.checkpoint.with_name(f".{self.checkpoint.name}.lock")
        self.paths = [Path(p) for p in paths]
        self.who, self.hint = who, hint
        self._file = None

    def __enter__(self):
        while self._file is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                f = open(self.path, "a+")
            except OSError as e:
                raise UserError(f"cannot create the lock file {self.path}: "
                                f"{describe_os_error(e)}") from None
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip()
                f.close()
                raise UserError(f"another {self.who} is writing {self.checkpoint} (it holds the "
                                f"lock {self.path}"
                                + (f", pid {holder}" if holder else "")
                                + f"): {self.hint}")
            try:
                same = os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else the holder removed the file between our open and flock: try again
                self._file = f
            else:
                f.close()
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()
        for p in self.paths:
            stale = tmp_path(p)
            if stale.exists():
                stale.unlink()
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)  # while still holding the lock (see __enter__'s check)
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None
        return False
