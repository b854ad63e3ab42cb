"""Caption images with a trained decoder and compare with the ground truth.

Usage:
    python inference.py --model rnn                                  # train and val images, one figure
    python inference.py --model transformer --split train --num_images 9
    python inference.py --model rnn --num_samples 300                # train images of that training subset
    python inference.py --model lstm --image photo.jpg more.jpg      # your own images
    python inference.py --model attention_lstm --attention --split val  # where each word looked
    python inference.py --model lstm --eval --beam_size 3            # COCO metrics on the test split
    python inference.py --model lstm --eval --split val --references captions_val2014.json  # raw COCO captions

The model is rebuilt from the checkpoint alone (this project's) or from the checkpoint and the
vocabulary of --data_dir (the original repository's weight-only files). Prints the reference
and the predicted caption of --num_images images of each split, marked as images the model was
trained on or not, and saves them as one grid, <out_dir>/<stem>_<splits>_<decoding>_captions.png with
the checkpoint's stem (e.g. rnn_checkpoint_train_val_greedy_captions.png; panels whose image cannot
be fetched show the captions only). With --image, the files go through the dataset's own VGG16 weights and fc7 -> PCA
transform, and the figure is <out_dir>/<stem>_images_<decoding>_captions.png. With --attention (a
decoder that attends over image regions, greedy decoding), the figure shows each image with one
panel per generated word and the attention that word was chosen with: <stem>_<splits>_attention.png
(<stem>_images_attention.png with --image). With --eval,
every image of the split (default: test when the dataset has one, else val, said) is captioned
once and scored against all of its references (BLEU-1..4, METEOR when Java is present, ROUGE-L,
CIDEr-D): the dataset's own captions, or with --references the raw captions of a COCO annotation
file; the scores and every predicted caption go to <out_dir>/<stem>_<split>_<decoding>_eval.json.
"""
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from core.util import distributed
from core.model.checkpoint import check_checkpoint, load_checkpoint
from core.util.cli import ArgumentParser, interrupts, resolve_device, user_errors
from core.data.coco_utils import (
    GRID_HINT, SAMPLE_DIR, data_splits, decode_captions, default_data_dir, load_coco_data, load_vocab, subset_rows)
from core.util.errors import UserError
from core.evaluation.metrics import caption_split, format_scores, raw_references, references_by_image, score_captions
from core.data.features import (
    GRID_TRANSFORM_FILE, describe_weights, ensure_transform, extract_fc7, load_transform, project, project_grid,
    region_boxes)
from core.util.fileio import atomic_write_text
from core.data.image_utils import try_load_image
from core.model.decoding import greedy_search
from core.evaluation.plots import panel_title, save_attention_figure, save_caption_grid
from core.model.registry import MODEL_TYPES


