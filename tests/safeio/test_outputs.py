"""Output sets, claims and stale litter: outputs appear together or not at all, inputs are never replaced."""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from caswit_geo.core.errors import OutputError
from caswit_geo.safeio import claims
from caswit_geo.safeio import outputs as outputs_module
from caswit_geo.safeio.files import rename_noreplace
from caswit_geo.safeio.liveness import owner_alive, process_token
from caswit_geo.safeio.outputs import OutputSet, system_folder
from caswit_geo.safeio.sweep import sweep_stale
from caswit_geo.safeio.writes import write_text

REPO = Path(__file__).resolve().parents[2]


def listing(folder):
    return sorted(p.name for p in Path(folder).iterdir())


def test_outputs_appear_together_and_leave_nothing_else(tmp_path):
    with OutputSet() as outs:
        a = outs.add(tmp_path / "a.tif")
        b = outs.add(tmp_path / "b.json", "--report")
        outs.temp(a).write_bytes(b"A")
        outs.temp(b).write_text("B")
        hidden = [n for n in listing(tmp_path) if n.startswith(".")]
        assert any(n.endswith(".lock") for n in hidden) and any(n.endswith(".caswit-claim") for n in hidden)
        assert not a.exists() and not b.exists()  # nothing at the destination before the commit
        assert outs.commit() == [a, b]
    assert listing(tmp_path) == ["a.tif", "b.json"]
    assert a.read_bytes() == b"A" and b.read_text() == "B"


def test_error_inside_the_set_leaves_the_folder_as_it_was(tmp_path):
    (tmp_path / "keep.tif").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="model failed"):
        with OutputSet(overwrite=True) as outs:
            dest = outs.add(tmp_path / "keep.tif")
            outs.temp(dest).write_bytes(b"new")
            raise RuntimeError("model failed")
    assert listing(tmp_path) == ["keep.tif"] and (tmp_path / "keep.tif").read_bytes() == b"old"


@pytest.mark.parametrize("folder, expected", [
    ("/dev", "/dev"), ("/dev/shm", "/dev"), ("/proc/self", "/proc"), ("/sys/kernel", "/sys"), ("/etc", "/etc"),
    ("/usr/bin", "/usr/bin"), ("/", "/"), ("/usr/local/share", None), ("/var/tmp", None), ("/tmp", None),
    ("/devices", None),  # a folder whose name only starts like one
])
def test_system_folders(folder, expected):
    assert system_folder(folder) == expected


def test_no_output_in_a_system_folder_or_onto_a_device(tmp_path):
    (tmp_path / "dev").symlink_to("/dev")
    for dest in ("/dev/caswit-x.tif", tmp_path / "dev" / "caswit-x.tif", "/etc/caswit-x.tif"):
        with pytest.raises(OutputError, match="system folder"):
            OutputSet(overwrite=True).check(dest, "--out")
    with pytest.raises(OutputError, match="is a device, FIFO or socket"):
        OutputSet(overwrite=True).check(tmp_path / "dev" / "null", "--out")
    os.mkfifo(tmp_path / "fifo.tif")
    with pytest.raises(OutputError, match="fifo.tif: exists and is a device, FIFO or socket"):
        OutputSet(overwrite=True).check(tmp_path / "fifo.tif", "--out")


def test_an_updated_destination_may_exist_and_is_replaced_by_its_copy(tmp_path):
    (tmp_path / "v.gpkg").write_bytes(b"old")
    with pytest.raises(OutputError, match="exists"):
        OutputSet().check(tmp_path / "v.gpkg", "--vector")
    outs = OutputSet()
    dest = outs.add(tmp_path / "v.gpkg", "--vector", update=True)
    outs.temp(dest).write_bytes(b"old + our layer")
    outs.commit()
    assert dest.read_bytes() == b"old + our layer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.gpkg"]


def test_existing_destination_needs_overwrite(tmp_path):
    (tmp_path / "out.tif").write_bytes(b"old")
    with pytest.raises(OutputError, match=r"--out .*out.tif: exists \(pass --overwrite"):
        OutputSet().add(tmp_path / "out.tif")
    with OutputSet(overwrite=True) as outs:
        d = outs.add(tmp_path / "out.tif")
        outs.temp(d).write_bytes(b"new")
        outs.commit()
    assert (tmp_path / "out.tif").read_bytes() == b"new"
    assert listing(tmp_path) == ["out.tif"]


