import pytest

from seg2sat import atomic


def test_atomic_path_renames_only_on_success(tmp_path):
    target = tmp_path / "a" / "out.txt"
    with pytest.raises(ValueError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise ValueError("boom")
    assert not target.exists() and list(target.parent.iterdir()) == []
    atomic.write_json(target, {"x": 1})
    assert target.read_text() == '{\n  "x": 1\n}\n'


def test_atomic_dir_and_sweep(tmp_path):
    dest = tmp_path / "ckpt"
    with atomic.atomic_dir(dest) as d:
        (d / "w.bin").write_bytes(b"1")
        assert not dest.exists()
    assert (dest / "w.bin").read_bytes() == b"1"
    with pytest.raises(FileExistsError, match="ckpt: already exists"):
        with atomic.atomic_dir(dest):
            pass
    with atomic.atomic_dir(dest, overwrite=True) as d:
        (d / "w.bin").write_bytes(b"2")
    assert (dest / "w.bin").read_bytes() == b"2"
    (tmp_path / ".tmp-dead-x").mkdir()
    (tmp_path / ".tmp-dead-y.png").write_bytes(b"")
    assert atomic.sweep_tmp(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_failed_write_is_one_line_naming_the_folder(tmp_path):
    import errno
    import sqlite3

    from seg2sat.errors import DiskFullError, WriteError

    full = atomic.write_failure(OSError(errno.ENOSPC, "No space left on device"), tmp_path, 3_200_000)
    assert isinstance(full, DiskFullError) and str(full) == f"{tmp_path}: no space left on device (needs about 3.2 MB)"
    for exc in (sqlite3.OperationalError("database or disk is full"),
                RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")):
        assert isinstance(atomic.write_failure(exc, tmp_path), DiskFullError)
    read_only = atomic.write_failure(OSError(errno.EROFS, "Read-only file system"), tmp_path)
    assert type(read_only) is WriteError and str(read_only) == f"{tmp_path}: read-only file system; cannot write there"
    assert atomic.write_failure(ValueError("bad value"), tmp_path) is None  # not a write failure: raised as it is
    assert atomic.write_failure(RuntimeError("file write failed"), tmp_path) is None  # a roomy disk: not "full"
    with pytest.raises(DiskFullError, match=r"needs about 0\.1 MB"):
        with atomic.atomic_path(tmp_path / "x.json", needed=100_000) as tmp:
            tmp.write_text("{")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_pre_flight_refuses_a_folder_clearly_short_and_says_what_the_run_needs(tmp_path):
    from seg2sat.errors import DiskFullError

    out = tmp_path / "out"
    free = atomic.free_bytes(tmp_path)
    assert atomic.check_space(out, free // 2) > free // 4 and out.is_dir() and not list(out.iterdir())
    needed = 10 * free
    with pytest.raises(DiskFullError, match=rf"^{out}: no space left on device \(needs about \d+ MB\)$"):
        atomic.check_space(out, needed, probe=False)
    # a write under the folder that meets a full disk reports the run's need, not its own
    assert str(atomic.disk_full(out / "sub", 10)) == str(atomic.disk_full(out, needed))
    assert "clearly too little" in atomic.space_line(out, needed) and "(enough)" in atomic.space_line(out, 1)