def parse_args(argv=None):
    p = ArgumentParser(prog="inference.py", description="Caption images with a trained decoder.")
    p.add_argument("--model", required=True, choices=tuple(MODEL_TYPES), help="decoder type the checkpoint must hold")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint to load (default: " + ", ".join(t.checkpoint for t in MODEL_TYPES.values()) + ")")
    p.add_argument("--data_dir", default=None,
                   help="dataset directory in the CS231n COCO layout (default: core/datasets/coco_captioning "
                        "when downloaded, else the bundled core/datasets/sample_captioning)")
    p.add_argument("--image", nargs="+", default=None, metavar="PATH",
                   help="caption these image files instead of dataset images")
    p.add_argument("--split", default=None, choices=("train", "val", "test"),
                   help="split to caption images of (default: both train and val, panels in one figure, each "
                        "titled with its split and whether the model was trained on it; --eval: test when the "
                        "dataset has one, else val)")
    p.add_argument("--num_images", type=int, default=4, help="how many distinct images to caption per split")
    p.add_argument("--num_samples", type=int, default=None,
                   help="draw the train images from the subset that `training.py --num_samples N` trained on "
                        "(default: the checkpoint's own training subset when it records one)")
    p.add_argument("--num_heads", type=int, default=2,
                   help="attention heads of an original-repository transformer_model.pt, which does not record "
                        "them (the original trained with 2); ignored for this project's checkpoints")
    p.add_argument("--max_length", type=int, default=30, help="longest caption to generate, in words")
    p.add_argument("--beam_size", type=int, default=1, help="beam width; 1 is greedy decoding")
    p.add_argument("--length_penalty", type=float, default=0.0,
                   help="beam search ranks captions by log-probability / length ** this (0: no normalisation)")
    p.add_argument("--attention", action="store_true",
                   help="draw where each word looked (decoders over image regions: " + ", ".join(
                       m for m, t in MODEL_TYPES.items() if t.features == "grid") + "), greedy decoding")
    p.add_argument("--eval", action="store_true",
                   help="caption every image of --split and report COCO caption metrics")
    p.add_argument("--references", default=None, metavar="ANNOTATIONS_JSON",
                   help="--eval: score against the raw captions of this COCO annotation file (captions_val2014.json), "
                        "as papers do, instead of the dataset's encoded ones (cut to 17 tokens, rare words <UNK>)")
    p.add_argument("--seed", type=int, default=231, help="seed for choosing the images")
    p.add_argument("--out_dir", default="outputs", help="directory for the caption figure")
    p.add_argument("--device", default=None, help="transformer device: cpu or cuda (default: cuda when available)")
    args = p.parse_args(argv)
    if min(args.num_images, args.max_length, args.beam_size, args.num_heads) <= 0:
        p.error("--num_images, --max_length, --beam_size and --num_heads must be positive")
    if args.num_samples is not None and args.num_samples <= 0:
        p.error("--num_samples must be positive")
    if args.eval and args.image:
        p.error("--eval scores a dataset split; it cannot be combined with --image")
    if args.attention and (args.eval or args.beam_size != 1):
        p.error("--attention draws the greedy captions of chosen images: drop --eval and --beam_size")
    if args.attention and MODEL_TYPES[args.model].features != "grid":
        p.error("--attention needs a decoder that attends over image regions ("
                + ", ".join(m for m, t in MODEL_TYPES.items() if t.features == "grid") + f"); {args.model} reads "
                "one feature vector per image")
    if args.references and not args.eval:
        p.error("--references is the reference captions of --eval; add --eval")
    if args.checkpoint is None:
        args.checkpoint = MODEL_TYPES[args.model].checkpoint
    return args


def resolve_location(url, data_dir):
    """An entry of a *_urls.txt file -> URL or path; relative paths are relative to the data directory."""
    if "://" in url or Path(url).is_absolute():
        return url
    return str(Path(data_dir) / url)


def decoding_name(args):
    """"greedy", "beam3" or "beam3_lp0.7": the decoding, for file names and titles."""
    if args.beam_size == 1:
        return "greedy"
    return f"beam{args.beam_size}" + (f"_lp{args.length_penalty:g}" if args.length_penalty else "")


def check_dataset(config, checkpoint, ident, data_dir):
    """UserError when the checkpoint was trained on another dataset than data_dir's, naming the folder
    it records."""
    extra = config.get("extra", {})
    trained_on = extra.get("dataset_id")
    if trained_on and ident and trained_on != ident:
        folder = extra.get("data_path", f"the one of dataset id {trained_on}")
        raise UserError(f"checkpoint {checkpoint} was trained on another dataset ({folder}) than {data_dir}: "
                        f"pass --data_dir {folder}")


def choose_data_dir(args, config, say):
    """--data_dir when given, else the folder the checkpoint records it was trained on when it exists,
    else the downloaded COCO data or the sample dataset; set once in args.data_dir and said."""
    if args.data_dir is None:
        recorded = config.get("extra", {}).get("data_path")
        if recorded and Path(recorded).is_dir():
            args.data_dir = recorded
            say(f"data: {recorded}, the folder {args.checkpoint} was trained on (--data_dir chooses another)")
        else:
            args.data_dir = str(default_data_dir(log=say))
    return args.data_dir


def sample(model, features, args):
    """features (N, ...) -> word indices (N, max_length) with the decoding flags, and with --attention
    the attention (N, max_length, R) of each word (None without)."""
    if args.attention:
        return greedy_search(model, features, args.max_length, attention=True)
    return model.sample(features, max_length=args.max_length, beam_size=args.beam_size,
                        length_penalty=args.length_penalty), None


def figure_suffix(args):
    """The end of the figure's name: "greedy_captions.png", "beam3_captions.png" or "attention.png"."""
    return "attention.png" if args.attention else f"{decoding_name(args)}_captions.png"


