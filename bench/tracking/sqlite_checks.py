"""A SQLite tracking store checked before MLflow opens it, so that every bad store is one line (exit 2), fast:
a malformed URI, a folder, a read-only place, a damaged file, or an old store that was moved or copied.

MLflow alone gives tracebacks for these, after ~2 minutes of retries for a path that names a folder.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from bench.errors import UserError, first_line
from bench.tracking.artifacts import slug, sqlite_path

_LAST: dict[str, Path] = {}  # "db": the SQLite database this process checked last (the one it then opens)

SQLITE_FORMS = "sqlite:///RELATIVE/PATH.db or sqlite:////ABSOLUTE/PATH.db (three slashes before the path)"
OLD_ARTIFACTS = "mlruns"  # where stores made before store-relative artifacts keep them, by absolute path


def check_sqlite(uri: str, existing: bool = False, read_only: bool = False) -> Path | None:
    """The database file of a SQLite URI, checked; None for any other URI."""
    if not uri.startswith("sqlite:"):
        return None
    db = sqlite_path(uri)
    if db is None:
        raise UserError(f"tracking URI {uri!r} is not a SQLite file URI; write {SQLITE_FORMS}")
    if db.is_dir():
        raise UserError(f"tracking database {db} is a folder; name a database file, e.g. sqlite:///{db}/mlflow.db")
    if not db.parent.is_dir():
        raise UserError(f"folder {db.parent} for the tracking database does not exist")
    if existing and not db.exists():
        raise UserError(f"there is no tracking store at {db}; give --tracking-uri the store of your runs")
    if not read_only:
        writable(db.parent)
    if db.exists():
        sound(db)
        check_relocated(db)
    _LAST["db"] = db
    return db


def _quick_check(uri: str) -> tuple | None:
    con = sqlite3.connect(uri, uri=True, timeout=30)
    try:
        return con.execute("PRAGMA quick_check").fetchone()
    finally:
        con.close()


def hot_journal(e: BaseException, db: Path) -> bool:
    """Whether ``e`` is SQLite refusing a read-only open because a hot journal needs rolling back."""
    name = getattr(e, "sqlite_errorname", "")  # Python >= 3.11
    return name == "SQLITE_READONLY_ROLLBACK" or (
        not name and "readonly" in str(e) and Path(f"{db}-journal").exists())


def writable(folder: Path) -> None:
    """SQLite writes a journal beside the database: its folder must take a new file (a real try: permissions,
    read-only mounts and a root user all answer it truthfully, where os.access does not)."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".vae-bench-write-test-"):
            pass
    except OSError as e:
        raise UserError(f"folder {folder} of the tracking database is not writable ({e.strerror}); "
                        "give --tracking-uri a store in a writable folder") from None


_SOUND: set[tuple[str, int, int]] = set()  # (path, size, mtime) of databases found sound by this process


def sound(db: Path) -> None:
    """A damaged database (truncated, overwritten header or pages) is refused before MLflow meets it mid-run.
    PRAGMA quick_check reads every page once: 0.29 s for a 15 MB database here (a loaded 2-core machine); a
    file unchanged since this process checked it is not read again (a command's precheck, then open_store)."""
    st = db.stat()
    key = (str(db), st.st_size, st.st_mtime_ns)
    if key in _SOUND:
        return
    try:
        try:
            result = _quick_check(f"{db.as_uri()}?mode=ro")
        except sqlite3.OperationalError as e:
            if not hot_journal(e, db):
                raise
            # A writer killed inside a write left its rollback journal: SQLite rolls it back at the next
            # read-write open (as MLflow's would), restoring the last committed state; a read-only one cannot.
            result = _quick_check(db.as_uri())
    except sqlite3.Error as e:
        if hot_journal(e, db):
            raise UserError(f"tracking database {db} holds the journal of a writer killed mid-write, which only a "
                            "writable open can roll back; run a command that writes to this store (bench.run, "
                            "bench.evaluate) where its folder is writable, then this again") from None
        raise UserError(f"tracking database {db} cannot be read ({first_line(e)}); restore it from a copy, "
                        "or give --tracking-uri another store") from None
    if result is None or result[0] != "ok":
        problem = result[0] if result else "no answer"
        raise UserError(f"tracking database {db} is damaged ({first_line(problem)}); restore it from a copy, "
                        "or give --tracking-uri another store")
    _SOUND.add(key)


def check_relocated(db: Path) -> None:
    """Stores made before artifacts became store-relative record ``file:///OLD/mlruns/SLUG``: moved, they point at
    nothing; copied, at their original, which a resume would then write into. Refuse both in one line. Read with
    sqlite3 from MLflow's experiments table (deleted experiments too), so the refusal comes before MLflow loads."""
    try:
        con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            rows = con.execute("SELECT name, artifact_location FROM experiments").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return  # a new store (no schema yet), or not MLflow's: nothing of an old layout to refuse
    for name, location in rows:
        if not (location or "").startswith("file:"):
            continue
        path = Path(unquote(urlparse(location).path))
        if path.name == slug(name) and path.parent.name == OLD_ARTIFACTS and path.parent.parent != db.parent:
            raise UserError(
                f"store {db} was moved or copied from {path.parent.parent}: its experiment {name!r} keeps "
                f"artifacts at {path} (stores made before artifacts became store-relative cannot move); "
                f"use it at {path.parent.parent}, or start a new store")


def lock_holders(db: Path) -> list[int]:
    """The other processes holding a POSIX lock on ``db`` (SQLite locks its file while it writes), from Linux's
    /proc/locks; [] where there is none or nothing can tell."""
    try:
        st = db.stat()
        rows = [line.split() for line in Path("/proc/locks").read_text().splitlines()]
    except OSError:
        return []
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = {int(f[4]) for f in rows if len(f) > 5 and f[1] != "->" and f[4].isdigit() and f[5] == key}
    return sorted(pids - {os.getpid()})


def locked_store(e: BaseException) -> str | None:
    """For SQLite's "database is locked" (a writer that does not finish: stopped with Ctrl-Z or SIGSTOP, in a
    debugger, or hung), the one line to say instead of MLflow's message, naming the holder where Linux can;
    None for any other error."""
    if "database is locked" not in str(e):
        return None
    db = _LAST.get("db")
    holders = lock_holders(db) if db is not None else []
    who = f"process {', '.join(map(str, holders))} on this machine" if holders else "another process"
    return (f"tracking store {db or 'database'} is locked by {who}, which holds SQLite's write lock and does not "
            "finish (stopped with Ctrl-Z or SIGSTOP, or in a debugger?): resume or end it, then run this again")
