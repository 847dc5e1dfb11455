"""quartproxy.backup: create / list / prune / restore / verify of CODEX_HOME.

Age for pruning is defined by the timestamp in the archive *name* (not the file mtime), so the
tests make archives "old" by creating them with an explicit ``now`` — no sleeping, no clock games.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import random
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from quartproxy import backup
from quartproxy.backup import main

UTC = dt.UTC
BASE_MTIME = 1_700_000_000  # 2023-11-14, whole seconds: tar keeps sub-second mtimes via PAX too


# --------------------------------------------------------------------------- helpers


def make_codex_home(root: Path) -> Path:
    """A CODEX_HOME with nested dirs, binary data, an empty dir, odd modes and unicode names."""
    home = root / "codex-home"
    (home / "sessions" / "2025" / "09" / "15").mkdir(parents=True)
    (home / "empty-dir").mkdir()
    (home / "private-dir").mkdir()
    (home / "données").mkdir()

    (home / "config.toml").write_text(
        'model = "gpt-5"\n[sandbox]\nmode = "read-only"\n', encoding="utf-8"
    )
    (home / "auth.json").write_text('{"token": "not-a-real-token"}\n', encoding="utf-8")
    os.chmod(home / "auth.json", 0o600)
    rollout = home / "sessions" / "2025" / "09" / "15" / "rollout-0001.jsonl"
    rollout.write_bytes(b'{"type":"session_meta"}\n' * 50)
    (home / "blob.bin").write_bytes(random.Random(1234).randbytes(200_000))
    (home / "zeros.bin").write_bytes(bytes(4096))
    (home / "données" / "日本語-ファイル.txt").write_text("こんにちは\n", encoding="utf-8")
    (home / "émoji-🙂.txt").write_bytes(b"\x00\xff\xfe binary-ish \xf0\x9f\x99\x82")
    (home / "hook.sh").write_text("#!/bin/sh\necho hi\n", encoding="utf-8")
    os.chmod(home / "hook.sh", 0o755)
    (home / "private-dir" / "key").write_text("k\n", encoding="utf-8")
    os.chmod(home / "private-dir" / "key", 0o400)
    os.symlink("sessions/2025", home / "latest")

    # Deterministic mtimes; directories after their contents, deepest first, root last.
    paths = sorted(home.rglob("*"), key=lambda p: len(p.parts), reverse=True)
    for i, path in enumerate(paths):
        if path.is_symlink():
            continue
        os.utime(path, (BASE_MTIME + i, BASE_MTIME + i))
    os.utime(home / "config.toml", (BASE_MTIME + 0.5, BASE_MTIME + 0.5))
    os.chmod(home / "private-dir", 0o750)
    os.chmod(home, 0o700)
    os.utime(home, (BASE_MTIME + 999, BASE_MTIME + 999))
    return home


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything restore promises to keep: type, permission bits, mtime, bytes, link target."""
    st = root.stat()
    out: dict[str, tuple[Any, ...]] = {
        ".": ("dir", stat.S_IMODE(st.st_mode), round(st.st_mtime, 6))
    }

    def walk(directory: Path, prefix: str) -> None:
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            rel = prefix + entry.name
            path = Path(entry.path)
            lst = path.lstat()
            if stat.S_ISLNK(lst.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(lst.st_mode):
                out[rel] = ("dir", stat.S_IMODE(lst.st_mode), round(lst.st_mtime, 6))
                walk(path, rel + "/")
            else:
                out[rel] = (
                    "file",
                    stat.S_IMODE(lst.st_mode),
                    round(lst.st_mtime, 6),
                    path.read_bytes(),
                )

    walk(root, "")
    return out


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def write_sha256(archive: Path) -> None:
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    backup.checksum_path(archive).write_text(f"{digest}  {archive.name}\n", encoding="utf-8")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return make_codex_home(tmp_path)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "backups"


@pytest.fixture(params=["data-filter", "no-data-filter"])
def extraction(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Restore runs with tarfile's data filter (Python >= 3.11.4) and, as on Debian 12's
    Python 3.11.2, without it; both must restore the same tree and refuse the same archives."""
    mode: str = request.param
    if mode == "no-data-filter":
        monkeypatch.setattr(backup, "_HAS_DATA_FILTER", False)
    elif not backup._HAS_DATA_FILTER:
        pytest.skip("this Python has no tarfile data filter (needs >= 3.11.4)")
    return mode


# --------------------------------------------------------------------------- create, list, restore


def test_roundtrip_restores_everything_byte_for_byte(
    home: Path,
    dest: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extraction: str,
) -> None:
    before = snapshot(home)

    code, out, err = run(capsys, "create", "--codex-home", str(home), "--dest", str(dest))
    assert code == 0, err
    archive = Path(out.strip())
    assert archive.parent == dest.resolve()
    assert backup.parse_archive_name(archive.name) is not None
    assert archive.name.startswith("codex-home-") and archive.name.endswith("Z.tar.gz")
    # Only the archive and its checksum: the temporary file was renamed, not copied.
    assert names(dest) == [archive.name, archive.name + ".sha256"]
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600  # it holds credentials
    assert snapshot(home) == before  # creating a backup does not touch the source

    code, out, err = run(capsys, "list", "--dest", str(dest))
    assert code == 0, err
    [line] = out.splitlines()
    created, size, path = line.split("\t")
    assert Path(path) == archive
    assert int(size) == archive.stat().st_size
    assert created.endswith("Z")

    target = tmp_path / "restored"
    code, out, err = run(capsys, "restore", "--archive", str(archive), "--codex-home", str(target))
    assert code == 0, err
    after = snapshot(target)
    assert after == before
    # Spelled out, for the properties most likely to regress:
    assert after["empty-dir"][0] == "dir"
    assert after["auth.json"][1] == 0o600
    assert after["private-dir/key"][1] == 0o400
    assert after["private-dir"][1] == 0o750
    assert after["hook.sh"][1] == 0o755
    assert after["config.toml"][2] == BASE_MTIME + 0.5
    assert after["latest"] == ("link", "sessions/2025")
    assert after["données/日本語-ファイル.txt"][3] == "こんにちは\n".encode()
    assert not [p for p in target.iterdir() if p.name.startswith(".quartproxy-restore-")]


def test_restore_into_existing_empty_directory(home: Path, dest: Path, tmp_path: Path) -> None:
    archive = backup.create_archive(home, dest)
    target = tmp_path / "mountpoint"
    target.mkdir()
    assert main(["restore", "--archive", str(archive), "--codex-home", str(target)]) == 0
    assert snapshot(target) == snapshot(home)


def test_checksum_file_matches_sha256sum_format(home: Path, dest: Path) -> None:
    archive = backup.create_archive(home, dest)
    text = backup.checksum_path(archive).read_text(encoding="utf-8")
    assert text == f"{hashlib.sha256(archive.read_bytes()).hexdigest()}  {archive.name}\n"


def test_exclude_globs(home: Path, dest: Path, tmp_path: Path) -> None:
    code = main(
        [
            "create",
            "--codex-home", str(home),
            "--dest", str(dest),
            "--exclude", "*.bin",
            "--exclude", "sessions/2025",
        ]
    )  # fmt: skip
    assert code == 0
    [archive] = backup.list_archives(dest)
    with tarfile.open(archive.path) as tar:
        members = set(tar.getnames())
    assert "config.toml" in members
    assert "sessions" in members
    assert not any(n.endswith(".bin") for n in members)
    assert not any(n.startswith("sessions/2025") for n in members)


def test_backup_dir_inside_codex_home_is_not_archived(home: Path, tmp_path: Path) -> None:
    inner = home / "backups"
    first = backup.create_archive(home, inner, now=dt.datetime(2025, 1, 1, tzinfo=UTC))
    second = backup.create_archive(home, inner, now=dt.datetime(2025, 1, 2, tzinfo=UTC))
    for archive in (first, second):
        with tarfile.open(archive) as tar:
            assert not any(n == "backups" or n.startswith("backups/") for n in tar.getnames())


def test_same_second_gets_a_suffix_and_sorts_after(home: Path, dest: Path) -> None:
    now = dt.datetime(2025, 9, 15, 12, 0, 0, tzinfo=UTC)
    a = backup.create_archive(home, dest, now=now)
    b = backup.create_archive(home, dest, now=now)
    assert a.name == "codex-home-20250915T120000Z.tar.gz"
    assert b.name == "codex-home-20250915T120000Z-1.tar.gz"
    assert [i.path for i in backup.list_archives(dest)] == [a, b]
    assert backup.prune_archives(dest, keep=1) == [a]


def test_defaults_come_from_the_environment(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env_dest = tmp_path / "env-backups"
    monkeypatch.setenv("CODEX_HOME", str(home))
    monkeypatch.setenv("QUARTPROXY_BACKUP_DIR", str(env_dest))
    code, out, err = run(capsys, "create")
    assert code == 0, err
    assert Path(out.strip()).parent == env_dest.resolve()
    code, out, _ = run(capsys, "list")
    assert code == 0 and len(out.splitlines()) == 1


def test_create_fails_cleanly_without_codex_home(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, "create", "--codex-home", str(tmp_path / "nope"), "--dest", str(tmp_path / "b")
    )
    assert code == 1
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and "not a directory" in err


# --------------------------------------------------------------------------- prune


def _archives_at(home: Path, dest: Path, *days_ago: float) -> list[Path]:
    now = dt.datetime.now(UTC)
    return [backup.create_archive(home, dest, now=now - dt.timedelta(days=d)) for d in days_ago]


def test_prune_by_count_keeps_the_newest(
    home: Path, dest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archives = _archives_at(home, dest, 5, 4, 3, 2, 1)  # oldest first
    code, out, err = run(capsys, "prune", "--dest", str(dest), "--keep", "2")
    assert code == 0, err
    assert out.splitlines() == [f"removed {p}" for p in archives[:3]]
    remaining = [a.path for a in backup.list_archives(dest)]
    assert remaining == archives[3:]
    # Checksums go with their archives.
    assert sorted(p.name for p in dest.iterdir() if p.name.endswith(".sha256")) == sorted(
        p.name + ".sha256" for p in archives[3:]
    )


def test_prune_by_age(home: Path, dest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, older_than_limit, recent, newest = _archives_at(home, dest, 30, 8, 2, 0)
    code, out, err = run(capsys, "prune", "--dest", str(dest), "--max-age-days", "7")
    assert code == 0, err
    assert out.splitlines() == [f"removed {old}", f"removed {older_than_limit}"]
    assert [a.path for a in backup.list_archives(dest)] == [recent, newest]


def test_prune_never_removes_the_newest(
    home: Path, dest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, c = _archives_at(home, dest, 40, 35, 30)  # all older than the limit
    code, out, _ = run(capsys, "prune", "--dest", str(dest), "--max-age-days", "1")
    assert code == 0
    assert out.splitlines() == [f"removed {a}", f"removed {b}"]
    assert [x.path for x in backup.list_archives(dest)] == [c]
    # Nothing left to remove, whatever the limits.
    code, out, _ = run(capsys, "prune", "--dest", str(dest), "--keep", "1", "--max-age-days", "0")
    assert code == 0 and out == ""
    assert [x.path for x in backup.list_archives(dest)] == [c]


def test_prune_age_comes_from_the_name_not_the_mtime(home: Path, dest: Path) -> None:
    old, new = _archives_at(home, dest, 10, 0)
    os.utime(old, None)  # touched today (e.g. copied back from elsewhere)
    os.utime(new, (0, 0))  # mtime in 1970
    assert backup.prune_archives(dest, max_age_days=5) == [old]


def test_prune_limits_are_caps_combined_with_or(home: Path, dest: Path) -> None:
    now = dt.datetime(2025, 9, 15, tzinfo=UTC)
    infos = [
        backup.ArchiveInfo(
            path=dest / backup.archive_name(now - dt.timedelta(days=d)),
            created=now - dt.timedelta(days=d),
            seq=0,
            size=1,
            has_checksum=True,
        )
        for d in (20, 10, 3, 2, 1)
    ]
    doomed = backup.select_prune(infos, keep=4, max_age_days=5, now=now)
    assert [i.created for i in doomed] == [infos[0].created, infos[1].created]
    doomed = backup.select_prune(infos, keep=2, max_age_days=15, now=now)
    assert doomed == infos[:3]
    assert backup.select_prune(infos[:1], keep=1, max_age_days=0, now=now) == []
    assert backup.select_prune([], keep=1, max_age_days=None, now=now) == []


def test_prune_dry_run_deletes_nothing(
    home: Path, dest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archives = _archives_at(home, dest, 3, 2, 1)
    code, out, _ = run(capsys, "prune", "--dest", str(dest), "--keep", "1", "--dry-run")
    assert code == 0
    assert out.splitlines() == [f"would remove {p}" for p in archives[:2]]
    assert [a.path for a in backup.list_archives(dest)] == archives


# --------------------------------------------------------------------------- restore safety


def test_restore_refuses_non_empty_target_without_force(
    home: Path,
    dest: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extraction: str,
) -> None:
    archive = backup.create_archive(home, dest)
    target = tmp_path / "live"
    target.mkdir()
    (target / "stale.txt").write_text("keep me unless forced\n", encoding="utf-8")

    code, out, err = run(capsys, "restore", "--archive", str(archive), "--codex-home", str(target))
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "--force" in err
    assert names(target) == ["stale.txt"]

    code, _, err = run(
        capsys, "restore", "--archive", str(archive), "--codex-home", str(target), "--force"
    )
    assert code == 0, err
    assert snapshot(target) == snapshot(home)  # stale file gone, everything else identical


def _malicious_archive(path: Path, kind: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("fine.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        evil = tarfile.TarInfo("placeholder")
        if kind == "dotdot":
            evil.name = "../evil"
            evil.size = 4
            tar.addfile(evil, io.BytesIO(b"evil"))
        elif kind == "nested-dotdot":
            evil.name = "sub/../../evil"
            evil.size = 4
            tar.addfile(evil, io.BytesIO(b"evil"))
        elif kind == "absolute":
            evil.name = "/tmp/quartproxy-evil"
            evil.size = 4
            tar.addfile(evil, io.BytesIO(b"evil"))
        elif kind == "symlink-absolute":
            evil.name = "passwd"
            evil.type = tarfile.SYMTYPE
            evil.linkname = "/etc/passwd"
            tar.addfile(evil)
        elif kind == "symlink-outside":
            evil.name = "sub/escape"
            evil.type = tarfile.SYMTYPE
            evil.linkname = "../../evil"
            tar.addfile(evil)
        elif kind == "hardlink-outside":
            evil.name = "hard"
            evil.type = tarfile.LNKTYPE
            evil.linkname = "../evil"
            tar.addfile(evil)
        elif kind == "device":
            evil.name = "null"
            evil.type = tarfile.CHRTYPE
            evil.devmajor, evil.devminor = 1, 3
            tar.addfile(evil)
        elif kind == "fifo":
            evil.name = "pipe"
            evil.type = tarfile.FIFOTYPE
            tar.addfile(evil)
        elif kind == "symlink-chain":
            # Each link looks harmless on its own; only resolving them shows the escape.
            # Caught by tarfile's data filter, the second line of defence.
            here = tarfile.TarInfo("here")
            here.type = tarfile.SYMTYPE
            here.linkname = "."
            tar.addfile(here)
            evil.name = "up"
            evil.type = tarfile.SYMTYPE
            evil.linkname = "here/.."
            tar.addfile(evil)
        else:  # pragma: no cover
            raise AssertionError(kind)
    return path


MALICIOUS = [
    "dotdot",
    "nested-dotdot",
    "absolute",
    "symlink-absolute",
    "symlink-outside",
    "hardlink-outside",
    "device",
    "fifo",
    "symlink-chain",
]


@pytest.mark.parametrize("kind", MALICIOUS)
def test_restore_rejects_malicious_archive(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], extraction: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = _malicious_archive(tmp_path / f"codex-home-20250101T000000Z-{kind}.tar.gz", kind)
    target = work / "codex-home"
    code, _, err = run(capsys, "restore", "--archive", str(archive), "--codex-home", str(target))
    assert code == 1
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "unsafe" in errors[0]
    # Nothing escaped and nothing was half-restored.
    assert not (work / "evil").exists() and not (tmp_path / "evil").exists()
    assert not Path("/tmp/quartproxy-evil").exists()
    assert not target.exists() or names(target) == []


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "device", "symlink-outside"])
def test_verify_flags_unsafe_members(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = _malicious_archive(tmp_path / "x.tar.gz", kind)
    write_sha256(archive)
    code, _, err = run(capsys, "verify", "--archive", str(archive))
    assert code == 1 and "unsafe" in err


# --------------------------------------------------------------------------- verify


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_accepts_a_good_archive(
    home: Path, dest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = backup.create_archive(home, dest)
    code, out, err = run(capsys, "verify", "--archive", str(archive))
    assert code == 0, err
    assert out.startswith(f"ok {archive} ")
    assert hashlib.sha256(archive.read_bytes()).hexdigest() in out


def test_verify_detects_corruption_by_checksum(
    home: Path, dest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = backup.create_archive(home, dest)
    _flip_byte(archive, archive.stat().st_size // 2)
    code, out, err = run(capsys, "verify", "--archive", str(archive))
    assert code == 1 and out == ""
    assert "checksum mismatch" in err and len(err.strip().splitlines()) == 1
    # restore checks the same checksum before touching anything
    target = tmp_path / "t"
    code, _, err = run(capsys, "restore", "--archive", str(archive), "--codex-home", str(target))
    assert code == 1 and "checksum mismatch" in err
    assert not target.exists()


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_verify_detects_corruption_by_reading(
    damage: str, home: Path, dest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = backup.create_archive(home, dest)
    if damage == "flip":
        _flip_byte(archive, archive.stat().st_size // 2)
    else:
        archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    write_sha256(archive)  # checksum agrees with the damaged bytes: only reading can tell
    code, _, err = run(capsys, "verify", "--archive", str(archive))
    assert code == 1
    assert "unreadable" in err and len(err.strip().splitlines()) == 1


def test_verify_requires_the_checksum_file(
    home: Path, dest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = backup.create_archive(home, dest)
    backup.checksum_path(archive).unlink()
    code, _, err = run(capsys, "verify", "--archive", str(archive))
    assert code == 1 and "no checksum file" in err


# --------------------------------------------------------------------------- usage


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["prune", "--dest", "x"],
        ["prune", "--keep", "0"],
        ["prune", "--keep", "two"],
        ["prune", "--max-age-days", "-1"],
        ["restore"],
        ["verify"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == "" and err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("create", "list", "prune", "restore", "verify"):
        assert command in out
