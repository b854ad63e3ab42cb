"""What inference.py does once its flags are settled (core/evaluation/settings.py): captioning
dataset images or image files, scoring a whole split (`--eval`), and the caption and attention
figures.

Shape letters: N images, L words, R regions.
"""
import contextlib
import json
import time
from pathlib import Path

import numpy as np

from core.data.coco_utils import SAMPLE_DIR, load_coco_data, load_vocab, subset_rows
from core.data.image_utils import try_load_image
from core.data.encoders import describe_weights
from core.data.vocab import decode_captions
from core.evaluation.metrics import (  # noqa: F401  (coco_ids: importable here as before)
    caption_split, coco_ids, format_scores, raw_references, references_by_image, score_captions,
    write_coco_results)
from core.evaluation.page import image_scores, page_entries, page_paths, write_results_page
from core.evaluation.plots import panel_title, save_attention_figure, save_caption_grid
from core.model.checkpoint import check_against_data, check_checkpoint
from core.model.decoding import beam_search, greedy_search
from core.data.feature_kinds import FEATURE_KINDS
from core.model.registry import checkpoint_features
from core.evaluation.settings import (  # noqa: F401  (inference.py's settling, importable here)
    Settings, beam_options, check_split, decoding_name, figure_suffix, folder_images, settle)
from core.util.errors import UserError
from core.util.fileio import RunLock, atomic_write_text, check_owner


REPOSITORY = Path(__file__).resolve().parents[2]


def load_checked_data(settings, config):
    """The dataset of the settings' folder, checked against the checkpoint (vocabulary, dataset,
    size)."""
    kind = FEATURE_KINDS[checkpoint_features(config)]
    data = load_coco_data(settings.data_dir, features=kind.name)
    check_against_data(config, settings.checkpoint, settings.model, data["idx_to_word"],
                       data["dataset_id"], settings.data_dir,
                       kind.feature_size(data["train_features"]),
                       sizes=kind.model_sizes(data["train_features"]), encoder=data["encoder"],
                       regions=data["regions"])
    return data


def resolve_location(url, data_dir):
    """An entry of a *_urls.txt file -> URL or path; relative paths are relative to the data
    directory."""
    if "://" in url or Path(url).is_absolute():
        return url
    return str(Path(data_dir) / url)


def sample(model, features, settings):
    """features (N, ...) -> word indices (N, max_length) with the decoding flags, and with
    --attention the attention (N, max_length, R) of each word (None without)."""
    options = beam_options(settings, model.idx_to_word)
    if settings.attention and (settings.beam_size > 1 or options):  # the chosen beam's attention
        captions, _, alphas = beam_search(model, features, settings.max_length, settings.beam_size,
                                          settings.length_penalty, attention=True, **options)
        return captions, alphas
    if settings.attention:
        return greedy_search(model, features, settings.max_length, attention=True)
    return model.sample(features, max_length=settings.max_length, beam_size=settings.beam_size,
                        length_penalty=settings.length_penalty, **options), None


def evaluate(settings, model, config, ctx):
    """Caption every image of the split once, score it, print the table and write the JSON (rank
    0 holding a lock on it, so that two evaluations into one file refuse rather than one replacing
    the other's). Under torchrun each process captions every K-th image and rank 0 gathers, scores
    and writes."""
    data = load_checked_data(settings, config)
    check_split(settings, data)
    # the scores' file, named after the checkpoint, split, decoding and references; refused up
    # front when another checkpoint's run wrote it
    against = f"_{Path(settings.references).stem}" if settings.references else ""
    path = (Path(settings.out_dir) / f"{Path(settings.checkpoint).stem}_{settings.split}_"
            f"{decoding_name(settings)}{against}_eval.json")
    for owned in (path, page_paths(path)[0]):
        check_owner(owned, settings.checkpoint, "--checkpoint")
    with contextlib.ExitStack() as stack:
        if ctx.is_main:
            stack.enter_context(RunLock(path, (path,), who="evaluation",
                                        hint="wait for it, or pass another --out_dir"))
        _evaluate(settings, model, data, ctx, path)


