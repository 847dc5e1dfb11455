"""Backup and restore of CODEX_HOME (stdlib only).

Reached as ``quartproxy backup <command>`` or ``python -m quartproxy.backup <command>``.

Archives are gzip-compressed tar files named ``codex-home-YYYYmmddTHHMMSSZ.tar.gz`` (UTC; a
``-N`` suffix is added before ``.tar.gz`` when two are created in the same second). Each archive
has a ``<archive>.sha256`` file next to it in ``sha256sum`` format, so ``sha256sum -c`` works too.

* The archive *name* defines its age (for ``list`` order and ``prune --max-age-days``), not its
  file mtime: copying backups around (rsync, object storage) keeps names but often not mtimes.
* ``create`` writes to a temporary file in the destination directory, fsyncs it, writes the
  checksum file and only then gives the archive its final name, so a visible archive is always
  complete and always has its checksum.
* ``restore`` checks the checksum (when present), refuses unsafe members (absolute paths, ``..``,
  links leading outside, device files, FIFOs), extracts with ``tarfile``'s ``data`` filter into a
  staging directory inside the target and moves the result into place only when everything was
  extracted. File and directory modes and mtimes are restored; owners are not.

Exit codes: 0 ok, 1 operational error (one line on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import fnmatch
import gzip
import hashlib
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

PROG = "quartproxy backup"
ARCHIVE_PREFIX = "codex-home-"
ARCHIVE_SUFFIX = ".tar.gz"
CHECKSUM_SUFFIX = ".sha256"
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
DEFAULT_CODEX_HOME = "./.codex-api"
DEFAULT_BACKUP_DIR = "./backups"

_ARCHIVE_RE = re.compile(  # a whole file name: fullmatch only (``$`` allows a trailing newline)
    re.escape(ARCHIVE_PREFIX)
    + r"(?P<ts>\d{8}T\d{6}Z)(?:-(?P<seq>[1-9]\d*))?"
    + re.escape(ARCHIVE_SUFFIX)
)
_CHUNK = 1024 * 1024
# tarfile's extraction filters (PEP 706) exist from Python 3.11.4 on; Debian 12's python3 is
# 3.11.2. Without them restore applies stricter checks of its own (see _check_member).
_HAS_DATA_FILTER = hasattr(tarfile, "data_filter")
_FILTER_ERRORS: tuple[type[Exception], ...] = (
    (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()
)
_ROOT_NAMES = frozenset({".", "./", ""})


class BackupError(Exception):
    """An operational failure: reported as one line on stderr, exit code 1."""


@dataclass(frozen=True)
class ArchiveInfo:
    path: Path
    created: dt.datetime  # from the file name, UTC
    seq: int
    size: int
    has_checksum: bool

    @property
    def sort_key(self) -> tuple[dt.datetime, int]:
        return (self.created, self.seq)


@dataclass(frozen=True)
class VerifyResult:
    archive: Path
    sha256: str
    members: int


# --------------------------------------------------------------------------- helpers


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _as_utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def archive_name(created: dt.datetime, seq: int = 0) -> str:
    stamp = _as_utc(created).strftime(TIMESTAMP_FORMAT)
    suffix = f"-{seq}" if seq else ""
    return f"{ARCHIVE_PREFIX}{stamp}{suffix}{ARCHIVE_SUFFIX}"


def parse_archive_name(name: str) -> tuple[dt.datetime, int] | None:
    match = _ARCHIVE_RE.fullmatch(name)
    if match is None:
        return None
    try:
        created = dt.datetime.strptime(match["ts"], TIMESTAMP_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return created, int(match["seq"] or 0)


def checksum_path(archive: Path) -> Path:
    return archive.with_name(archive.name + CHECKSUM_SUFFIX)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_checksum(archive: Path) -> str | None:
    sidecar = checksum_path(archive)
    try:
        text = sidecar.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    fields = text.split()
    if not fields or not re.fullmatch(r"[0-9a-fA-F]{64}", fields[0]):
        raise BackupError(f"malformed checksum file {sidecar}")
    return fields[0].lower()


def _fsync_dir(path: Path) -> None:
    # Makes a rename durable. Not every filesystem allows opening a directory: best effort.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _is_within(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
    except ValueError:
        return False
    return True


def _excluded(rel: str, patterns: Sequence[str]) -> bool:
    """A pattern with a '/' matches the path relative to CODEX_HOME; one without also matches
    any single name component (so ``*.log`` excludes log files at every depth)."""
    base = rel.rsplit("/", 1)[-1]
    for pattern in patterns:
        pat = pattern.strip("/")
        if fnmatch.fnmatchcase(rel, pat):
            return True
        if "/" not in pat and fnmatch.fnmatchcase(base, pat):
            return True
    return False


# --------------------------------------------------------------------------- create


def _walk(
    root: Path, skip: Callable[[Path, str], bool], prefix: str = ""
) -> Iterator[tuple[Path, str]]:
    """(path, relative posix name) under root, sorted, parents before children. Skipped
    directories are not descended into."""
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except FileNotFoundError:
        return
    for entry in entries:
        path = Path(entry.path)
        rel = prefix + entry.name
        if skip(path, rel):
            continue
        yield path, rel
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(path, skip, rel + "/")


def _add_tree(
    tar: tarfile.TarFile, codex_home: Path, excludes: Sequence[str], skip_dir: Path | None
) -> int:
    def skip(path: Path, rel: str) -> bool:
        return path == skip_dir or _excluded(rel, excludes)

    tar.addfile(tar.gettarinfo(str(codex_home), arcname="."))
    count = 1
    for path, rel in _walk(codex_home, skip):
        try:
            st = path.lstat()
        except FileNotFoundError:
            _warn(f"{rel}: vanished during backup, skipped")
            continue
        if stat.S_ISREG(st.st_mode):
            try:
                fh = path.open("rb")
            except FileNotFoundError:
                _warn(f"{rel}: vanished during backup, skipped")
                continue
            with fh:
                info = tar.gettarinfo(arcname=rel, fileobj=fh)
                tar.addfile(info, fh if info.isreg() else None)
        elif stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
            info = tar.gettarinfo(str(path), arcname=rel)
            if info.issym() and os.path.isabs(info.linkname):
                _warn(f"{rel}: absolute symlink, restore will refuse it")
            tar.addfile(info)
        else:
            _warn(f"{rel}: not a regular file, directory or symlink, skipped")
            continue
        count += 1
    return count


def _write_checksum(dest: Path, created: dt.datetime, digest: str) -> Path:
    """Create the checksum file of the first free archive name (O_EXCL, so two concurrent runs
    cannot pick the same name) and return that archive name. The archive itself does not exist
    yet, so nobody reads the checksum file before it is complete."""
    for seq in range(1000):
        candidate = dest / archive_name(created, seq)
        if candidate.exists():
            continue
        try:
            fd = os.open(checksum_path(candidate), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(f"{digest}  {candidate.name}\n")
            fh.flush()
            os.fsync(fh.fileno())
        return candidate
    raise BackupError(f"too many archives for {created:%Y-%m-%d %H:%M:%S} in {dest}")


def create_archive(
    codex_home: Path,
    dest: Path,
    excludes: Sequence[str] = (),
    now: dt.datetime | None = None,
) -> Path:
    """Archive ``codex_home`` into ``dest``; returns the archive path."""
    if not Path(codex_home).is_dir():
        raise BackupError(f"CODEX_HOME {codex_home} is not a directory")
    codex_home = Path(os.path.realpath(codex_home))
    dest = Path(os.path.abspath(dest))
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest = Path(os.path.realpath(dest))
    if dest == codex_home:
        raise BackupError("the backup directory must not be CODEX_HOME itself")
    # Never archive the backups themselves when they live inside CODEX_HOME.
    skip_dir = dest if _is_within(dest, codex_home) else None
    created = _as_utc(now) if now is not None else _utcnow()

    fd, tmp_name = tempfile.mkstemp(prefix=".codex-home-", suffix=".tmp", dir=dest)
    tmp_archive = Path(tmp_name)
    final: Path | None = None
    try:
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(
                fileobj=raw, mode="w:gz", compresslevel=6, format=tarfile.PAX_FORMAT
            ) as tar:
                _add_tree(tar, codex_home, excludes, skip_dir)
            raw.flush()
            os.fsync(raw.fileno())
        final = _write_checksum(dest, created, sha256_file(tmp_archive))
        os.replace(tmp_archive, final)
        _fsync_dir(dest)
        return final
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_archive.unlink()
        if final is not None and not final.exists():
            with contextlib.suppress(FileNotFoundError):
                checksum_path(final).unlink()
        raise


# --------------------------------------------------------------------------- list / prune


def list_archives(dest: Path) -> list[ArchiveInfo]:
    """Archives in ``dest``, oldest first. A missing directory has none."""
    found: list[ArchiveInfo] = []
    try:
        with os.scandir(dest) as it:
            entries = list(it)
    except FileNotFoundError:
        return found
    except NotADirectoryError as exc:
        raise BackupError(f"{dest} is not a directory") from exc
    for entry in entries:
        parsed = parse_archive_name(entry.name)
        if parsed is None or not entry.is_file(follow_symlinks=False):
            continue
        path = Path(entry.path)
        found.append(
            ArchiveInfo(
                path=path,
                created=parsed[0],
                seq=parsed[1],
                size=entry.stat(follow_symlinks=False).st_size,
                has_checksum=checksum_path(path).is_file(),
            )
        )
    found.sort(key=lambda a: a.sort_key)
    return found


def select_prune(
    archives: Sequence[ArchiveInfo],
    keep: int | None,
    max_age_days: float | None,
    now: dt.datetime,
) -> list[ArchiveInfo]:
    """Archives to delete. Each limit is a cap: an archive goes when it is not among the newest
    ``keep`` OR is older than ``max_age_days`` (by its name). The newest one always stays."""
    ordered = sorted(archives, key=lambda a: a.sort_key)
    if not ordered:
        return []
    doomed: list[ArchiveInfo] = []
    # rank 0 is the newest, which is never removed.
    for rank, archive in enumerate(reversed(ordered)):
        if rank == 0:
            continue
        too_many = keep is not None and rank >= keep
        too_old = max_age_days is not None and (
            _as_utc(now) - archive.created > dt.timedelta(days=max_age_days)
        )
        if too_many or too_old:
            doomed.append(archive)
    doomed.sort(key=lambda a: a.sort_key)
    return doomed


def prune_archives(
    dest: Path,
    keep: int | None = None,
    max_age_days: float | None = None,
    now: dt.datetime | None = None,
    dry_run: bool = False,
) -> list[Path]:
    doomed = select_prune(list_archives(dest), keep, max_age_days, now or _utcnow())
    if not dry_run:
        for archive in doomed:
            archive.path.unlink()
            with contextlib.suppress(FileNotFoundError):
                checksum_path(archive.path).unlink()
        if doomed:
            _fsync_dir(dest)
    return [a.path for a in doomed]


# --------------------------------------------------------------------------- verify / restore


def _check_member(member: tarfile.TarInfo, strict: bool = False) -> None:
    """Refuse what could land outside the target or is not plain data. ``strict`` also refuses
    any '..' in a link target: then no chain of links can climb out of the target, which is what
    tarfile's data filter otherwise checks by resolving the links at extraction time."""
    name = member.name
    where = f"unsafe archive member {name!r}"
    if name.startswith(("/", "\\")) or os.path.isabs(name) or re.match(r"^[A-Za-z]:", name):
        raise BackupError(f"{where}: absolute path")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise BackupError(f"{where}: '..' in path")
    if member.ischr() or member.isblk() or member.isfifo():
        raise BackupError(f"{where}: device file or FIFO")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise BackupError(f"{where}: unsupported member type")
    if member.issym() or member.islnk():
        link = member.linkname
        if link.startswith(("/", "\\")) or os.path.isabs(link):
            raise BackupError(f"{where}: link to absolute path {link!r}")
        if strict and ".." in PurePosixPath(link.replace("\\", "/")).parts:
            raise BackupError(f"{where}: '..' in link target {link!r}")
        base = PurePosixPath(name).parent if member.issym() else PurePosixPath(".")
        resolved = os.path.normpath(str(base / link))
        if resolved == ".." or resolved.startswith("../"):
            raise BackupError(f"{where}: link leads outside the archive ({link!r})")