def load_checked_data(args, config):
    """The dataset of --data_dir, checked against the checkpoint (vocabulary, dataset, feature size)."""
    data = load_coco_data(args.data_dir, features=MODEL_TYPES[args.model].features)
    check_checkpoint(config, args.checkpoint, args.model, data["idx_to_word"])
    check_dataset(config, args.checkpoint, data["dataset_id"], args.data_dir)
    if data["train_features"].shape[-1] != config["input_dim"]:
        raise UserError(f"checkpoint {args.checkpoint} expects {config['input_dim']}-d features, "
                        f"{args.data_dir} has {data['train_features'].shape[-1]}-d")
    return data


def check_split(args, data):
    """UserError when --split names a split the dataset does not have (a test split is optional)."""
    if args.split and args.split not in data_splits(data):
        raise UserError(f"{args.data_dir} has no {args.split} split (it has {', '.join(data_splits(data))})")


def evaluate(args, model, config, ctx):
    """Caption every image of the split once, score it, print the table and write the JSON. Under
    torchrun each process captions every K-th image and rank 0 gathers, scores and writes."""
    data = load_checked_data(args, config)
    say = print if ctx.is_main else (lambda *a, **k: None)
    if args.split is None:
        args.split = "test" if "test" in data_splits(data) else "val"
        if args.split == "val":
            say(f"{args.data_dir} has no test split: scoring val, the split that chose the best checkpoint (build a "
                "test split with features_extraction.py --split_file dataset_coco.json, Karpathy's)")
    check_split(args, data)
    images = np.unique(data[f"{args.split}_image_idxs"])
    if args.references:
        refs = raw_references(args.references, data[f"{args.split}_urls"], images)
        references = (f"the raw captions of {args.references} ({sum(map(len, refs.values()))} for {len(refs)} "
                      "images, lower-cased and split into words, not cut, rare words kept)")
    else:
        refs = references_by_image(data[f"{args.split}_captions"], data[f"{args.split}_image_idxs"],
                                   data["idx_to_word"])
        references = (f"the {args.split} split's own captions ({sum(map(len, refs.values()))} for {len(refs)} "
                      f"images, as tokenized and cut to {data[f'{args.split}_captions'].shape[1]} tokens with rare "
                      "words <UNK>)")
    start = time.perf_counter()
    mine = caption_split(model, data, args.split, max_length=args.max_length, beam_size=args.beam_size,
                         length_penalty=args.length_penalty, progress=ctx.is_main, images=ctx.shard(images))
    parts = ctx.gather(mine)
    if not ctx.is_main:
        return
    predictions = {i: caption for part in parts for i, caption in part.items()}
    seconds = time.perf_counter() - start
    scores = score_captions(predictions, refs)
    decoding = "greedy" if args.beam_size == 1 else f"beam {args.beam_size}"
    print(f"scored: checkpoint {args.checkpoint}, {args.data_dir} split {args.split} ({len(predictions)} images), "
          f"{decoding} decoding ({seconds:.1f}s), against {references}")
    print(format_scores(scores))
    path = Path(args.out_dir) / f"{Path(args.checkpoint).stem}_{args.split}_{decoding_name(args)}_eval.json"
    urls = data[f"{args.split}_urls"]
    atomic_write_text(path, json.dumps({
        "model": args.model, "checkpoint": str(args.checkpoint), "data_dir": str(args.data_dir), "split": args.split,
        "beam_size": args.beam_size, "length_penalty": args.length_penalty, "references": references, "scores": scores,
        "decode_seconds": seconds,
        "predictions": [{"image": i, "url": str(urls[i]), "caption": c, "references": refs[i]}
                        for i, c in sorted(predictions.items())]}, indent=1))
    print(f"saved scores and captions {path}")


def trained_images(args, config, data):
    """Which train images the checkpoint was trained on and which to draw from.

    -> (set of train image indices it was trained on, or None when the checkpoint does not say,
        train image indices to draw from: the --num_samples subset, else the checkpoint's own).
    The subset is recreated from the number of captions and the seed `training.py` recorded.
    """
    train_args = config.get("extra", {}).get("args") or {}
    num_train, image_idxs = len(data["train_captions"]), data["train_image_idxs"]
    seed = train_args.get("seed", args.seed)
    trained = None
    if "num_samples" in train_args:
        n = train_args["num_samples"]
        rows = np.arange(num_train) if n is None else subset_rows(num_train, n, seed)
        trained = np.unique(image_idxs[rows])
    if args.num_samples is not None:
        if args.num_samples > num_train:
            raise UserError(f"--num_samples {args.num_samples} is out of range: {args.data_dir} has {num_train} "
                            "training captions")
        draw = np.unique(image_idxs[subset_rows(num_train, args.num_samples, seed)])
    else:
        draw = trained if trained is not None else np.unique(image_idxs)
    return (None if trained is None else set(trained.tolist())), draw


