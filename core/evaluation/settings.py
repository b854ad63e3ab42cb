"""inference.py's flags and their settling: the flag table (read by --help without torch), the
checks of the flags together, and `settle`, which decides the checkpoint, its data folder, the split
and the devices once, into a frozen Settings.
"""
import dataclasses
from pathlib import Path

from core.data.coco_utils import data_splits, default_data_dir, load_vocab, split_names
from core.model.decoding import BAD_ENDINGS
from core.model.registry import MODEL_TYPES
from core.util.cli import THREADS_HELP, Flag, check_flags, flag_parser, resolve_device
from core.util.errors import UserError
from core.util.fileio import check_writable

# decoders over image regions
ATTENDING = tuple(m for m, t in MODEL_TYPES.items() if t.feature_kind.regions)
FLAGS = (
    Flag("model", str, None, "decoder type the checkpoint must hold", choices=tuple(MODEL_TYPES),
         required=True),
    Flag("checkpoint", str, None, "checkpoint to load (default: "
         + ", ".join(t.checkpoint for t in MODEL_TYPES.values()) + ")"),
    Flag("data_dir", str, None, "dataset directory in the CS231n COCO layout (default: "
         "core/datasets/coco_captioning when downloaded, else the bundled "
         "core/datasets/sample_captioning)"),
    Flag("image", str, None, "caption these image files instead of dataset images",
         metavar="PATH", nargs="+"),
    Flag("image_folder", str, None, "caption every image of this folder (in batches, with a "
         "progress bar): all captions to <stem>_<folder>_<decoding>_captions.json and the COCO "
         "results file, the first --num_images in the figure", metavar="DIR"),
    Flag("imagenet_val", bool, False, "caption CS231n's 25 ImageNet validation images "
         "(core/datasets/get_imagenet_val.sh fetches them), their class names beside the captions"),
    Flag("split", str, None, "split to caption images of (default: both train and val, panels in "
         "one figure, each titled with its split and whether the model was trained on it; --eval: "
         "test when the dataset has one, else val)", choices=("train", "val", "test")),
    Flag("num_images", int, 4, "how many distinct images to caption per split", "positive"),
    Flag("num_samples", int, None, "draw the train images from the subset that `training.py "
         "--num_samples N` trained on (default: the checkpoint's own training subset when it "
         "records one)", "positive"),
    Flag("num_heads", int, 2, "attention heads of an original-repository transformer_model.pt, "
         "which does not record them (the original trained with 2); ignored for this project's "
         "checkpoints", "positive"),
    Flag("max_length", int, 30, "longest caption to generate, in words", "positive"),
    Flag("beam_size", int, 1, "beam width; 1 is greedy decoding", "positive"),
    Flag("length_penalty", float, 0.0, "beam search ranks captions by log-probability / length ** "
         "this (0: no normalisation)"),
    Flag("block_trigrams", bool, False, "beam search (and greedy) never repeats a trigram of its "
         "caption (self-critical.pytorch's --block_trigrams)"),
    Flag("remove_bad_endings", bool, False, "a caption may not end on " + ", ".join(
        f'"{w}"' for w in BAD_ENDINGS) + " (self-critical.pytorch's --remove_bad_endings)"),
    Flag("group_size", int, 1, "diverse beam search: the beams in this many groups, each lowering "
         "the words earlier groups chose at a step by --diversity_lambda (--beam_size a multiple "
         "of it; 1: plain beam search)", "positive"),
    Flag("diversity_lambda", float, 0.5, "diverse beam search's penalty per earlier group's "
         "choice of a word", "nonnegative"),
    Flag("attention", bool, False, f"draw where each word looked (decoders over image regions: "
         f"{', '.join(ATTENDING)}), greedy decoding"),
    Flag("eval", bool, False, "caption every image of --split and report COCO caption metrics"),
    Flag("references", str, None, "--eval: score against the raw captions of this COCO annotation "
         "file (captions_val2014.json), as papers do, instead of the dataset's encoded ones (cut "
         "to 17 tokens, rare words <UNK>)", metavar="ANNOTATIONS_JSON"),
    Flag("seed", int, 231, "seed for choosing the images"),
    Flag("out_dir", str, "outputs", "directory for the caption figure"),
    Flag("threads", int, None, THREADS_HELP, "positive"),
    Flag("device", str, None, "where a torch decoder runs and new images' features are computed: "
         "cpu or cuda (default: cuda when available)"),
)
FLAG = {f.name: f for f in FLAGS}
GROUPS = {None: tuple(FLAG)}


