"""AtomicWrite: atomic_path held open across calls; the destination changes only at the commit."""

import os

from caswit_geo.safeio import files
from caswit_geo.safeio.writes import AtomicWrite


def test_commit_flushes_then_renames_and_releases_the_folder(tmp_path, monkeypatch):
    flushed = []
    monkeypatch.setattr("caswit_geo.safeio.writes.fsync_file", lambda p: flushed.append(os.path.exists(p)))
    dest = tmp_path / "part.tif"
    write = AtomicWrite(dest, fsync=True)
    write.tmp.write_bytes(b"first")
    write.tmp.write_bytes(b"whole")  # written over many calls, under the temporary name
    assert not dest.exists() and write.tmp.parent == tmp_path and files.MARK in write.tmp.name
    assert write.commit() == dest
    assert dest.read_bytes() == b"whole" and flushed == [True]
    write.abort()  # after a commit: nothing to undo
    assert [p.name for p in tmp_path.iterdir()] == ["part.tif"]  # no temporary, no liveness lock


def test_abort_removes_the_temporary_and_keeps_the_destination(tmp_path):
    dest = tmp_path / "part.tif"
    dest.write_bytes(b"previous")
    write = AtomicWrite(dest)
    write.tmp.write_bytes(b"partial")
    write.abort()
    write.abort()
    assert dest.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["part.tif"]


def test_abort_during_a_full_disk_failure_does_not_raise(tmp_path):
    write = AtomicWrite(tmp_path / "part.tif")
    write.tmp.write_bytes(b"partial")
    try:
        raise OSError(28, "No space left on device")
    except OSError:
        write.abort()  # atomic_path judges the failure a full disk; abort still only cleans up
    assert list(tmp_path.iterdir()) == []