def caption_dataset_images(args, model, config):
    """Caption --num_images distinct images of each split and compare with their references:
    the one the prediction equals when there is one, else the first. -> list of panel dicts."""
    data = load_checked_data(args, config)
    check_split(args, data)
    splits = [args.split] if args.split else ["train", "val"]
    trained, train_draw = trained_images(args, config, data) if "train" in splits else (None, None)
    if "train" in splits:
        print(f"train images drawn from {len(train_draw)} of the split's {len(np.unique(data['train_image_idxs']))}"
              + ("" if trained is None else f"; the checkpoint was trained on the captions of {len(trained)} images"))
    panels = []
    for split in splits:
        image_idxs = data[f"{split}_image_idxs"]
        candidates = train_draw if split == "train" else np.unique(image_idxs)
        rng = np.random.default_rng(args.seed)
        chosen = candidates[rng.choice(len(candidates), size=min(args.num_images, len(candidates)), replace=False)]
        rows = np.flatnonzero(np.isin(image_idxs, chosen))
        refs = references_by_image(data[f"{split}_captions"][rows], image_idxs[rows], data["idx_to_word"])
        words, alphas = sample(model, data[f"{split}_features"][chosen], args)
        predicted = decode_captions(words, data["idx_to_word"])
        for k, (i, pred) in enumerate(zip(chosen, predicted)):
            if split != "train":
                status = "not trained on"
            else:
                status = None if trained is None else ("trained on" if int(i) in trained else "not trained on")
            equal = pred in refs[int(i)]
            panels.append({"location": resolve_location(data[f"{split}_urls"][i], args.data_dir),
                           "truth": pred if equal else refs[int(i)][0], "predicted": pred,
                           "truth_label": ("GT (the reference it equals)" if equal
                                           else f"GT (first of {len(refs[int(i)])} references)"),
                           "label": split + (f", {status}" if status else ""),
                           "alpha": None if alphas is None else alphas[k]})
    return panels, f"{Path(args.checkpoint).stem}_{'_'.join(splits)}_{figure_suffix(args)}", None


def caption_files(args, model, config):
    """Caption the --image files through the dataset's VGG16 weights and fc7 -> PCA transform (or, for
    a decoder of region features, its grid PCA transform)."""
    for path in args.image:
        if Path(path).is_dir():
            raise UserError(f"--image {path} is a directory: pass image files (e.g. {Path(path) / '*.jpg'})")
        if not Path(path).is_file():
            raise UserError(f"image file {path} not found")
    idx_to_word, _ = load_vocab(args.data_dir)
    check_checkpoint(config, args.checkpoint, args.model, idx_to_word)
    grid = MODEL_TYPES[args.model].features == "grid"
    if grid:
        path = Path(args.data_dir) / GRID_TRANSFORM_FILE
        if not path.is_file():
            raise UserError(f"{args.data_dir} has no {GRID_TRANSFORM_FILE} for the region features of new images: "
                            f"{GRID_HINT}")
        transform, info = load_transform(path)
    else:
        transform, info = ensure_transform(args.data_dir)
    check_dataset(config, args.checkpoint, info.get("dataset_id"), args.data_dir)
    if transform["components"].shape[0] != config["input_dim"]:
        raise UserError(f"checkpoint {args.checkpoint} expects {config['input_dim']}-d features, the transform of "
                        f"{args.data_dir} makes {transform['components'].shape[0]}-d")
    print(f"image features: {describe_weights(info['vgg16'])}" + (f", {info['layer']} regions" if grid else ""))
    if info.get("note"):
        print(f"note: {info['note']}")
    fc7, bad, *regions = extract_fc7(args.image, info["vgg16"], batch_size=16, device=args.feature_device,
                                     progress=False, grid_size=info.get("grid_size") if grid else None)
    if bad:
        first = min(bad)
        raise UserError(f"cannot read image {args.image[first]} ({bad[first]})")
    features = project_grid(regions[0], transform) if grid else project(fc7, transform)
    words, alphas = sample(model, features, args)
    predicted = decode_captions(words, idx_to_word)
    panels = [{"location": path, "truth": None, "predicted": pred, "label": "",
               "alpha": None if alphas is None else alphas[k]}
              for k, (path, pred) in enumerate(zip(args.image, predicted))]
    note = None
    if Path(args.data_dir).resolve() == SAMPLE_DIR.resolve():
        note = ("this model knows only the sample dataset's rendered scenes (one or two large shapes of 6 colours "
                "and 4 kinds on a grey background): captions of other images are not meaningful")
        print(f"note: {note}")
    return panels, f"{Path(args.checkpoint).stem}_images_{figure_suffix(args)}", note