def _evaluate(settings, model, data, ctx, path):
    """evaluate's captioning, scoring and files, its output path locked."""
    images = np.unique(data[f"{settings.split}_image_idxs"])
    if settings.references:
        own = references_by_image(data[f"{settings.split}_captions"],
                                  data[f"{settings.split}_image_idxs"], data["idx_to_word"])
        refs, ids = raw_references(settings.references, data[f"{settings.split}_urls"], images,
                                   own)
        references = (f"the raw captions of {settings.references} ({sum(map(len, refs.values()))} "
                      f"for {len(refs)} "
                      "images, lower-cased and split into words, not cut, rare words kept)")
    else:
        ids = None
        refs = references_by_image(data[f"{settings.split}_captions"],
                                   data[f"{settings.split}_image_idxs"], data["idx_to_word"])
        references = (f"the {settings.split} split's own captions ({sum(map(len, refs.values()))} "
                      f"for {len(refs)} images, as tokenized and cut to "
                      f"{data[f'{settings.split}_captions'].shape[1]} tokens with rare "
                      "words <UNK>)")
    start = time.perf_counter()
    mine = caption_split(model, data, settings.split, max_length=settings.max_length,
                         **beam_options(settings, data["idx_to_word"]),
                         beam_size=settings.beam_size,
                         length_penalty=settings.length_penalty, progress=ctx.is_main,
                         images=ctx.shard(images))
    parts = ctx.gather(mine)
    if not ctx.is_main:
        return
    predictions = {i: caption for part in parts for i, caption in part.items()}
    seconds = time.perf_counter() - start
    scores = score_captions(predictions, refs)
    decoding = decoding_name(settings).replace("beam", "beam ", 1)
    print(f"scored: checkpoint {settings.checkpoint}, {settings.data_dir} split {settings.split} "
          f"({len(predictions)} images), {decoding} decoding ({seconds:.1f}s), against "
          f"{references}")
    print(format_scores(scores))
    urls = data[f"{settings.split}_urls"]
    check_owner(path, settings.checkpoint, "--checkpoint")  # again: a run may have ended since
    atomic_write_text(path, json.dumps({
        "model": settings.model, "checkpoint": str(settings.checkpoint),
        "checkpoint_path": str(Path(settings.checkpoint).resolve()),
        "data_dir": str(settings.data_dir), "split": settings.split,
        "beam_size": settings.beam_size, "length_penalty": settings.length_penalty,
        "decoding": decoding_name(settings),
        "references": references, "scores": scores, "decode_seconds": seconds,
        "predictions": [{"image": i, "url": str(urls[i]), "caption": c, "references": refs[i]}
                        for i, c in sorted(predictions.items())]}, indent=1))
    print(f"saved scores and captions {path}")
    write_coco_results(path.with_name(path.name.replace("_eval.json", "_results.json")),
                       predictions, urls, ids)
    images = sorted(predictions)
    cider, exact = image_scores([predictions[i] for i in images], images, refs,
                                exact=is_sample(settings) and not settings.references)
    write_results_page(path, [
        {"location": resolve_location(urls[i], settings.data_dir), "name": str(urls[i]),
         "caption": predictions[i],
         "label": f"{settings.split} image {i}", "references": refs[i], "cider": float(cider[k]),
         "exact": None if exact is None else bool(exact[k])} for k, i in enumerate(images)],
        f"{settings.model}: {settings.split} split, {decoding} decoding",
        page_about(settings, f"checkpoint {settings.checkpoint}",
                   f"{len(images)} images, against {references}"), settings.checkpoint,
        scores="the split's scores: " + ", ".join(f"{m} {v:.4f}" for m, v in scores.items()
                                                   if v is not None)
        + " (the per-image CIDEr-D below average to its CIDEr)")