def _is_root(member: tarfile.TarInfo) -> bool:
    return member.name in _ROOT_NAMES


def _read_members(
    tar: tarfile.TarFile, read_data: bool, strict: bool = False
) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    for member in tar:
        if not _is_root(member):
            _check_member(member, strict)
        if read_data and member.isreg():
            fh = tar.extractfile(member)
            if fh is not None:
                with fh:
                    while fh.read(_CHUNK):
                        pass
        members.append(member)
    return members


# What a damaged or truncated .tar.gz raises while being read.
_UNREADABLE = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


def _check_gzip(archive: Path) -> None:
    """Decompress the whole file. tarfile stops at the end-of-archive marker and never reaches
    the gzip trailer, so without this a damaged byte inside a member goes unnoticed."""
    try:
        with gzip.open(archive, "rb") as fh:
            while fh.read(_CHUNK):
                pass
    except _UNREADABLE as exc:
        raise BackupError(f"archive {archive} is unreadable: {exc}") from exc


def _check_sha(archive: Path, required: bool) -> str:
    expected = _read_checksum(archive)
    actual = sha256_file(archive)
    if expected is None:
        if required:
            raise BackupError(f"no checksum file {checksum_path(archive)}")
        _warn(f"no checksum file next to {archive}; checking readability only")
    elif expected != actual:
        raise BackupError(f"checksum mismatch for {archive}: expected {expected}, got {actual}")
    return actual


