"""The results page (core/evaluation/page.py): escaped data, per-image CIDEr-D, each word's
regions, whole replacement and ownership; in headless chromium (slow): every image loaded, the
captions in the DOM, markup in data shown as text, sorting, filtering and attention; and the
attention figure's bounded size."""
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from core.data.feature_kinds import FEATURE_KINDS
from core.data.regions import Regions, region_boxes
from core.evaluation import page as P
from core.evaluation.metrics import score_captions
from core.util.errors import UserError
from core.util.fileio import check_owner
from tests import browser

EVIL = "<script>document.title='pwned'</script>"


class Cards(HTMLParser):
    """The DOM's result cards in document order: attributes, text, and the regions drawn."""

    def __init__(self, text):
        super().__init__()
        self.cards, self.depth, self.title = [], 0, None
        self._in_title = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "title":
            self._in_title = True
        if tag == "article":
            self.cards.append({**attrs, "text": "", "regions": [], "images": []})
            self.depth = 1
        elif self.depth:
            self.depth += tag not in ("img", "input")
            if tag == "img":
                self.cards[-1]["images"].append(attrs["src"])
            if "region" in attrs.get("class", ""):
                self.cards[-1]["regions"].append(attrs)

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        if self.depth and tag not in ("img", "input"):
            self.depth -= 1

    def handle_data(self, data):
        if self._in_title:
            self.title = data
        if self.depth:
            self.cards[-1]["text"] += data


def scene(colour, size=96):
    image = np.full((size, size, 3), 120, np.uint8)
    image[20:50, 30:70] = colour
    return image


def entries():
    """Four images: three with pictures (one carrying markup in its name and a reference), one
    known only by a URL; two equal a reference; the last has attention over two boxes."""
    return [
        {"location": "a/one.png", "image": scene((255, 0, 0)), "caption": "a red square",
         "references": ["a red square", "a square"], "cider": 2.5, "exact": True, "label": "val"},
        {"location": f"b/{EVIL}.jpg", "image": scene((0, 0, 255)), "caption": "a green <circle>",
         "references": [EVIL, "a blue square"], "cider": 0.25, "exact": False, "label": EVIL},
        {"location": "https://example.invalid/three.jpg", "image": None,
         "caption": "a large triangle", "references": ["a small triangle"], "cider": 1.0,
         "exact": False},
        {"location": "d/four.png", "image": scene((0, 200, 0), 64), "caption": "a small circle",
         "references": ["a small circle"], "cider": 4.0, "exact": True,
         "alpha": np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.7, 0.3]]),
         "boxes": np.array([[0.1, 0.2, 0.5, 0.6], [0.5, 0.5, 1.0, 1.0]]), "heat_map": False},
    ]


def write(tmp_path, items=None, owner="m.npz"):
    return P.write_results_page(tmp_path / "m_val_greedy_eval.json", items or entries(),
                                f"title {EVIL}", [f"about {EVIL}"], tmp_path / owner,
                                scores="CIDEr 1.0", log=lambda *a: None)


def test_every_text_from_data_is_escaped_and_the_page_names_its_checkpoint(tmp_path):
    """Breaks caught: a caption, reference, name, label, title or about line written unescaped;
    a javascript: URL made a link; the page not recording its checkpoint."""
    page = write(tmp_path)
    assert page == tmp_path / "m_val_greedy_eval.html"
    text = page.read_text()
    assert text.count("<script") == 2  # the page's own two: its data and its code
    assert '<span class="word">&lt;circle&gt;</span>' in text and "<circle>" not in text
    # the title and heading, the about line, the label, the name (shown and the image's alt),
    # the reference shown and the list's
    assert text.count("&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;") == 8
    data = re.search(r'<script type="application/json" id="attention">(.*?)</script>', text, re.S)
    assert json.loads(data.group(1)) == {"3": {"alpha": entries()[3]["alpha"].tolist(),
                                               "boxes": entries()[3]["boxes"].tolist(),
                                               "heat_map": False}}
    script_link = [{"location": "javascript://%0Aalert(1)", "caption": "a", "image": None}]
    linked = write(tmp_path, script_link, owner="m.npz").read_text()
    assert "<a href" not in linked and "(image not available: javascript://%0Aalert(1))" in linked
    page = write(tmp_path)
    with pytest.raises(UserError, match="belongs to the run of"):
        check_owner(page, tmp_path / "other.npz", "--checkpoint")
    check_owner(page, tmp_path / "m.npz", "--checkpoint")


