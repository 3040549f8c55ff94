"""Atomic files and directories: the target is the old one or the complete new one, never partial."""

import os
import signal
import stat

import pytest

from steerlab.errors import SteerlabError
from steerlab.io.atomic import atomic_dir, atomic_path, write_json
from steerlab.signals import Terminated, sigterm_as_interrupt


def _names(path):
    return sorted(p.name for p in path.iterdir())


def test_atomic_dir_creates_and_replaces_whole(tmp_path):
    target = tmp_path / "out" / "adapter"
    with atomic_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".adapter.") and not target.exists()
        (tmp / "a.txt").write_text("one")
    assert _names(target) == ["a.txt"] and _names(target.parent) == ["adapter"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~_umask()  # not mkdtemp's 0700
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("two")
        assert _names(target) == ["a.txt"]  # the old one stays until the body finished
    assert _names(target) == ["b.txt"] and _names(target.parent) == ["adapter"]


def test_atomic_dir_failure_leaves_the_target_as_it_was(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("new")
        raise KeyboardInterrupt
    assert _names(tmp_path) == ["adapter"] and (target / "keep.txt").read_text() == "old"
    with pytest.raises(ValueError), atomic_dir(tmp_path / "fresh"):
        raise ValueError
    assert _names(tmp_path) == ["adapter"]


def test_atomic_dir_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SteerlabError, match=r"f: exists and is not a directory"), atomic_dir(tmp_path / "f"):
        pass
    assert (tmp_path / "f").read_text() == "x"


def test_atomic_path_and_write_json(tmp_path):
    target = tmp_path / "sub" / "x.json"
    write_json(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n'
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError
    assert target.read_text() == '{\n  "a": 1\n}\n' and _names(target.parent) == ["x.json"]


def test_sigterm_inside_cleans_the_temp_directory_and_restores_the_handler(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated, match="SIGTERM"), sigterm_as_interrupt(), atomic_dir(tmp_path / "d") as tmp:
        (tmp / "half").write_text("x")
        os.kill(os.getpid(), signal.SIGTERM)
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == previous
    assert issubclass(Terminated, KeyboardInterrupt)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