def verify_archive(archive: Path) -> VerifyResult:
    """Checksum matches the ``.sha256`` file, every member reads back, nothing unsafe."""
    if not archive.is_file():
        raise BackupError(f"archive {archive} does not exist")
    digest = _check_sha(archive, required=True)
    _check_gzip(archive)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = _read_members(tar, read_data=True)
    except _UNREADABLE as exc:
        raise BackupError(f"archive {archive} is unreadable: {exc}") from exc
    return VerifyResult(archive=archive, sha256=digest, members=len(members))


def _restore_filter(
    dir_attrs: dict[str, tuple[int, float]],
) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo]:
    def _filter(member: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo:
        safe = tarfile.data_filter(member, dest_path)  # raises tarfile.FilterError when unsafe
        perms = member.mode & 0o777  # keep rwx bits, drop setuid/setgid/sticky
        if member.isdir():
            # The data filter leaves directory modes unset, so extraction keeps directories
            # writable; the archived mode (and mtime, which moving a directory may touch) is
            # applied after everything is in place.
            dir_attrs[safe.name] = (perms, member.mtime)
            return safe
        if member.isreg() or member.islnk():
            return safe.replace(mode=perms, deep=False)
        return safe

    return _filter


def _sanitized(
    members: Sequence[tarfile.TarInfo], dir_attrs: dict[str, tuple[int, float]]
) -> list[tarfile.TarInfo]:
    """Without the data filter: copies that extract as plain files owned by the current user,
    with directories kept writable until the end (``_check_member(strict=True)`` ran before)."""
    out: list[tarfile.TarInfo] = []
    for member in members:
        clean = copy.copy(member)
        clean.uid, clean.gid = os.getuid(), os.getgid()
        clean.uname = clean.gname = ""
        clean.mode = member.mode & 0o777
        if member.isdir():
            dir_attrs[member.name] = (clean.mode, member.mtime)
            clean.mode = 0o700
        out.append(clean)
    return out


def _is_empty_dir(path: Path) -> bool:
    with os.scandir(path) as it:
        return next(it, None) is None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def restore_archive(archive: Path, codex_home: Path, force: bool = False) -> int:
    """Restore ``archive`` into ``codex_home``; returns the number of entries restored."""
    if not archive.is_file():
        raise BackupError(f"archive {archive} does not exist")
    target = Path(os.path.abspath(codex_home))
    if target.exists() and not target.is_dir():
        raise BackupError(f"{target} exists and is not a directory")
    if target.is_dir() and not _is_empty_dir(target) and not force:
        raise BackupError(f"refusing to restore into non-empty {target} (use --force)")
    _check_sha(archive, required=False)
    _check_gzip(archive)

    try:
        with tarfile.open(archive, "r:gz") as tar:
            # Validates every member before anything is written.
            members = _read_members(tar, read_data=False, strict=not _HAS_DATA_FILTER)
            root = next((m for m in members if _is_root(m)), None)
            members = [m for m in members if not _is_root(m)]
            target.mkdir(mode=0o700, parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".quartproxy-restore-", dir=target))
            try:
                dir_attrs: dict[str, tuple[int, float]] = {}
                if _HAS_DATA_FILTER:
                    tar.extractall(staging, members=members, filter=_restore_filter(dir_attrs))
                else:
                    tar.extractall(staging, members=_sanitized(members, dir_attrs))
                for old in list(target.iterdir()):
                    if old != staging:
                        _remove(old)
                for new in sorted(staging.iterdir()):
                    os.replace(new, target / new.name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except _FILTER_ERRORS as exc:
        raise BackupError(f"unsafe archive {archive}: {exc}") from exc
    except _UNREADABLE as exc:
        raise BackupError(f"archive {archive} is unreadable: {exc}") from exc

    # Directories deepest first, so a read-only parent does not block its children.
    for name in sorted(dir_attrs, key=lambda n: n.count("/"), reverse=True):
        path = target / name
        if path.is_dir() and not path.is_symlink():
            mode, mtime = dir_attrs[name]
            os.utime(path, (mtime, mtime))
            os.chmod(path, mode)
    if root is not None:
        try:
            os.chmod(target, root.mode & 0o777)
            os.utime(target, (root.mtime, root.mtime))
        except OSError as exc:  # e.g. a mount point owned by someone else
            _warn(f"could not set mode/mtime of {target}: {exc}")
    _fsync_dir(target)
    return len(members)


# --------------------------------------------------------------------------- CLI


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1 (the newest archive is always kept)")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    codex_home = os.environ.get("CODEX_HOME") or DEFAULT_CODEX_HOME
    backup_dir = os.environ.get("QUARTPROXY_BACKUP_DIR") or DEFAULT_BACKUP_DIR
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Back up, verify, prune and restore CODEX_HOME.",
        epilog="Exit codes: 0 ok, 1 operational error, 2 usage error.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("create", help="write a new archive of CODEX_HOME")
    p.add_argument(
        "--codex-home",
        type=Path,
        default=Path(codex_home),
        help=f"directory to back up (env CODEX_HOME; default {DEFAULT_CODEX_HOME})",
    )
    p.add_argument(
        "--dest",
        type=Path,
        default=Path(backup_dir),
        help=f"backup directory (env QUARTPROXY_BACKUP_DIR; default {DEFAULT_BACKUP_DIR})",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip matching paths (relative to CODEX_HOME; a GLOB without '/' also matches "
        "names at any depth); repeatable",
    )

    p = sub.add_parser("list", help="list archives, oldest first")
    p.add_argument("--dest", type=Path, default=Path(backup_dir))

    p = sub.add_parser("prune", help="delete old archives (never the newest)")
    p.add_argument("--dest", type=Path, default=Path(backup_dir))
    p.add_argument("--keep", type=_positive_int, metavar="N", help="keep at most N newest")
    p.add_argument(
        "--max-age-days",
        type=_non_negative_float,
        metavar="D",
        help="delete archives older than D days (age from the timestamp in the name)",
    )
    p.add_argument("--dry-run", action="store_true", help="print what would go, delete nothing")
    p.set_defaults(subparser=p)

    p = sub.add_parser("restore", help="restore an archive into CODEX_HOME")
    p.add_argument("--archive", type=Path, required=True)
    p.add_argument(
        "--codex-home",
        type=Path,
        default=Path(codex_home),
        help=f"target directory (env CODEX_HOME; default {DEFAULT_CODEX_HOME})",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace the contents of a non-empty target",
    )

    p = sub.add_parser("verify", help="check an archive against its .sha256 and read it fully")
    p.add_argument("--archive", type=Path, required=True)
    return parser


def _run(args: argparse.Namespace) -> int:
    command: str = args.command
    if command == "create":
        print(create_archive(args.codex_home, args.dest, args.exclude))
    elif command == "list":
        for info in list_archives(args.dest):
            flag = "" if info.has_checksum else "\tno-checksum"
            print(f"{info.created:%Y-%m-%dT%H:%M:%SZ}\t{info.size}\t{info.path}{flag}")
    elif command == "prune":
        removed = prune_archives(args.dest, args.keep, args.max_age_days, dry_run=args.dry_run)
        verb = "would remove" if args.dry_run else "removed"
        for path in removed:
            print(f"{verb} {path}")
    elif command == "restore":
        count = restore_archive(args.archive, args.codex_home, force=args.force)
        print(f"restored {count} entries from {args.archive} into {args.codex_home}")
    elif command == "verify":
        result = verify_archive(args.archive)
        print(f"ok {result.archive} members={result.members} sha256={result.sha256}")
    else:  # pragma: no cover - argparse rejects unknown commands
        raise AssertionError(command)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    if args.command == "prune" and args.keep is None and args.max_age_days is None:
        subparser: argparse.ArgumentParser = args.subparser
        subparser.print_usage(sys.stderr)
        print(f"{subparser.prog}: error: give --keep and/or --max-age-days", file=sys.stderr)
        return 2
    try:
        return _run(args)
    except (BackupError, OSError, tarfile.TarError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
