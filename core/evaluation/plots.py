"""Every figure the scripts save: training curves (training.py) and captioned images (inference.py).

Figures are matplotlib `Figure` objects drawn without pyplot, so no display or backend is needed,
and written atomically as PNG (core/util/fileio.py).
"""
import functools
import textwrap
import warnings

import numpy as np
from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font

from core.util.fileio import save_figure


def save_loss_plot(history, title, path):
    """Per-iteration training loss with per-epoch train and validation loss, saved as PNG."""
    iters_per_epoch = len(history["loss"]) / max(len(history["train_loss"]), 1)
    epochs_x = iters_per_epoch * np.arange(1, len(history["train_loss"]) + 1)
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(np.arange(1, len(history["loss"]) + 1), history["loss"], color="tab:blue", alpha=0.3,
            label="train (per iteration)")
    ax.plot(epochs_x, history["train_loss"], "o-", color="tab:blue", label="train (epoch mean)")
    ax.plot(epochs_x, history["val_loss"], "s-", color="tab:orange", label="validation")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (summed over words, per caption)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def save_scst_plot(history, title, path):
    """Self-critical training, each quantity on its own axis: the mean reward and baseline of the
    samples per iteration, val CIDEr per epoch from the starting checkpoint's (epoch 0), and the
    teacher-forced (cross-entropy) val loss per epoch; saved as PNG."""
    fig = Figure(figsize=(15, 4))
    ax_reward, ax_cider, ax_loss = fig.subplots(1, 3)
    ax_reward.plot(np.arange(1, len(history["reward"]) + 1), history["reward"],
                   label="mean reward of the samples")
    ax_reward.plot(np.arange(1, len(history["baseline"]) + 1), history["baseline"],
                   label="mean baseline")
    ax_reward.set_xlabel("iteration")
    ax_reward.set_ylabel("CIDEr-D (training references)")
    ax_reward.legend()
    start = history.get("start")
    epochs = ([0] if start else []) + list(history["eval_epoch"])
    cider = ([start["val_cider"]] if start else []) + list(history["val_cider"])
    ax_cider.plot(epochs, cider, "o-", color="tab:red")
    ax_cider.set_xlabel("epoch (0: the checkpoint it starts from)")
    ax_cider.set_ylabel("val CIDEr (greedy)")
    ax_loss.plot(np.arange(1, len(history["val_loss"]) + 1), history["val_loss"], "s-",
                 color="tab:orange")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("val loss (cross-entropy, summed over words)")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def panel_title(panel, model_name, width=40, max_lines=3):
    """A panel's text: its label (split and training status) on the first line, then the reference
    (labelled as the one the prediction equals, or the first of them) and the prediction, each
    wrapped to `width` characters and cut to `max_lines` lines, so that no caption overflows."""
    lines = [panel["label"]] if panel["label"] else []
    truth_label = panel.get("truth_label", "GT")
    for prefix, text in ((truth_label, panel["truth"]), (model_name, panel["predicted"])):
        if text is not None:
            lines += textwrap.wrap(f"{prefix}: {text}", width, max_lines=max_lines,
                                   placeholder=" ...")
    return "\n".join(lines)


@functools.lru_cache(maxsize=None)
def _charmap(path):
    """The characters a font file has glyphs for (set of code points)."""
    return frozenset(FT2Font(path).get_charmap())


def title_fonts(texts, log=print):
    """Font families that can draw every character of `texts` (Han and kana captions, say): the
    default font, then the first installed font that has what the default lacks. When none has it,
    say so once (log) -> (families, whether some characters cannot be shown)."""
    default = font_manager.findfont("DejaVu Sans")
    lacking = {c for c in "".join(texts) if not c.isspace() and ord(c) not in _charmap(default)}
    if not lacking:
        return ["DejaVu Sans"], False
    for font in font_manager.fontManager.ttflist:
        if font.name.startswith("Last Resort"):  # matplotlib's own: a box for every character
            continue
        outline = font.fname.lower().endswith((".ttf", ".otf"))
        if outline and all(ord(c) in _charmap(font.fname) for c in lacking):
            return ["DejaVu Sans", font.name], False
    shown = "".join(sorted(lacking)[:10])
    log(f"note: no installed font has the characters {shown}{'...' if len(lacking) > 10 else ''} "
        f"of these "
        "captions, so the figure shows boxes for them (install a font that has them, e.g. Debian's "
        "fonts-noto-cjk)")
    return ["DejaVu Sans"], True


