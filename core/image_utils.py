"""The CS231n and original repository's import path of the image helpers (core/data/image_utils.py),
with CS231n's `image_from_url`, which the original repository's inference.py imports."""
from core.data.image_utils import load_image, to_rgb8, try_load_image  # noqa: F401


def image_from_url(url):
    """An image (H, W, 3) uint8 RGB read from an http(s)/file URL or a path; None, said on one
    line, when it cannot be fetched or decoded (as CS231n's)."""
    image = try_load_image(url)
    if image is None:
        print(f"cannot read an image from {url}")
    return image