def test_a_page_and_its_images_are_replaced_whole(tmp_path, monkeypatch):
    """Breaks caught: the old images left beside the new page; thumbnails at full size; a
    URL fetched; a PNG source saved as JPEG."""
    write(tmp_path)
    files = tmp_path / "m_val_greedy_eval_files"
    assert sorted(p.name for p in files.iterdir()) == ["00000.png", "00001.jpg", "00003.png"]
    big = dict(entries()[0], image=np.zeros((600, 300, 3), np.uint8), location="big.jpg")
    write(tmp_path, [big])
    assert [p.name for p in files.iterdir()] == ["00000.jpg"]
    assert Image.open(files / "00000.jpg").size == (128, 256)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    local = tmp_path / "c.png"
    Image.fromarray(scene((1, 2, 3))).save(local)  # an entry without "image": read from its file
    write(tmp_path, [{"location": str(local), "caption": "a"}])
    assert np.array_equal(np.asarray(Image.open(files / "00000.png")), scene((1, 2, 3)))
    fetched = []
    monkeypatch.setattr(P, "try_load_image", lambda location: fetched.append(location))
    write(tmp_path, [{"location": "https://example.invalid/a.jpg", "caption": "a"}])
    assert fetched == [] and list(files.iterdir()) == []  # a URL is a link, never fetched


def test_per_image_cider_averages_to_the_splits_cider_and_exact_means_equal():
    """The page's CIDEr-D of each image, with the split's document frequencies, are
    pycocoevalcap's per-image scores: their mean is its CIDEr. Break caught: the document
    frequencies of the shown images only (the figure's four)."""
    rng = np.random.default_rng(0)
    words = "a red blue green small large square circle and above".split()
    refs = {i: [" ".join(rng.choice(words, 5)) for _ in range(3)] for i in range(12)}
    captions = [refs[i][0] if i % 3 == 0 else " ".join(rng.choice(words, 4)) for i in range(12)]
    cider, exact = P.image_scores(captions, list(range(12)), refs, exact=True)
    corpus = score_captions(dict(enumerate(captions)), refs, meteor=False)["CIDEr"]
    assert cider.mean() == pytest.approx(corpus, rel=1e-9)
    assert exact.tolist() == [i % 3 == 0 for i in range(12)]
    few, _ = P.image_scores(captions[:4], [0, 1, 2, 3], refs)
    np.testing.assert_allclose(few, cider[:4])  # the split's frequencies, whatever is shown
    assert P.image_scores(captions, list(range(12)), refs)[1] is None


def test_each_word_goes_with_its_images_own_boxes_or_cells_as_fractions():
    """Breaks caught: padding boxes kept; boxes in pixels; <END>'s row or a row past it; the
    grid's cells without the centre crop of a wide image."""
    geometry = np.zeros((1, 3, 5), np.float32)
    geometry[0, :2, :4] = [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 1.0]]
    boxes = Regions(np.ones((1, 3, 4), np.float32), geometry, np.array([[True, True, False]]))
    alpha = np.arange(24, dtype=float).reshape(8, 3)
    panel = {"location": "x.png", "predicted": "a red square", "label": "val",
             "alpha": alpha, "regions": boxes[0], "cider": 1.0}
    image = np.zeros((50, 200, 3), np.uint8)
    [entry] = P.page_entries([panel], [image], FEATURE_KINDS["boxes"])
    np.testing.assert_array_equal(entry["alpha"], alpha[:4, :2])
    np.testing.assert_allclose(entry["boxes"], geometry[0, :2, :4], rtol=1e-6)
    assert entry["heat_map"] is False and entry["cider"] == 1.0 and entry["image"] is image
    grid = Regions(np.ones((1, 4, 4), np.float32))
    [cells] = P.page_entries([dict(panel, alpha=alpha[:, :1].repeat(4, 1), regions=grid[0])],
                             [image], FEATURE_KINDS["grid"])
    np.testing.assert_allclose(cells["boxes"], region_boxes(2, 50, 200) / [200, 50, 200, 50])
    assert cells["heat_map"] is True and cells["boxes"][0, 0] > 0.3  # the crop is the middle
    [later] = P.page_entries([dict(panel, location="missing.png")], [], FEATURE_KINDS["boxes"])
    assert "image" not in later  # read from its file when the page is written, if it can be


