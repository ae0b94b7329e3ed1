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