def trained_images(settings, config, data):
    """Which train images the checkpoint was trained on and which to draw from.

    -> (set of train image indices it was trained on, or None when the checkpoint does not say,
        train image indices to draw from: the --num_samples subset, else the checkpoint's own).
    The subset is recreated from the number of captions and the seed `training.py` recorded.
    """
    train_args = config.get("extra", {}).get("args") or {}
    num_train, image_idxs = len(data["train_captions"]), data["train_image_idxs"]
    seed = train_args.get("seed", settings.seed)
    trained = None
    if "num_samples" in train_args:
        n = train_args["num_samples"]
        rows = np.arange(num_train) if n is None else subset_rows(num_train, n, seed)
        trained = np.unique(image_idxs[rows])
    if settings.num_samples is not None:
        if settings.num_samples > num_train:
            raise UserError(f"--num_samples {settings.num_samples} is out of range: "
                            f"{settings.data_dir} has {num_train} training captions")
        draw = np.unique(image_idxs[subset_rows(num_train, settings.num_samples, seed)])
    else:
        draw = trained if trained is not None else np.unique(image_idxs)
    return (None if trained is None else set(trained.tolist())), draw


def caption_dataset_images(settings, model, config):
    """Caption --num_images distinct images of each split and compare with their references:
    the one the prediction equals when there is one, else the first. -> list of panel dicts."""
    data = load_checked_data(settings, config)
    check_split(settings, data)
    splits = [settings.split] if settings.split else ["train", "val"]
    trained, train_draw = trained_images(settings, config,
                                         data) if "train" in splits else (None, None)
    if "train" in splits:
        print(f"train images drawn from {len(train_draw)} of the split's "
              f"{len(np.unique(data['train_image_idxs']))}"
              + ("" if trained is None
                 else f"; the checkpoint was trained on the captions of {len(trained)} images"))
    panels = []
    for split in splits:
        image_idxs = data[f"{split}_image_idxs"]
        candidates = train_draw if split == "train" else np.unique(image_idxs)
        rng = np.random.default_rng(settings.seed)
        chosen = candidates[rng.choice(len(candidates),
                                       size=min(settings.num_images, len(candidates)),
                                       replace=False)]
        # every reference of the split: the document frequencies of each image's CIDEr-D
        refs = references_by_image(data[f"{split}_captions"], image_idxs, data["idx_to_word"])
        words, alphas = sample(model, data[f"{split}_features"][chosen], settings)
        predicted = decode_captions(words, data["idx_to_word"])
        cider, exact = image_scores(predicted, chosen, refs, exact=is_sample(settings))
        for k, (i, pred) in enumerate(zip(chosen, predicted)):
            if split != "train":
                status = "not trained on"
            else:
                seen = trained is not None and int(i) in trained
                status = None if trained is None else ("trained on" if seen else "not trained on")
            equal = pred in refs[int(i)]
            panels.append({"location": resolve_location(data[f"{split}_urls"][i],
                                                        settings.data_dir),
                           "name": str(data[f"{split}_urls"][i]),
                           "truth": pred if equal else refs[int(i)][0], "predicted": pred,
                           "truth_label": ("GT (the reference it equals)" if equal
                                           else f"GT (first of {len(refs[int(i)])} references)"),
                           "label": split + (f", {status}" if status else ""),
                           "alpha": None if alphas is None else alphas[k],
                           "regions": data[f"{split}_features"][i],
                           "references": refs[int(i)], "cider": float(cider[k]),
                           "exact": None if exact is None else bool(exact[k])})
    return panels, figure_name(settings), None


