"""The results page inference.py writes beside its figures and scores, as self-critical.pytorch's
and neuraltalk2's `vis/` pages are: every captioned image with its generated caption, its
references, its CIDEr-D (and, on the sample dataset, whether it equals a reference), sortable and
filterable, and for a decoder that attends the regions each word looked at (on hover).

Static files only, opened from `file://`: <name>.html and its images in <name>_files/ (copies at
most THUMBNAIL pixels on a side, so the page can be moved or shared; nothing is fetched from the
internet: an image known only by its URL is a link). The page is built with the standard library:
every text that comes from data or a model is escaped (html.escape) in the markup; the script's
data holds numbers only, and the script sets only classes, styles and counts.

Its state (sort, filter, search, and which word's attention is shown) is the URL's fragment, e.g.
`page.html#sort=cider-asc&show=wrong&attend=3.2` (card 3, word 2), so that a view can be linked
and a test can load it.

Shape letters: L words, R regions.
"""
import html
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from core.data.image_utils import try_load_image
from core.evaluation.cider import CiderD
from core.util.fileio import atomic_write_text

THUMBNAIL = 256
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.2em; color: #222; }
header p { margin: 0.2em 0; }
.about, .scores { color: #555; font-size: 0.9em; }
#controls { position: sticky; top: 0; background: #fff; padding: 0.5em 0; z-index: 2;
            border-bottom: 1px solid #ddd; display: flex; gap: 1.2em; flex-wrap: wrap; }
#results { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr));
           gap: 1em; margin-top: 1em; }