def build_parser():
    """The argument parser of the flag table."""
    return flag_parser("inference.py", "Caption images with a trained decoder.", GROUPS, FLAG)


def parse_args(argv=None):
    """The flags, each checked and then together (one line and exit 2 for a bad one)."""
    p = build_parser()
    args = p.parse_args(argv)
    check_flags(p, FLAG, vars(args))
    if sum(map(bool, (args.image, args.image_folder, args.imagenet_val))) > 1:
        p.error("--image, --image_folder and --imagenet_val: pass one of them")
    if args.eval and (args.image or args.image_folder or args.imagenet_val):
        p.error("--eval scores a dataset split; it cannot be combined with --image, "
                "--image_folder or --imagenet_val")
    if args.attention and args.eval:
        p.error("--attention draws the captions of chosen images: drop --eval")
    if args.attention and args.model not in ATTENDING:
        p.error(f"--attention needs a decoder that attends over image regions "
                f"({', '.join(ATTENDING)}); {args.model} reads one feature vector per image")
    if args.beam_size % args.group_size:
        p.error(f"--beam_size {args.beam_size} must be a multiple of --group_size "
                f"{args.group_size} (the beams of each group)")
    if args.references and not args.eval:
        p.error("--references is the reference captions of --eval; add --eval")
    return args


Settings = dataclasses.make_dataclass(
    "Settings", [(f.name, object) for f in FLAGS] + [("feature_device", str),
                                                      ("image_labels", object)], frozen=True)
Settings.__doc__ = ("inference.py's settled flags (frozen): one attribute per row of FLAGS, with the "
                    "checkpoint, the data folder, the split (--eval: test when the dataset has "
                    "one, else val) and the devices decided, feature_device, where new images' "
                    "features are computed, and image_labels {image file: what to show beside "
                    "its caption} (--imagenet_val's class names).")


def settle(args, ctx, say):
    """The parsed flags -> (Settings, model, its checkpoint config), the checkpoint loaded once; the
    data folder is --data_dir, else the one the checkpoint records (when it exists), else the
    downloaded COCO data or the sample dataset, each said."""
    values = dict(vars(args))
    values["checkpoint"] = args.checkpoint or MODEL_TYPES[args.model].checkpoint
    # VGG16 of --image runs there
    values["feature_device"] = ctx.local_device(resolve_device(args.device))
    values["device"] = values["feature_device"] if MODEL_TYPES[args.model].uses_torch else "cpu"
    fallback = {}

    def data_dir():
        if "dir" not in fallback:
            fallback["dir"] = args.data_dir or str(default_data_dir(log=say))
        return fallback["dir"]

    from core.model.checkpoint import check_checkpoint, load_checkpoint  # torch: a file to read

    model, config = load_checkpoint(values["checkpoint"], device=values["device"],
                                    num_heads=args.num_heads,
                                    vocabulary=lambda: load_vocab(data_dir())[0])
    recorded = config.get("extra", {}).get("data_path")
    if args.data_dir is None and "dir" not in fallback and recorded and Path(recorded).is_dir():
        values["data_dir"] = recorded
        say(f"data: {recorded}, the folder {values['checkpoint']} was trained on (--data_dir "
            f"chooses another)")
    else:
        values["data_dir"] = data_dir()
    if config.get("format") == "original":
        shown = ("wordvec_dim", "hidden_dim", "num_heads", "num_layers", "dim_feedforward",
                 "max_length")
        sizes = ", ".join(f"{k} {config[k]}" for k in shown if k in config)
        say(f"read {values['checkpoint']} in the original repository's format (weights only): a "
            f"{config['model']} with {sizes}, the vocabulary of {values['data_dir']}")
    if config["model"] != args.model:
        check_checkpoint(config, values["checkpoint"], args.model, config["idx_to_word"])
    if args.max_length > config.get("max_length", args.max_length):  # models with a position limit
        raise UserError(f"--max_length {args.max_length} is longer than checkpoint "
                        f"{values['checkpoint']} allows ({config['max_length']} words)")
    splits = split_names(values["data_dir"])
    if args.split and splits and args.split not in splits:
        raise UserError(f"{values['data_dir']} has no {args.split} split (it has "
                        f"{', '.join(splits)})")
    if args.eval and args.split is None:
        values["split"] = "test" if "test" in splits else "val"
        if values["split"] == "val":
            say(f"{values['data_dir']} has no test split: scoring val, the split that chose the "
                f"best checkpoint "
                "(build a test split with features_extraction.py --split_file dataset_coco.json, "
                "Karpathy's)")
    values["image"] = tuple(args.image) if args.image else None
    values["image_labels"] = {}
    if args.image_folder:
        values["image"] = folder_images(args.image_folder)
    if args.imagenet_val:
        values["image"], values["image_labels"] = imagenet_images(values["out_dir"])
    check_writable(folders=[("--out_dir", values["out_dir"])])  # before any image is captioned
    return Settings(**values), model, config


