"""Loading images from a URL or a local path, as 8-bit RGB whatever their mode."""
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
    return np.asarray(to_rgb8(image))


WHITE = (255, 255, 255)


def to_rgb8(image):
    """Any PIL image -> 8-bit RGB, with its values scaled, not clipped: 16-bit ("I;16*", and "I"
    holding 0..65535) by 255/65535; 32-bit integers and floats ("I", "F") from their own range, or
    0..1 for floats already in it; transparency ("RGBA", "LA", "P" with a transparent colour) over
    white; CMYK, YCbCr and the rest by PIL's own conversion. ValueError for an image with no
    pixels."""
    if image.width == 0 or image.height == 0:
        raise ValueError("the image has no pixels")
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or (image.mode == "I" and values.min() >= 0
                                             and values.max() <= 65535
                                               and values.max() > 255):
            low, high = 0.0, 65535.0
        elif image.mode == "F" and values.min() >= 0 and values.max() <= 1:
            low, high = 0.0, 1.0
        elif image.mode == "I" and values.min() >= 0 and values.max() <= 255:
            low, high = 0.0, 255.0
        else:
            finite = values[np.isfinite(values)]
            low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        scaled = np.nan_to_num((values - low) / max(high - low, 1e-12), nan=0.0, posinf=1.0,
                               neginf=0.0)
        pixels = np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)
        return Image.fromarray(pixels).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def try_load_image(location, timeout=5.0):
    """Like `load_image`, but None when the image cannot be had (offline, dead URL, missing
    file)."""
    try:
        return load_image(location, timeout=timeout)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