def test_the_attention_figure_keeps_its_size_for_any_number_of_words(monkeypatch):
    """Breaks caught: every word drawn on rows without end (a 30-word loop: 5 rows an image); the
    words beyond not counted."""
    from core.evaluation import plots

    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, **k: drawn.append(fig))

    def figure(n):
        words = ("a large diamond " * 20).split()[:n] + ["<END>"]
        row = {"image": scene((9, 9, 9)), "label": "val", "words": words,
               "alpha": np.full((len(words), 1), 1.0), "boxes": np.array([[0, 0, 9, 9.]]),
               "heat_map": False}
        plots.save_attention_figure([row, row], "x.png", "t", log=lambda *a: None)
        texts = [t.get_text() for ax in drawn[-1].axes for t in ax.texts]
        return drawn[-1].get_size_inches().tolist(), texts

    size13, texts13 = figure(13)
    size30, texts30 = figure(30)
    assert size30 == size13
    assert [t for t in texts13 if not t[0].isdigit()] == (("a large diamond " * 5).split()[:13]
                                                         + ["<END>"]) * 2
    shown = [t for t in texts30 if t in ("a", "large", "diamond", "<END>")]
    assert shown == ("a large diamond " * 5).split()[:13] * 2
    assert [t.split("\n")[0] for t in texts30 if t.startswith("+")] == ["+ 18 more words"] * 2


@pytest.mark.slow
def test_the_page_in_headless_chromium(tmp_path):
    """Every image loads and every caption is in the DOM; markup in data is text and runs
    nothing; the fragment sorts, filters and shows a word's regions; a screenshot is taken.
    Breaks caught: a wrong image path (files folder), unescaped references (the title changes),
    a sort in the wrong direction, a filter that ignores exact, regions of the wrong word."""
    page = write(tmp_path)
    plain = browser.dom(page)
    assert 'data-images="3"' in plain and 'data-loaded="3"' in plain
    cards = Cards(plain)
    assert cards.title == f"title {EVIL}"  # the reference's script did not run
    assert [c["data-order"] for c in cards.cards] == ["0", "1", "2", "3"]
    for card, entry in zip(cards.cards, entries()):
        assert entry["caption"] in card["text"] and not card["regions"]
    assert EVIL in cards.cards[1]["text"]  # shown as text, twice: the label and a reference
    assert "image at https://example.invalid/three.jpg" in cards.cards[2]["text"]
    assert "4 of 4 shown" in plain

    ranked = Cards(browser.dom(page, "sort=cider-asc"))
    assert [c["data-order"] for c in ranked.cards] == ["1", "2", "0", "3"]
    wrong = browser.dom(page, "show=wrong")
    assert [c["data-order"] for c in Cards(wrong).cards if "hidden" not in c] == ["1", "2"]
    assert "2 of 4 shown" in wrong
    found = Cards(browser.dom(page, "find=circle&show=exact"))  # card 1 has "<circle>"
    assert [c["data-order"] for c in found.cards if "hidden" not in c] == ["3"]

    attended = Cards(browser.dom(page, "attend=3.1")).cards[3]
    weights = [float(r["data-weight"]) for r in attended["regions"]]
    assert weights == [0.2, 0.8]  # the second word's row
    first = attended["regions"][1]["style"]
    assert "left: 50%" in first and "width: 50%" in first and "top" in attended["regions"][1][
        "class"]
    shot = browser.screenshot(page, tmp_path / "page.png", 800, 600, "sort=cider-desc")
    assert Image.open(shot).size == (800, 600)