def imagenet_images(out_dir):
    """CS231n's ImageNet validation images written as PNGs into <out_dir>/imagenet_val/ -> their
    paths and {path: "ImageNet: class names"}."""
    from PIL import Image

    from core.data import imagenet

    X, y, names = imagenet.load_imagenet_val(path=imagenet.IMAGENET_FILE)
    folder = Path(out_dir) / "imagenet_val"
    folder.mkdir(parents=True, exist_ok=True)
    paths, labels = [], {}
    for k, (image, label) in enumerate(zip(X, y)):
        path = str(folder / f"{k:02d}.png")
        Image.fromarray(image).save(path)
        paths.append(path)
        labels[path] = f"ImageNet: {names.get(int(label), label)}"
    return tuple(paths), labels


def check_split(settings, data):
    """UserError when the split asked for is not in the loaded dataset (a test split is
    optional)."""
    if settings.split and settings.split not in data_splits(data):
        raise UserError(f"{settings.data_dir} has no {settings.split} split (it has "
                        f"{', '.join(data_splits(data))})")


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def folder_images(folder):
    """--image_folder DIR -> its image files (by suffix, any case), sorted; UserError when it is not
    a folder or holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--image_folder {folder} is not a folder")
    files = sorted(str(p) for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"--image_folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return tuple(files)


def decoding_name(settings):
    """"greedy", "beam3", "beam3_lp0.7", with "_tri" (--block_trigrams), "_end"
    (--remove_bad_endings), "_g3d0.5" (--group_size 3 --diversity_lambda 0.5): the decoding, for
    file names and titles."""
    name = "greedy" if settings.beam_size == 1 else f"beam{settings.beam_size}"
    if settings.beam_size > 1 and settings.length_penalty:
        name += f"_lp{settings.length_penalty:g}"
    if settings.block_trigrams:
        name += "_tri"
    if settings.remove_bad_endings:
        name += "_end"
    if settings.group_size > 1:
        name += f"_g{settings.group_size}d{settings.diversity_lambda:g}"
    return name


def beam_options(settings, idx_to_word):
    """The settings' options of core.model.decoding.beam_search ({} for plain decoding)."""
    options = {}
    if settings.block_trigrams:
        options["block_trigrams"] = True
    if settings.remove_bad_endings:
        options["bad_endings"] = tuple(i for i, w in enumerate(idx_to_word) if w in BAD_ENDINGS)
    if settings.group_size > 1:
        options.update(group_size=settings.group_size, diversity_lambda=settings.diversity_lambda)
    return options


def figure_suffix(settings):
    """The end of the figure's name: "greedy_captions.png", "beam3_captions.png",
    "attention.png" (greedy) or "beam3_attention.png"."""
    if settings.attention:
        beam = "" if settings.beam_size == 1 else f"{decoding_name(settings)}_"
        return f"{beam}attention.png"
    return f"{decoding_name(settings)}_captions.png"
