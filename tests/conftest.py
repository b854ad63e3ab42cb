import pytest

from core.datasets.make_fake_coco import write_fake_coco


@pytest.fixture(scope="session")
def fake_coco(tmp_path_factory):
    """A small dataset in the CS231n layout (60/20 images, 300/100 captions, 40 words, 64-d fc7, 4 regions
    of 8-d grid features), with PNG images for the URLs."""
    root = tmp_path_factory.mktemp("fake_coco")
    return write_fake_coco(root / "data", fc7_dim=64, image_dir=root / "images", grid=(4, 8), seed=0)
