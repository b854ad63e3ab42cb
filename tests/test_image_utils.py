"""Images of every PIL mode reach VGG16 and the figures as 8-bit RGB with their values scaled."""
import numpy as np
import pytest
from PIL import Image

from core.data.features import _ImageFiles
from core.data.image_utils import load_image, to_rgb8


def _gray(image):
    rgb = np.asarray(to_rgb8(image))
    assert rgb.dtype == np.uint8 and rgb.shape == image.size[::-1] + (3,)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    return rgb[..., 0].tolist()


def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    """Breaks caught: a 16-bit grayscale PNG turned white and a float TIFF black (PIL's mode
    conversion clips to 0..255 instead of scaling)."""
    sixteen = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    assert _gray(Image.open(tmp_path / "g16.png")) == [[0, 1, 128, 255]]
    assert load_image(tmp_path / "g16.png")[0, :, 0].tolist() == [0, 1, 128, 255]
    unit = Image.fromarray(np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32), mode="F")
    unit.save(tmp_path / "f.tiff")
    assert _gray(Image.open(tmp_path / "f.tiff")) == [[0, 64, 128, 255]]
    wide = Image.fromarray(np.array([[-1.0, 0.0, 1.0, 3.0]], dtype=np.float32), mode="F")
    assert _gray(wide) == [[0, 64, 128, 255]]  # its own range
    assert _gray(Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32), mode="I")) == [[0, 100, 255]]


def test_transparent_images_are_shown_over_white_and_cmyk_converts():
    la = Image.fromarray(np.array([[[0, 0], [0, 255]]], dtype=np.uint8), mode="LA")  # transparent, opaque black
    assert _gray(la) == [[255, 0]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    assert np.asarray(to_rgb8(palette)).tolist() == [[[255, 255, 255], [200, 10, 10]]]
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))  # pure red in ink
    assert np.asarray(to_rgb8(cmyk)).tolist() == [[[255, 0, 0]]]


def test_vgg16_sees_the_scaled_image(tmp_path):
    Image.fromarray(np.array([[0, 65535], [65535, 0]], dtype=np.uint16)).save(tmp_path / "g16.png")
    tensor, _, error = _ImageFiles([tmp_path / "g16.png"])[0]
    assert error == "" and float(tensor.max() - tensor.min()) > 3  # black and white, not one blank colour


def test_an_image_without_pixels_is_a_value_error():
    with pytest.raises(ValueError, match="no pixels"):
        to_rgb8(Image.new("RGB", (0, 0)))


def test_captions_no_installed_font_can_draw_are_said_once_without_glyph_warnings(tmp_path, recwarn):
    """Break caught: Han/kana captions drawn as boxes with one raw matplotlib warning per glyph."""
    from core.evaluation import plots

    notes = []
    titles = ["GT: 猫 が いる", "lstm: 犬 が いる"]
    families, missing = plots.title_fonts(titles, notes.append)
    if not missing:
        pytest.skip(f"this machine has a font for them ({families[-1]})")
    plots.save_caption_grid([np.zeros((4, 4, 3), np.uint8)] * 2, titles, tmp_path / "f.png", log=notes.append)
    assert len(notes) == 2 and all("no installed font has the characters" in n for n in notes)
    assert "いがる犬猫 of these captions" in notes[0]
    assert not [w for w in recwarn if "Glyph" in str(w.message)]
    assert (tmp_path / "f.png").stat().st_size > 1000
    assert plots.title_fonts(["a small red circle, café"], notes.append) == (["DejaVu Sans"], False)