def caption_files(settings, model, config):
    """Caption the --image files through the dataset's VGG16 weights and the PCA transform of the
    kind of features the decoder reads -> panels (every file of --image_folder), the figure's
    name, a note or None."""
    for path in settings.image:
        if Path(path).is_dir():
            raise UserError(f"--image {path} is a directory: pass image files (e.g. "
                            f"{Path(path) / '*.jpg'})")
        if not Path(path).is_file():
            raise UserError(f"image file {path} not found")
    idx_to_word, _ = load_vocab(settings.data_dir)
    check_checkpoint(config, settings.checkpoint, settings.model, idx_to_word)
    kind = FEATURE_KINDS[checkpoint_features(config)]
    transform, info = kind.transform(settings.data_dir)
    check_against_data(config, settings.checkpoint, settings.model, idx_to_word,
                       info.get("dataset_id"), settings.data_dir, transform["components"].shape[0],
                       what="the transform of", sizes=kind.transform_sizes(info),
                       encoder=info.get("encoder", "vgg16"),
                       regions=kind.regions_identity(transform=transform, info=info))
    regions = f", {info['layer']} regions" if kind.regions else ""
    print(f"image features: {describe_weights(info['vgg16'])}{regions}")
    if info.get("note"):
        print(f"note: {info['note']}")
    paths = list(settings.image)
    if settings.image_folder:  # before any image is read: another checkpoint's captions are kept
        check_owner(folder_captions_path(settings), settings.checkpoint, "--checkpoint")
    features, bad = kind.compute(paths, transform, info, device=settings.feature_device,
                                 progress=bool(settings.image_folder))
    if settings.image_folder and len(bad) == len(paths):
        first = min(bad)
        raise UserError(f"none of the {len(paths)} image file(s) could be read, e.g. "
                        f"{paths[first]} ({bad[first]})")
    if bad and not settings.image_folder:
        first = min(bad)
        raise UserError(f"cannot read image {paths[first]} ({bad[first]})")
    if bad:  # a folder's unreadable files are skipped and said
        first = min(bad)
        print(f"skipped {len(bad)} unreadable file(s) of the folder, e.g. {paths[first]} "
              f"({bad[first]})")
        keep = [k for k in range(len(paths)) if k not in bad]
        paths, features = [paths[k] for k in keep], features[keep]
    words, alphas = sample(model, features, settings)
    captions = decode_captions(words, idx_to_word)
    if settings.image_folder:
        write_folder_captions(settings, paths, captions)
    panels = [{"location": path, "truth": None, "predicted": pred,
               "label": settings.image_labels.get(path, ""),
               "alpha": None if alphas is None else alphas[k], "regions": features[k]}
              for k, (path, pred) in enumerate(zip(paths, captions))]
    note = None
    if is_sample(settings):
        note = ("this model knows only the sample dataset's rendered scenes (one or two shapes "
                "of 6 colours and 4 kinds on a plain grey background): captions of other images "
                "are not meaningful")
        print(f"note: {note}")
    return panels, figure_name(settings), note


def folder_captions_path(settings):
    """--image_folder's captions file: <out_dir>/<stem>_<folder>_<decoding>_captions.json."""
    folder = Path(settings.image_folder).resolve().name
    return (Path(settings.out_dir) / f"{Path(settings.checkpoint).stem}_{folder}_"
            f"{decoding_name(settings)}_captions.json")


def write_folder_captions(settings, paths, captions):
    """--image_folder: every caption to folder_captions_path ({checkpoint, checkpoint_path, folder,
    decoding, captions: [{file_name, caption}]}, refused when another checkpoint's run wrote it)
    and, when the file names give COCO ids, the COCO results file beside it."""
    path = folder_captions_path(settings)
    check_owner(path, settings.checkpoint, "--checkpoint")  # again: a run may have ended since
    atomic_write_text(path, json.dumps({
        "checkpoint": str(settings.checkpoint),
        "checkpoint_path": str(Path(settings.checkpoint).resolve()),
        "folder": str(Path(settings.image_folder).resolve()), "decoding": decoding_name(settings),
        "captions": [{"file_name": Path(p).name, "caption": c}
                     for p, c in zip(paths, captions)]}, indent=1))
    print(f"saved {len(captions)} captions {path}")
    write_coco_results(path.with_name(path.name.replace("_captions.json", "_results.json")),
                       dict(enumerate(captions)), np.array(paths))