def save_caption_grid(images, titles, path, suptitle="", cols=4, log=print, owner=None):
    """images: list of uint8 (H, W, 3) arrays or None (a captions-only panel); titles: list of str
    -> PNG (owner: the checkpoint, recorded in it). Titles use a font that has their characters
    when one is installed (title_fonts)."""
    families, missing = title_fonts([*titles, suptitle], log)
    rows = -(-len(titles) // cols)
    cols = min(cols, len(titles))
    fig = Figure(figsize=(3.6 * cols, 5.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        label, _, captions = title.partition("\n") if "\n" in title else ("", "", title)
        # the label above its image, the captions below it: each belongs to one image
        if image is not None:
            ax.imshow(image)
            ax.set_title(label, fontsize=9, loc="left", fontweight="bold", fontfamily=families)
            ax.text(0.0, -0.03, captions, transform=ax.transAxes, fontsize=8, va="top",
                    fontfamily=families)
        else:
            ax.text(0.0, 0.5, "(image not available)\n\n" + title, fontsize=8, va="center",
                    fontfamily=families)
    if suptitle:
        fig.suptitle("\n".join(textwrap.fill(line, 45 * cols) for line in suptitle.splitlines()),
                     fontsize=10, fontfamily=families)
    with warnings.catch_warnings():
        if missing:  # said once above, instead of matplotlib's warning per glyph
            warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))  # room for the suptitle
        save_figure(fig, path, owner=owner)


def draw_attended_boxes(ax, boxes, alpha, image):
    """Draw boxes (K, 4) in pixels on ax with their attention alpha (K,): a dark veil over the image
    that each box lifts by its weight (relative to the most attended), and its outline, wider and
    more opaque with its weight; the most attended box yellow."""
    from matplotlib.patches import Rectangle

    height, width = image.shape[:2] if image is not None else (128, 128)
    ax.add_patch(Rectangle((0, 0), width, height, color="black", alpha=0.55, linewidth=0))
    top = max(float(alpha.max()), 1e-6)
    for k in np.argsort(alpha):  # the most attended drawn last, on top
        x0, y0, x1, y1 = (float(c) for c in boxes[k])
        share = float(alpha[k]) / top
        if image is not None and share > 0.05:
            ax.imshow(image[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))],
                      extent=(int(x0), int(np.ceil(x1)), int(np.ceil(y1)), int(y0)),
                      alpha=share, zorder=2)  # above the veil
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, linewidth=0.5 + 2 * share,
                               edgecolor="yellow" if k == int(np.argmax(alpha)) else "white",
                               alpha=0.3 + 0.7 * share, zorder=3))
    ax.text(2, 2, f"{float(alpha.max()):.2f}", color="yellow", fontsize=8, va="top", zorder=4)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)


def save_attention_figure(rows, path, suptitle="", per_row=8, max_lines=2, log=print,
                          owner=None):
    """Where each word looked, as in "Show, Attend and Tell"'s figures: for each image one row of
    panels, the image with its caption, then one panel per generated word (and <END>), the word
    under the image overlaid with its attention map, upsampled over the regions' part of the image.

    rows: list of dicts with "image" (uint8 (H, W, 3) or None), "label" (str), "words" (list of L
    str), "alpha" (L, R), "boxes" (R, 4) pixel boxes of the regions, "heat_map" (bool): R = g * g
    cells of a grid (core.data.regions.region_boxes), drawn as a heat map, or else an image's
    object boxes, each drawn as Anderson et al.'s figures do, brighter and bolder the more it is
    attended to (the image darkened where no box looks); saved as PNG (owner: the checkpoint,
    recorded in it). A caption longer than per_row - 1 words continues on a further row of
    panels, at most max_lines rows an image: the words beyond are counted in the last panel (the
    results page shows every word's), so that the figure's size and text stay the same for any
    number of words.
    """
    families, _ = title_fonts([r["label"] for r in rows] + [w for r in rows for w in r["words"]]
                              + [suptitle], log)
    room = max_lines * (per_row - 1)  # word panels an image has
    lines = []  # (row, index of its first word on the line) per line of panels
    for r in rows:
        for start in range(0, min(max(len(r["words"]), 1), room), per_row - 1):
            lines.append((r, start))
    fig = Figure(figsize=(1.9 * per_row, 2.4 * len(lines) + 0.7))
    axes = fig.subplots(len(lines), per_row, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for line, (r, start) in zip(axes, lines):
        if start == 0:
            if r["image"] is not None:
                line[0].imshow(r["image"])
            line[0].set_title("\n".join(textwrap.wrap(r["label"], 22, max_lines=5,
                                                      placeholder=" ...")), fontsize=9,
                              loc="left", fontfamily=families)
        shown = r["words"][start:start + per_row - 1]
        more = len(r["words"]) - room
        if more > 0 and start + per_row - 1 >= room:  # the last panel counts the rest
            shown = shown[:-1]
            line[-1].text(0.5, 0.5, f"+ {more + 1} more words\n(every word's attention:\n"
                          "the results page)", transform=line[-1].transAxes, ha="center",
                          va="center", fontsize=10)
        for ax, word, alpha in zip(line[1:], shown, r["alpha"][start:]):
            _draw_attention(ax, r, alpha)
            ax.text(0.5, -0.04, word, transform=ax.transAxes, ha="center", va="top", fontsize=12,
                    fontfamily=families)
    if suptitle:
        fig.suptitle(textwrap.fill(suptitle, 16 * per_row), fontsize=11, fontfamily=families)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    save_figure(fig, path, owner=owner)


def _draw_attention(ax, row, alpha):
    """One word's panel: its image with the attention alpha (R,) over the row's regions."""
    if row["image"] is not None:
        ax.imshow(row["image"])
    if row.get("heat_map", True):
        g = int(round(np.sqrt(alpha.size)))
        (x0, y0), (x1, y1) = row["boxes"][0, :2], row["boxes"][-1, 2:]
        ax.imshow(alpha.reshape(g, g), extent=(x0, x1, y1, y0), cmap="inferno", alpha=0.6,
                  interpolation="bilinear", vmin=0, vmax=max(float(alpha.max()), 1e-6))
    else:
        draw_attended_boxes(ax, row["boxes"], alpha, row["image"])
    if row["image"] is not None:
        ax.set_xlim(0, row["image"].shape[1])
        ax.set_ylim(row["image"].shape[0], 0)
