"""pipeline.files: outputs appear whole or not at all, under names no two writers share."""

import subprocess
import sys

import pytest

from pipeline import files


@pytest.fixture
def unbound():
    yield
    files._owner = None


def test_a_failed_block_leaves_nothing_and_names_are_unique(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), files.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    with files.atomic_path(target) as one, files.atomic_path(target) as two:
        assert one != two and one.parent == two.parent == tmp_path
        one.write_text("1")
        two.write_text("2")
    assert target.read_text() == "1" and list(tmp_path.iterdir()) == [target]   # the first to leave wins


def test_leftovers_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".models.{dead}-0123abcd.tmp"
    live = tmp_path / ".models.1-0123abcd.tmp"         # pid 1 always runs
    stale.mkdir()
    live.mkdir()
    with files.atomic_path(tmp_path / "models") as tmp:
        tmp.mkdir()
    assert not stale.exists() and live.exists() and (tmp_path / "models").is_dir()


def test_a_writer_whose_owner_has_exited_renames_nothing(tmp_path, unbound):
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    files.bind_to(owner.pid)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "kept").write_text("the later run's")
    with files.atomic_paths(tmp_path / "models", tmp_path / "m.json") as (models, metrics):
        models.mkdir()
        metrics.write_text("{}")
    assert (tmp_path / "m.json").exists()                # owner alive: written
    owner.kill()
    owner.wait()
    with pytest.raises(files.OrphanedWriter, match=rf"models: not written — the process that started this "
                                                   rf"stage \(pid {owner.pid}\) has exited"):
        with files.atomic_paths(tmp_path / "models", tmp_path / "p.json") as (models, predictions):
            models.mkdir()
            predictions.write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "models"]