def attention_rows(panels, images, config):
    """The rows of save_attention_figure: each panel's words up to and with <END>, their attention
    over the regions and where the regions lie in its image: the grid's cells, or an image's own
    boxes (from their geometry, so in the pixels of the image as drawn; an image that cannot be
    fetched: the sample scenes' 128 x 128)."""
    rows = []
    kind = FEATURE_KINDS[checkpoint_features(config)]
    for panel, image in zip(panels, images):
        words = panel["predicted"].split() + ["<END>"]
        height, width = image.shape[:2] if image is not None else (128, 128)
        label = (f"{panel['label']}: " if panel["label"] else "") + panel["predicted"]
        where, own, heat_map = kind.drawn_regions(panel["regions"], width, height)
        rows.append({"image": image, "label": label, "words": words,
                     "alpha": panel["alpha"][:len(words)][:, own], "boxes": where,
                     "heat_map": heat_map})
    return rows


def shown_path(path):
    """A path as figures name it: relative to the repository when inside it (whatever machine drew
    the figure), else relative to the working folder when below it, else absolute."""
    path = Path(path).resolve()
    for base in (REPOSITORY, Path.cwd()):
        if path.is_relative_to(base):
            return str(path.relative_to(base))
    return str(path)


def figure_name(settings):
    """<stem>_<splits>_<suffix> of dataset images (train_val without --split), or
    <stem>_<folder or "images">_<suffix> of image files."""
    stem = Path(settings.checkpoint).stem
    if settings.image:
        what = (Path(settings.image_folder).resolve().name if settings.image_folder
                else "imagenet_val" if settings.imagenet_val else "images")
    else:
        what = settings.split or "train_val"
    return f"{stem}_{what}_{figure_suffix(settings)}"


def caption_figure(settings, model, config):
    """Caption dataset images (or --image files), print each, and save them as one figure (which
    records its checkpoint: another checkpoint's figure of that name is refused before any
    image is captioned)."""
    for path in (Path(settings.out_dir) / figure_name(settings),
                 page_paths(Path(settings.out_dir) / figure_name(settings))[0]):
        check_owner(path, settings.checkpoint, "--checkpoint")
    caption = caption_files if settings.image else caption_dataset_images
    panels, name, note = caption(settings, model, config)
    # a folder's captions: all on the page, the first --num_images in the figure
    shown = panels[:settings.num_images] if settings.image_folder else panels
    images, titles = [], []
    for k, panel in enumerate(shown):
        print(f"[{k + 1}] " + (f"{panel['label']}: " if panel["label"] else "") + panel["location"]
              + (f"\n    truth:     {panel['truth']}" if panel["truth"] is not None else "")
              + f"\n    predicted: {panel['predicted']}")
        images.append(try_load_image(panel["location"]))
        titles.append(panel_title(panel, settings.model))
    path = Path(settings.out_dir) / name
    trained_on = config.get("extra", {}).get("data_path")
    trained_on = trained_on and shown_path(trained_on)
    origin = (" (the original repository's file)" if config.get("format") == "original"
              else f" (trained on {trained_on or 'data it does not record'})")
    suptitle = (f"{settings.model}: {settings.checkpoint}{origin}, "
                f"{decoding_name(settings).replace('beam', 'beam ')} decoding")
    if settings.attention:
        save_attention_figure(attention_rows(shown, images, config), path, suptitle
                              + (f". {note}" if note else ""), owner=settings.checkpoint)
    else:
        save_caption_grid(images, titles, path, suptitle + (f"\n{note}" if note else ""),
                          owner=settings.checkpoint)
    missing = sum(image is None for image in images)
    print(f"saved figure {path}"
          + (f" ({missing} image(s) could not be fetched; captions only)" if missing else ""))
    what = (f"the --image files ({len(panels)})" if settings.image
            else f"{len(panels)} images of {settings.split or 'train and val'}")
    write_results_page(path, page_entries(panels, images,
                                          FEATURE_KINDS[checkpoint_features(config)]),
                       f"{settings.model}: {what}", page_about(settings, suptitle, note),
                       settings.checkpoint)


def is_sample(settings):
    """Whether the data folder is the bundled sample dataset (a caption equal to none is wrong)."""
    return Path(settings.data_dir).resolve() == SAMPLE_DIR.resolve()


def page_about(settings, *lines):  # the results page's header lines (None skipped)
    return [f"data: {shown_path(settings.data_dir)}", *(line for line in lines if line)]
