"""Atomic writes: complete or absent, never half-written; normal permissions."""

import os
import stat

import pytest

from edgestem.atomic import atomic_path, write_json


def test_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out.h5"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_success_replaces_and_keeps_suffix(tmp_path):
    target = tmp_path / "sub" / "r.json"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".json" and tmp.parent == target.parent
    write_json(target, {"a": float("nan"), "b": (1, 2)})
    assert target.read_text().replace(" ", "").replace("\n", "") == '{"a":null,"b":[1,2]}'
    mode = stat.S_IMODE(os.stat(target).st_mode)
    assert mode == 0o666 & ~_umask()


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_a_swallowed_interrupt_blocks_the_commit(monkeypatch, tmp_path):
    """An interrupt whose exception a library swallowed still stops the rename, and leaves nothing."""
    import signal

    from edgestem import atomic

    target = tmp_path / "out.h5"
    with pytest.raises(KeyboardInterrupt), atomic.atomic_path(target) as tmp:
        tmp.write_text("complete")
        monkeypatch.setattr(atomic, "_received", signal.SIGTERM)
    assert not list(tmp_path.iterdir())


def test_os_errors_name_the_output(tmp_path):
    import errno

    from edgestem import atomic

    with pytest.raises(OSError) as info, atomic.atomic_path(tmp_path / "out.h5"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.filename == str(tmp_path / "out.h5") and not list(tmp_path.iterdir())
