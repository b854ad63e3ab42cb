"""The download script against a local zip (file:// URL) and an unreachable server."""
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses, torchrun or VGG16 throughout

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "core" / "datasets" / "get_datasets.sh"


def run(url, dest, cwd):
    env = dict(os.environ, COCO_CAPTIONING_URL=url, COCO_CAPTIONING_DIR=str(dest))
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