@pytest.mark.parametrize("alias", ["same", "symlink", "hardlink", "dotdot"])
def test_an_output_never_replaces_an_input_even_with_overwrite(tmp_path, alias):
    image = tmp_path / "images" / "tile.tif"
    image.parent.mkdir()
    image.write_bytes(b"ortho")
    dest = {
        "same": image,
        "symlink": tmp_path / "link.tif",
        "hardlink": tmp_path / "hard.tif",
        "dotdot": tmp_path / "images" / ".." / "images" / "tile.tif",
    }[alias]
    if alias == "symlink":
        dest.symlink_to(image)
    if alias == "hardlink":
        os.link(image, dest)
    with pytest.raises(OutputError, match="never replace an input"):
        OutputSet(overwrite=True, inputs=[image]).add(dest, "--save-predictions")
    assert image.read_bytes() == b"ortho"


def test_a_folder_output_holding_an_input_is_refused(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.tif").write_bytes(b"x")
    with pytest.raises(OutputError, match="holds the input"):
        OutputSet(overwrite=True, inputs=[images / "a.tif"]).add(images, "--save-predictions", folder=True)


def test_folder_outputs_are_staged_and_renamed(tmp_path):
    (tmp_path / "preds").mkdir()
    (tmp_path / "preds" / "old.tif").write_bytes(b"old")
    with OutputSet(overwrite=True) as outs:
        d = outs.add(tmp_path / "preds", folder=True)
        stage = outs.temp(d, "")
        stage.mkdir()
        (stage / "new.tif").write_bytes(b"new")
        outs.commit()
    assert listing(tmp_path / "preds") == ["new.tif"] and listing(tmp_path) == ["preds"]


def test_a_destination_that_appears_meanwhile_is_not_replaced(tmp_path):
    with OutputSet() as outs:
        d = outs.add(tmp_path / "out.tif")
        outs.temp(d).write_bytes(b"mine")
        (tmp_path / "out.tif").write_bytes(b"someone else's")  # e.g. written by another tool
        with pytest.raises(OutputError, match="appeared while this run worked"):
            outs.commit()
    assert (tmp_path / "out.tif").read_bytes() == b"someone else's"
    assert listing(tmp_path) == ["out.tif"]


def test_a_failed_rename_rolls_back_every_output(tmp_path, monkeypatch):
    for name in ("a.tif", "b.tif"):
        (tmp_path / name).write_bytes(b"old " + name.encode())
    real = rename_noreplace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(outputs_module, "rename_noreplace", flaky)
    with OutputSet(overwrite=True) as outs:
        for name in ("a.tif", "b.tif"):
            d = outs.add(tmp_path / name)
            outs.temp(d).write_bytes(b"new")
        with pytest.raises(OSError):
            outs.commit()
    assert listing(tmp_path) == ["a.tif", "b.tif"]
    assert (tmp_path / "a.tif").read_bytes() == b"old a.tif" and (tmp_path / "b.tif").read_bytes() == b"old b.tif"


def test_rename_noreplace_refuses_files_and_folders(tmp_path):
    (tmp_path / "src").write_text("s")
    (tmp_path / "dst").write_text("d")
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "src", tmp_path / "dst")
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()  # rename(2) would replace an empty folder
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "d1", tmp_path / "d2")
    rename_noreplace(tmp_path / "src", tmp_path / "new")
    assert (tmp_path / "new").read_text() == "s" and not (tmp_path / "src").exists()


def test_atomic_write_leaves_no_lock_or_temporary(tmp_path):
    write_text(tmp_path / "x.json", "{}")
    assert listing(tmp_path) == ["x.json"]