.result { display: flex; gap: 0.8em; border: 1px solid #ddd; border-radius: 6px; padding: 0.6em; }
.result[hidden] { display: none; }
.picture { position: relative; flex: 0 0 128px; align-self: flex-start; }
.picture img { width: 128px; display: block; }
.missing { width: 128px; font-size: 0.8em; color: #777; overflow-wrap: anywhere; }
.overlay { position: absolute; inset: 0; pointer-events: none; }
.overlay.veiled { background: rgba(0, 0, 0, 0.45); }
.region { position: absolute; box-sizing: border-box; }
.region.box { border: 2px solid #fff; background: rgba(255, 255, 255, 0.25); }
.region.box.top { border-color: #ffd400; }
.region.cell { background: #ff8c00; }
.text { min-width: 0; font-size: 0.92em; }
.text p { margin: 0.15em 0; }
.label { color: #666; font-size: 0.85em; overflow-wrap: anywhere; }
.caption { font-weight: 600; }
.reference { color: #444; }
.word { border-radius: 3px; padding: 0 1px; }
.word.attends { cursor: pointer; text-decoration: underline dotted; }
.word.shown { background: #ffd400; }
.exact { color: #1a7f37; } .wrong { color: #b3261e; }
ol { margin: 0.2em 0; padding-left: 1.4em; color: #444; }
"""
SCRIPT = r"""
"use strict";
const results = document.getElementById("results");
const cards = Array.from(results.querySelectorAll(".result"));
const attention = JSON.parse(document.getElementById("attention").textContent);
const controls = ["sort", "show", "find"].map(id => document.getElementById(id));

function view() { return new URLSearchParams(location.hash.slice(1)); }

function clearAttention() {
  for (const o of document.querySelectorAll(".overlay")) {
    o.replaceChildren();
    o.className = "overlay";
  }
  for (const w of document.querySelectorAll(".word.shown")) w.classList.remove("shown");
}

function showAttention(card, word) {
  clearAttention();
  const a = attention[card.dataset.order];
  if (!a || !a.alpha[word]) return;
  const weights = a.alpha[word], top = Math.max(...weights, 1e-6);
  const overlay = card.querySelector(".overlay");
  if (!a.heat_map) overlay.classList.add("veiled");
  weights.forEach((weight, k) => {
    const share = weight / top;
    if (!a.heat_map && share < 0.05) return;
    const [x0, y0, x1, y1] = a.boxes[k], region = document.createElement("div");
    region.className = "region " + (a.heat_map ? "cell" : "box") + (share === 1 ? " top" : "");
    Object.assign(region.style, { left: 100 * x0 + "%", top: 100 * y0 + "%",
      width: 100 * (x1 - x0) + "%", height: 100 * (y1 - y0) + "%",
      opacity: a.heat_map ? (0.75 * share).toFixed(3) : (0.3 + 0.7 * share).toFixed(3) });
    region.dataset.weight = weight.toFixed(4);
    overlay.appendChild(region);
  });
  card.querySelectorAll(".word")[word].classList.add("shown");
}

function apply() {
  const v = view(), sort = v.get("sort") || "order", show = v.get("show") || "all";
  const find = (v.get("find") || "").toLowerCase();
  controls[0].value = sort; controls[1].value = show; controls[2].value = v.get("find") || "";
  const key = c => sort === "order" ? +c.dataset.order : +(c.dataset.cider || -1);
  const sign = sort === "cider-desc" ? -1 : 1;
  cards.slice().sort((a, b) => sign * (key(a) - key(b)) || a.dataset.order - b.dataset.order)
    .forEach(c => results.appendChild(c));
  let shown = 0;
  for (const c of cards) {
    c.hidden = !((show === "all" || (show === "exact") === (c.dataset.exact === "1"))
                 && (!find || c.textContent.toLowerCase().includes(find)));
    shown += !c.hidden;
  }
  document.getElementById("count").textContent = shown + " of " + cards.length + " shown";
  clearAttention();
  const attend = (v.get("attend") || "").split(".");
  const card = cards.find(c => c.dataset.order === attend[0]);
  if (card && attend.length === 2) showAttention(card, +attend[1]);
}

controls.forEach(control => control.addEventListener(control.id === "find" ? "input" : "change",
  () => {
    const v = view();
    v.set(control.id, control.value);
    v.delete("attend");
    location.hash = v.toString();
  }));
for (const card of cards) {
  card.querySelectorAll(".word.attends").forEach((word, k) => {
    const on = () => showAttention(card, k);
    word.addEventListener("mouseenter", on);
    word.addEventListener("focus", on);
    word.addEventListener("mouseleave", clearAttention);
    word.addEventListener("blur", clearAttention);
  });
}
window.addEventListener("hashchange", apply);
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  document.body.dataset.images = images.length;
  document.body.dataset.loaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
});
apply();
"""


def page_paths(output):
    """An output's path (a figure or scores file) -> (the page <stem>.html beside it, the folder
    <stem>_files of its images)."""
    output = Path(output)
    stem = output.name[:-len(".json")] if output.suffix == ".json" else output.stem
    return output.with_name(stem + ".html"), output.with_name(stem + "_files")


def image_scores(captions, images, references, exact=False):
    """captions (M,) strings of images (M,) -> CIDEr-D (M,) float64, each against its image's
    references with the document frequencies of every image of `references` ({image: [strings]},
    the split: pycocoevalcap's per-image scores of the split, whose mean is its CIDEr-D), and with
    exact=True whether each equals one of its references ((M,) bool), else None."""
    cider = CiderD(references).scores(captions, images)
    same = (np.array([c in references[int(i)] for c, i in zip(captions, images)])
            if exact else None)
    return cider, same


def thumbnail(entry, folder, k):
    """A copy of an entry's image at most THUMBNAIL pixels on a side in `folder` -> its file
    name, or None without one. The image is the entry's "image" (uint8 (H, W, 3) or None) when it
    has one, else read from its location when that is a local file (never fetched from a URL).
    PNG for PNG sources, else JPEG."""
    location = str(entry["location"])
    image = (entry["image"] if "image" in entry
             else None if "://" in location else try_load_image(location))
    if image is None:
        return None
    picture = Image.fromarray(np.asarray(image, dtype=np.uint8))
    picture.thumbnail((THUMBNAIL, THUMBNAIL))
    png = str(location).lower().endswith(".png")
    name = f"{k:05d}.{'png' if png else 'jpg'}"
    picture.save(Path(folder) / name, **({} if png else {"quality": 90}))
    return name


def _card(k, entry, image_file, files_name):
    """One image's <article>: its picture (or its location), label, caption (words as spans
    when its attention is known), score and references."""
    e = html.escape
    location = str(entry["location"])
    if image_file:
        picture = (f'<img src="{e(files_name)}/{e(image_file)}" alt="{e(location)}" '
                   f'width="128">')
    elif location.lower().startswith(("http://", "https://")):  # a link of no other scheme
        picture = f'<p class="missing">image at <a href="{e(location)}">{e(location)}</a></p>'
    else:
        picture = f'<p class="missing">(image not available: {e(location)})</p>'
    attends = entry.get("alpha") is not None
    tag = '<span class="word attends" tabindex="0">' if attends else '<span class="word">'
    words = [e(w) for w in entry["caption"].split()] + (["&lt;END&gt;"] if attends else [])
    words = [f"{tag}{w}</span>" for w in words]
    cider, exact = entry.get("cider"), entry.get("exact")
    score = []
    if cider is not None:
        score.append(f"CIDEr-D {cider:.3f}")
    if exact is not None:
        score.append('<span class="exact">equals a reference</span>' if exact
                     else '<span class="wrong">equals no reference</span>')
    refs = entry.get("references") or []
    # the reference the caption equals, else the first, then all of them
    first = entry["caption"] if entry["caption"] in refs else refs[0] if refs else None
    references = ("" if not refs else
                  f'<p class="reference">reference: {e(first)}</p>'
                  f"<details><summary>all {len(refs)} reference{'s' if len(refs) > 1 else ''}"
                  "</summary><ol>" + "".join(f"<li>{e(r)}</li>" for r in refs) + "</ol></details>")
    data = (f' data-cider="{cider:.6f}"' if cider is not None else "") + (
        f' data-exact="{int(exact)}"' if exact is not None else "")
    label = " · ".join(e(str(x)) for x in (entry.get("label"), entry.get("name", location)) if x)
    return (f'<article class="result" id="r{k}" data-order="{k}"{data}>'
            f'<div class="picture">{picture}<div class="overlay"></div></div><div class="text">'
            f'<p class="label">{label}</p><p class="caption">{" ".join(words)}</p>'
            + (f'<p class="score">{" · ".join(score)}</p>' if score else "")
            + f"{references}</div></article>")


def _attention_data(entries):
    """{card: {"alpha": (L, R) rounded, "boxes": (R, 4) fractions of the image, "heat_map"}} of
    the entries whose attention is known, as JSON (numbers and booleans: no text of the data)."""
    data = {}
    for k, entry in enumerate(entries):
        if entry.get("alpha") is not None:
            data[str(k)] = {"alpha": np.round(np.asarray(entry["alpha"], float), 4).tolist(),
                            "boxes": np.round(np.asarray(entry["boxes"], float), 5).tolist(),
                            "heat_map": bool(entry["heat_map"])}
    return json.dumps(data, separators=(",", ":"))  # numbers only: nothing can close the element


def write_results_page(output, entries, title, about, owner, scores=None, log=print):
    """Write the page of `output` (a figure or scores file; page_paths) and its images.

    entries: one dict per image, in the order shown: "location" (path or URL), "caption", "image"
    (uint8 (H, W, 3) or None; without it, read from a local location), "name" (the location as
    shown; default the location), and where known "label", "references" (list of str), "cider"
    (float), "exact" (bool), and for attention "alpha" (L, R) over the caption's words and <END>,
    "boxes" (R, 4) as fractions of the image's width and height (x0, y0, x1, y1), "heat_map"
    (bool: cells rather than boxes). title, about: the header's text (about: lines); owner: the
    checkpoint (recorded, as check_owner reads it); scores: the split's summary line or None.
    The images are written to a new folder that replaces the old one, then the page, atomically.
    """
    page, files = page_paths(output)
    fresh = files.with_name(f".{files.name}.{os.getpid()}.tmp")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    try:
        cards = [_card(k, entry, thumbnail(entry, fresh, k), files.name)
                 for k, entry in enumerate(tqdm(entries, desc="results page", unit="image",
                                                disable=len(entries) < 200
                                                or not sys.stderr.isatty()))]
        if files.exists():
            old = files.with_name(f".{files.name}.{os.getpid()}.old")
            files.rename(old)
            shutil.rmtree(old)
        fresh.rename(files)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    e = html.escape
    exact = any(entry.get("exact") is not None for entry in entries)
    scored = any(entry.get("cider") is not None for entry in entries)
    options = [("order", "as listed")] + ([("cider-desc", "CIDEr-D, highest first"),
                                           ("cider-asc", "CIDEr-D, lowest first")]
                                          if scored else [])
    shows = [("all", "all")] + ([("exact", "equal to a reference"),
                                 ("wrong", "equal to none")] if exact else [])
    select = lambda name, pairs: (f'<select id="{name}">' + "".join(
        f'<option value="{v}">{t}</option>' for v, t in pairs) + "</select>")
    atomic_write_text(page, "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta name="checkpoint_path" content="{e(str(Path(owner).resolve()))}">',
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>",
        f"<header><h1>{e(title)}</h1>"
        + "".join(f'<p class="about">{e(line)}</p>' for line in about)
        + (f'<p class="scores">{e(scores)}</p>' if scores else "") + "</header>",
        f'<div id="controls"><label>sort {select("sort", options)}</label>'
        f'<label>show {select("show", shows)}</label>'
        '<label>find <input id="find" type="search" placeholder="a word of a caption"></label>'
        '<span id="count"></span></div>',
        '<main id="results">', *cards, "</main>",
        f'<script type="application/json" id="attention">{_attention_data(entries)}</script>',
        f"<script>{SCRIPT}</script>", "</body></html>", ""]))
    log(f"saved results page {page} (open it in a browser)")
    return page


def image_size(image, location):
    """(width, height) of a loaded image (uint8 (H, W, 3)), else of a local file's header, else
    the sample scenes' 128 x 128."""
    if image is not None:
        return image.shape[1], image.shape[0]
    if "://" not in str(location):
        try:
            with Image.open(location) as picture:
                return picture.size
        except (OSError, ValueError):
            pass
    return 128, 128


def page_entries(panels, images, kind):
    """The page's entries of inference.py's captioned panels (dicts of "location", "predicted",
    "label", and "name", "references", "cider", "exact" where known, "alpha" (L', R) or None,
    "regions").

    images: the loaded images (uint8 (H, W, 3) or None) of the first panels (the figure's); the
    others are read from their files. kind: the checkpoint's FeatureKind, which says where its
    regions lie; each word's attention (and <END>'s) goes with the boxes of the image's own
    regions as fractions of the image."""
    entries = []
    for k, panel in enumerate(panels):
        entry = {"location": panel["location"], "caption": panel["predicted"],
                 "label": panel["label"], **{key: panel[key] for key in
                                             ("name", "references", "cider", "exact")
                                             if key in panel}}
        if k < len(images):
            entry["image"] = images[k]
        if panel.get("alpha") is not None:
            width, height = image_size(entry.get("image"), panel["location"])
            where, own, heat_map = kind.drawn_regions(panel["regions"], width, height)
            words = len(panel["predicted"].split()) + 1
            entry.update(alpha=panel["alpha"][:words][:, own], heat_map=heat_map,
                         boxes=np.asarray(where, float) / [width, height, width, height])
        entries.append(entry)
    return entries