def attention_rows(panels, images, config):
    """The rows of save_attention_figure: each panel's words up to and with <END>, their attention maps
    and where the regions lie in its image (an image that cannot be fetched: the 96 x 96 sample size)."""
    rows = []
    grid_size = int(round(np.sqrt(config["num_regions"])))
    for panel, image in zip(panels, images):
        words = panel["predicted"].split() + ["<END>"]
        height, width = image.shape[:2] if image is not None else (96, 96)
        label = (f"{panel['label']}: " if panel["label"] else "") + panel["predicted"]
        rows.append({"image": image, "label": label, "words": words, "alpha": panel["alpha"][:len(words)],
                     "boxes": region_boxes(grid_size, height, width)})
    return rows


def main(argv=None):
    args = parse_args(argv)
    with interrupts("inference.py", "the files written before are kept"), user_errors("inference.py"):
        args.feature_device = resolve_device(args.device)  # VGG16 of --image runs there, for every decoder
        args.device = args.feature_device if MODEL_TYPES[args.model].uses_torch else "cpu"
        ctx = distributed.init(torch.device(args.device).type)
        try:
            return run(args, ctx)
        finally:
            ctx.close()


def run(args, ctx):
    """main() in each process: under torchrun --eval shares the decoding; the rest is rank 0's work."""
    args.device = ctx.local_device(args.device)
    args.feature_device = ctx.local_device(args.feature_device)
    say = print if ctx.is_main else (lambda *a, **k: None)
    model, config = load_checkpoint(args.checkpoint, device=args.device, num_heads=args.num_heads,
                                    vocabulary=lambda: load_vocab(choose_data_dir(args, {}, say))[0])
    choose_data_dir(args, config, say)
    if config.get("format") == "original":
        sizes = ", ".join(f"{k} {config[k]}" for k in ("wordvec_dim", "hidden_dim", "num_heads", "num_layers",
                                                        "dim_feedforward", "max_length") if k in config)
        say(f"read {args.checkpoint} in the original repository's format (weights only): a {config['model']} "
            f"with {sizes}, the vocabulary of {args.data_dir}")
    if config["model"] != args.model:
        check_checkpoint(config, args.checkpoint, args.model, config["idx_to_word"])
    if args.max_length > config.get("max_length", args.max_length):  # models with a position limit
        raise UserError(f"--max_length {args.max_length} is longer than checkpoint {args.checkpoint} allows "
                        f"({config['max_length']} words)")
    torch.manual_seed(args.seed)
    if args.eval:
        evaluate(args, model, config, ctx)
        return 0
    if not ctx.is_main:
        return 0
    caption = caption_files if args.image else caption_dataset_images
    panels, figure_name, note = caption(args, model, config)

    images, titles = [], []
    for k, panel in enumerate(panels):
        print(f"[{k + 1}] " + (f"{panel['label']}: " if panel["label"] else "") + panel["location"]
              + (f"\n    truth:     {panel['truth']}" if panel["truth"] is not None else "")
              + f"\n    predicted: {panel['predicted']}")
        images.append(try_load_image(panel["location"]))
        titles.append(panel_title(panel, args.model))
    path = Path(args.out_dir) / figure_name
    trained_on = config.get("extra", {}).get("data_path")
    if trained_on and not os.path.relpath(trained_on).startswith(".."):
        trained_on = os.path.relpath(trained_on)  # the folder as the user sees it from here
    origin = (" (the original repository's file)" if config.get("format") == "original"
              else f" (trained on {trained_on or 'data it does not record'})")
    suptitle = f"{args.model}: {args.checkpoint}{origin}, {decoding_name(args).replace('beam', 'beam ')} decoding"
    if args.attention:
        save_attention_figure(attention_rows(panels, images, config), path, suptitle + (f". {note}" if note else ""))
    else:
        save_caption_grid(images, titles, path, suptitle + (f"\n{note}" if note else ""))
    missing = sum(image is None for image in images)
    print(f"saved figure {path}" + (f" ({missing} image(s) could not be fetched; captions only)" if missing else ""))
    return 0


if __name__ == "__main__":
    distributed.exit_after(main)
