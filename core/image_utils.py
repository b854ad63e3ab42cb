"""Loading images from a URL or a local path."""
import io
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image


def load_image(location, timeout=5.0):
    """Read an image from an http(s)/file URL or a local path.

    location: str URL or path -> uint8 array (H, W, 3) RGB.
    Raises OSError (or ValueError) when it cannot be fetched or decoded.
    """
    location = str(location)
    if location.startswith(("http://", "https://", "file://")):
        with urllib.request.urlopen(location, timeout=timeout) as response:
            data = response.read()
        image = Image.open(io.BytesIO(data))
    else:
        image = Image.open(Path(location))
    return np.asarray(image.convert("RGB"))


def try_load_image(location, timeout=5.0):
    """Like `load_image`, but None when the image cannot be had (offline, dead URL, missing file)."""
    try:
        return load_image(location, timeout=timeout)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
