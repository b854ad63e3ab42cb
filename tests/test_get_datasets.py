"""The download script against a local zip (file:// URL) and an unreachable server."""
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses, torchrun or VGG16 throughout

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "core" / "datasets" / "get_datasets.sh"


def run(url, dest, cwd, path=None):
    env = dict(os.environ, COCO_CAPTIONING_URL=url, COCO_CAPTIONING_DIR=str(dest))
    if path is not None:  # stand-in commands first
        env["PATH"] = f"{path}{os.pathsep}{env['PATH']}"
    return subprocess.run(["bash", str(SCRIPT)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_downloads_unpacks_and_skips_when_present(fake_coco, tmp_path):
    archive = tmp_path / "coco_captioning.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in fake_coco.iterdir():
            z.write(f, f"coco_captioning/{f.name}")
    dest = tmp_path / "datasets" / "coco_captioning"
    result = run(archive.as_uri(), dest, cwd=tmp_path)  # run from another directory
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in fake_coco.iterdir())
    assert [p.name for p in dest.parent.iterdir()] == ["coco_captioning"]  # no zip or temp folder left
    again = run("http://127.0.0.1:9/never-fetched.zip", dest, cwd=tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_what_a_killed_download_left_is_removed_by_the_next_run(tmp_path):
    """Break caught: .coco_download.* folders of killed downloads (up to ~1 GB each) kept for ever;
    one of a download still running is left alone."""
    parent = tmp_path / "datasets"
    stale = parent / ".coco_download.999999999.abcdef"  # no such process
    running = parent / f".coco_download.{os.getpid()}.ghijkl"
    for folder in (stale, running):
        folder.mkdir(parents=True)
        (folder / "coco_captioning.zip").write_bytes(b"part of a download")
    run("http://127.0.0.1:9/coco_captioning.zip", parent / "coco_captioning", cwd=tmp_path)
    assert sorted(p.name for p in parent.iterdir()) == [running.name]


def test_no_network_is_a_clear_failure_that_leaves_nothing(tmp_path):
    dest = tmp_path / "datasets" / "coco_captioning"
    result = run("http://127.0.0.1:9/coco_captioning.zip", dest, cwd=tmp_path)
    assert result.returncode != 0
    assert "could not download" in result.stderr
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_a_bad_archive_leaves_nothing(tmp_path):
    bogus = tmp_path / "bogus.zip"
    bogus.write_bytes(b"not a zip")
    dest = tmp_path / "datasets" / "coco_captioning"
    result = run(bogus.as_uri(), dest, cwd=tmp_path)
    assert result.returncode != 0 and "not a readable zip" in result.stderr
    assert list(dest.parent.iterdir()) == []


def test_a_download_into_a_folder_with_other_files_keeps_them(fake_coco, tmp_path):
    """Break caught: the script ran `rm -rf` on a destination without coco2014_captions.h5 and
    deleted the user's own files there (their train2014/ images, notes), then said all was ready."""
    archive = tmp_path / "coco_captioning.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in fake_coco.iterdir():
            z.write(f, f"coco_captioning/{f.name}")
    dest = tmp_path / "mine"
    (dest / "train2014").mkdir(parents=True)
    (dest / "train2014" / "COCO_train2014_000000000009.jpg").write_bytes(b"an image of mine")
    (dest / "notes.txt").write_text("my notes")
    (dest / "coco2014_vocab.json").write_text("an older copy of the archive's own file")
    result = run(archive.as_uri(), dest, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (dest / "train2014" / "COCO_train2014_000000000009.jpg").read_bytes() == b"an image of mine"
    assert (dest / "notes.txt").read_text() == "my notes"
    for f in fake_coco.iterdir():  # every file of the archive, the older copy replaced
        assert (dest / f.name).read_bytes() == f.read_bytes(), f.name
    # break caught: "the 3 entries already there were kept" where the older copy was replaced
    assert "1 of them replacing same-named files; the 2 other entries already there were kept" in result.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".coco_download")] == []


def test_a_destination_that_is_a_file_is_refused(tmp_path):
    dest = tmp_path / "coco_captioning"
    dest.write_text("not a folder")
    result = run("http://127.0.0.1:9/never-fetched.zip", dest, cwd=tmp_path)
    assert result.returncode != 0 and "is not a folder" in result.stderr
    assert dest.read_text() == "not a folder"


def _archive(fake_coco, tmp_path):
    archive = tmp_path / "coco_captioning.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in fake_coco.iterdir():
            z.write(f, f"coco_captioning/{f.name}")
    return archive


def test_a_folder_named_like_one_of_the_archives_files_is_refused(fake_coco, tmp_path):
    """Break caught: the archive's train2014_urls.txt moved inside the user's folder of that name,
    and success reported."""
    dest = tmp_path / "mine"
    (dest / "train2014_urls.txt").mkdir(parents=True)
    (dest / "train2014_urls.txt" / "mine.txt").write_text("my file")
    result = run(_archive(fake_coco, tmp_path).as_uri(), dest, cwd=tmp_path)
    assert result.returncode != 0 and "train2014_urls.txt is not a file, but the archive has a file" in result.stderr
    assert sorted(p.name for p in dest.rglob("*")) == ["mine.txt", "train2014_urls.txt"]  # nothing changed


@pytest.mark.parametrize("command, code, message", [
    ("curl", 23, "could not write the download into"),
    ("unzip", 50, "could not unpack the archive into"),
])
def test_a_full_disk_is_said_as_such(fake_coco, tmp_path, command, code, message):
    """A stand-in curl or unzip that fails as a full disk makes them fail. Break caught: a full
    disk reported as "no network access, or the server is down" and "not a readable zip
    archive"."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / command).write_text(f"#!/bin/sh\nexit {code}\n")
    (bin_dir / command).chmod(0o755)
    dest = tmp_path / "datasets" / "coco_captioning"
    result = run(_archive(fake_coco, tmp_path).as_uri(), dest, cwd=tmp_path, path=bin_dir)
    assert result.returncode != 0 and message in result.stderr and "is the disk full?" in result.stderr
    assert not dest.exists()


IMAGENET_SCRIPT = ROOT / "core" / "datasets" / "get_imagenet_val.sh"


def _imagenet(url, dest, cwd, path=None):
    env = dict(os.environ, IMAGENET_VAL_URL=url, IMAGENET_VAL_FILE=str(dest))
    if path is not None:
        env["PATH"] = f"{path}{os.pathsep}{env['PATH']}"
    return subprocess.run(["bash", str(IMAGENET_SCRIPT)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_imagenet_val_file_downloads_whole_or_not_at_all(tmp_path):
    """core/datasets/get_imagenet_val.sh against a file made in its format (file:// URL), no network,
    a file that is not one, and a full disk (a stand-in curl). Breaks caught: a part left at the
    destination, a bad file accepted, a full disk reported as the network."""
    import numpy as np

    good = tmp_path / "src.npz"
    np.savez(good, X=np.zeros((2, 4, 4, 3), np.uint8), y=np.array([0, 1]),
             label_map=np.array({0: "tench", 1: "goldfish"}, dtype=object))
    dest = tmp_path / "datasets" / "imagenet_val_25.npz"
    result = _imagenet(good.as_uri(), dest, tmp_path)
    assert result.returncode == 0 and dest.read_bytes() == good.read_bytes(), result.stderr
    assert "nothing to do" in _imagenet("http://127.0.0.1:9/x.npz", dest, tmp_path).stdout
    dest.unlink()
    offline = _imagenet("http://127.0.0.1:9/x.npz", dest, tmp_path)
    assert offline.returncode != 0 and "could not download" in offline.stderr
    bogus = tmp_path / "bogus.npz"
    bogus.write_bytes(b"not an npz")
    result = _imagenet(bogus.as_uri(), dest, tmp_path)
    assert result.returncode != 0 and "is not CS231n's imagenet_val_25.npz" in result.stderr
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text("#!/bin/sh\nexit 23\n")
    (bin_dir / "curl").chmod(0o755)
    full = _imagenet(good.as_uri(), dest, tmp_path, path=bin_dir)
    assert full.returncode != 0 and "is the disk full?" in full.stderr
    assert sorted(p.name for p in dest.parent.iterdir()) == []  # no part, no file
