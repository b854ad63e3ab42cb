import pytest

from core.datasets.make_fake_coco import write_fake_coco


@pytest.fixture(scope="session")
def fake_coco(tmp_path_factory):
    """A small dataset in the CS231n layout (60/20 images, 300/100 captions, 40 words, 64-d fc7, 4 regions
    of 8-d grid features, 2 to 5 boxes of 8-d features), with PNG images for the URLs."""
    root = tmp_path_factory.mktemp("fake_coco")
    return write_fake_coco(root / "data", fc7_dim=64, image_dir=root / "images", grid=(4, 8), boxes=(5, 8),
                           seed=0)


@pytest.fixture(autouse=True)
def no_java_in_the_fast_subset(request, monkeypatch):
    """The fast subset starts no Java: METEOR (a Java subprocess, seconds per scoring) is skipped in
    tests not marked slow, which then check the other metrics; tests/test_evaluation.py's slow test
    scores METEOR itself, and the scripts' subprocess tests run it as a user would."""
    if request.node.get_closest_marker("slow") is None:
        import core.evaluation.metrics

        monkeypatch.setattr(core.evaluation.metrics, "java_available", lambda: False)


@pytest.fixture(autouse=True)
def all_cores_in_the_fast_subset(request, monkeypatch):
    """The fast subset does not measure the idle cores (0.1 s of /proc/stat a script run) but uses
    them all, as the scripts did before they chose; tests/test_cli_threads.py measures, and the
    slow subset's script runs measure as a user's do."""
    if request.node.get_closest_marker("slow") is None and "test_cli_threads" not in request.node.nodeid:
        import core.util.cli

        monkeypatch.setattr(core.util.cli, "idle_cores", lambda seconds=0.1: None)