# -- another process: claims and the litter of a killed run ------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from caswit_geo.safeio.outputs import OutputSet, system_folder
    outs = OutputSet()
    dest = outs.add(Path(sys.argv[1]))
    outs.temp(dest).write_bytes(b"half a raster")
    print("ready", flush=True)
    time.sleep(600)
    """
)


@pytest.fixture
def holder(tmp_path):
    dest = tmp_path / "map.tif"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(dest)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    yield proc, dest
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_live_claim_stops_a_second_run_and_names_the_owner(holder):
    proc, dest = holder
    with pytest.raises(OutputError, match=rf"another run is writing it \(caswit-geo pid {proc.pid} on "):
        OutputSet().add(dest)
    with pytest.raises(OutputError, match="another run is writing it"):
        OutputSet(overwrite=True).add(dest)  # --overwrite does not take a live run's output


def test_the_litter_of_a_killed_run_is_removed_by_the_next_one(holder):
    proc, dest = holder
    litter = [n for n in listing(dest.parent) if n.startswith(".")]
    assert len(litter) == 3  # its lock, its claim, its temporary raster
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with OutputSet() as outs:  # the owner is provably dead: its claim is taken over, its files swept
        d = outs.add(dest)
        dead = [n for n in litter if not n.endswith(".caswit-claim")]
        assert not any(n in listing(dest.parent) for n in dead)
        assert claims.read_owner(claims.claim_path(dest)) == process_token()
        outs.temp(d).write_bytes(b"complete")
        outs.commit()
    assert listing(dest.parent) == ["map.tif"]


def test_sweep_never_touches_a_live_run(holder):
    proc, dest = holder
    before = listing(dest.parent)
    assert sweep_stale(dest.parent) == []
    assert listing(dest.parent) == before
    assert claims.read_owner(claims.claim_path(dest)) is not None


# -- missing folders, cleared destinations, claims without a destination ------------------------


def test_missing_folders_are_created_at_commit_only(tmp_path):
    dest = tmp_path / "a" / "b" / "report.json"
    with OutputSet() as outs:
        outs.add(dest, "--out-dir", create_parents=True)
        outs.temp(dest).write_text("{}")
        assert not (tmp_path / "a").exists()  # nothing but hidden files before the commit
        assert claims.read_owner(claims.claim_path(tmp_path / "a")) == process_token()
        outs.commit()
    assert dest.read_text() == "{}" and listing(tmp_path) == ["a"] and listing(dest.parent) == ["report.json"]


def test_a_failed_commit_removes_the_folders_it_made(tmp_path, monkeypatch):
    (tmp_path / "b.tif").write_bytes(b"old")
    monkeypatch.setattr(outputs_module, "rename_noreplace", lambda src, dst: (_ for _ in ()).throw(OSError(5, "EIO")))
    with OutputSet(overwrite=True) as outs:
        d = outs.add(tmp_path / "new" / "a.tif", create_parents=True)
        outs.temp(d).write_bytes(b"A")
        with pytest.raises(OSError, match="EIO"):
            outs.commit()
    assert listing(tmp_path) == ["b.tif"]


def test_a_cleared_destination_the_command_does_not_write_is_removed(tmp_path):
    for name in ("last.pt", "reconstructions.png", "notes.txt"):
        (tmp_path / name).write_text("old run")
    with OutputSet(overwrite=True) as outs:
        state = outs.add(tmp_path / "last.pt", clear=True)
        outs.add(tmp_path / "reconstructions.png", clear=True)  # the new run draws no figure
        outs.temp(state).write_text("new run")
        assert (tmp_path / "reconstructions.png").read_text() == "old run"  # still there before the commit
        outs.commit()
    assert listing(tmp_path) == ["last.pt", "notes.txt"] and (tmp_path / "last.pt").read_text() == "new run"


def test_a_claim_without_a_destination_stops_a_second_claim(tmp_path):
    with OutputSet() as first:
        first.claim(tmp_path / "preds", "--save-predictions")
        with pytest.raises(OutputError, match="--save-predictions .*preds: named twice"), OutputSet() as second:
            second.claim(tmp_path / "preds", "--save-predictions")  # the same process: named twice
    assert listing(tmp_path) == []


KILLED_MID_COMMIT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from caswit_geo.safeio import outputs
    from caswit_geo.safeio.outputs import OutputSet, system_folder

    def killed(src, dst):  # the old output is already moved aside: die before the new one is in place
        os.kill(os.getpid(), signal.SIGKILL)

    outputs.rename_noreplace = killed
    outs = OutputSet(overwrite=True)
    dest = outs.add(Path(sys.argv[1]))
    outs.temp(dest).write_bytes(b"new")
    outs.commit()
    """
)


FORKER = textwrap.dedent(
    """
    import os, sys, time
    from caswit_geo.safeio.liveness import process_token
    from caswit_geo.safeio.sweep import hold_folder
    hold_folder(sys.argv[1])
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:  # a reader process, like a DataLoader worker: outlives a killed parent a while
        os.write(ready_w, b"x")  # the fork handlers have run
        time.sleep(60)
        os._exit(0)
    os.read(ready_r, 1)
    print(process_token(), child, flush=True)
    time.sleep(600)
    """
)


def test_an_output_moved_aside_by_a_killed_commit_is_put_back(tmp_path):
    dest = tmp_path / "map.tif"
    dest.write_bytes(b"the previous map")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_COMMIT, str(dest)], env=env)
    assert proc.returncode == -signal.SIGKILL
    assert not dest.exists() and any(n.endswith(".part.old") for n in listing(tmp_path))
    sweep_stale(tmp_path)  # what the next run writing in this folder does first
    assert listing(tmp_path) == ["map.tif"] and dest.read_bytes() == b"the previous map"


def test_a_killed_owner_is_dead_even_while_its_forked_children_live(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", FORKER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    token, child = proc.stdout.readline().split()
    try:
        assert owner_alive(tmp_path, token)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        os.kill(int(child), 0)  # the child is still running
        assert not owner_alive(tmp_path, token)  # its inherited copy of the lock was closed at the fork
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child), signal.SIGKILL)
