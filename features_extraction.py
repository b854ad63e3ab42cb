"""Turn images + COCO-format captions into a dataset in the CS231n COCO captioning layout.

Usage:
    python features_extraction.py --train_annotations captions_train2014.json \
        --train_images train2014/ --val_annotations captions_val2014.json --val_images val2014/ \
        --out_dir my_dataset
    python features_extraction.py --split_file dataset_coco.json --train_images train2014/ \
        --val_images val2014/ --out_dir coco_karpathy          # Karpathy's train/val/test split
    python features_extraction.py ... --weights random --seed 0     # offline: seeded random VGG16
    torchrun --nproc_per_node K features_extraction.py ...          # K processes share the images

Extracts VGG16 fc7 (4096-d, after ReLU) with the ImageNet preprocessing, fits PCA to
--pca_dim dimensions on the train split only, and writes the captions, vocabulary,
features, image lists and the fc7 -> PCA transform (for captioning new images later).
A test split (--test_annotations and --test_images, or the test images of --split_file) is
scored by `inference.py --eval`, never used to choose a checkpoint; without one, val does both.
"""
import contextlib
from pathlib import Path

from core.data.boxes import (
    BOX_SIDE, BOX_THRESHOLD, DETECTION_THRESHOLD, LEARNED_MAX_BOXES, MAX_BOXES, MIN_BOXES)
from core.data.encoders import ENCODERS, GRID_SIZES
from core.util.cli import (
    THREADS_HELP, Flag, check_flags, exit_after, flag_parser, interrupts, user_errors)
from core.util.fileio import check_writable

SPLITS = ("train", "val", "test")
IMAGES_HELP = {"train": " (with --split_file: the train2014 images, and those of files without a "
                        "filepath)",
               "val": " (with --split_file: the val2014 images)", "test": ""}
FLAGS = (
    *(Flag(f"{s}_annotations", str, None, f"COCO-format captions JSON of the {s} split"
           + (" (optional: scored by inference.py --eval only)" if s == "test" else ""))
      for s in SPLITS),
    *(Flag(f"{s}_images", str, None, f"folder holding the {s} images{IMAGES_HELP[s]}")
      for s in SPLITS),
    Flag("split_file", str, None, "Karpathy split file (dataset_coco.json): its train+restval, val "
         "and test images and raw captions make the splits, instead of the *_annotations files"),
    Flag("out_dir", str, None, "dataset folder to write", required=True),
    Flag("weights", str, "imagenet", "the encoder's weights: imagenet (torchvision's, downloaded "
         "when online), random (seeded random init, for offline use), or PATH to a state_dict "
         "file"),
    Flag("seed", int, 0, "seed of --weights random"),
    Flag("encoder", str, "vgg16", "image encoder: vgg16 (fc7, 4096-d, and its 512-channel grid: "
         "the CS231n layout) or resnet101 (the 2048-d mean of its last block and that block's "
         "2048-channel grid, as self-critical.pytorch's prepro_feats.py); the dataset's info names "
         "it", choices=tuple(ENCODERS)),
    Flag("batch_size", int, 32, "images per forward pass", "positive"),
    Flag("device", str, None, "cpu or cuda (default: cuda when available)"),
    Flag("num_workers", int, 0, "DataLoader worker processes for image decoding", "nonnegative"),
    Flag("min_word_count", int, 5, "words seen fewer times in the train captions become <UNK>",
         "positive"),
    Flag("max_length", int, 17, "caption length with <START> and <END> (at least 3); longer are "
         "cut"),
    Flag("pca_dim", int, 512, "PCA dimensions of the *_pca.h5 features (0: no PCA, the encoder's "
         "own vectors)", "nonnegative"),
    Flag("grid", bool, False, "also write region features for the attention decoders: "
         "<split>2014_vgg16_grid_pca.h5, (images, regions, --grid_pca_dim) float16"),
    Flag("grid_size", int, 7, "--grid regions per side: 7 (pool5, 49 regions) or 14 (conv5_3, "
         "196)", choices=GRID_SIZES),
    Flag("grid_pca_dim", int, 64, "--grid: PCA dimensions of a region's channels (fitted on train "
         "regions); at 64, COCO's 82,783 train images take 0.5 GB and its 40,504 val images "
         "0.25 GB", "positive"),
    Flag("boxes", str, None, "also write object regions for the attention decoders (bottom-up "
         "attention): <split>2014_vgg16_boxes_pca.h5 with each box's feature, the box and a count "
         "per image. SOURCE: detector (torchvision's Faster R-CNN, class-agnostic, the adaptive "
         "count below; COCO-trained weights when --weights imagenet, else random), a COCO "
         "detection-results JSON of any detector ([{image_id, bbox: [x, y, w, h], score}]), or "
         "plain (the parts that differ from a plain background: rendered scenes only, such as the "
         "sample dataset's; photographs need a detector)", metavar="SOURCE"),
    Flag("bottom_up_tsv", str, None, "also write object regions, imported from the precomputed "
         "bottom-up features (peteanderson80/bottom-up-attention's trainval tsv files: 36 or "
         "10-100 boxes of 2048-d per COCO image), matched to the images by COCO id; with "
         "--box_pca_dim 0 the 2048-d features are kept as they are", metavar="FILE", nargs="+"),
    Flag("detector", str, None, "--boxes detector: a bottom-up detector trained here (`python -m "
         "core.datasets.train_detector` writes core/datasets/sample_captioning/"
         "bottom_up_detector.npz): its boxes and each box's feature from its box head, instead of "
         "torchvision's Faster R-CNN and the encoder's map; copied into the dataset, where "
         "inference.py --image finds it", metavar="FILE"),
    Flag("box_threshold", float, None, "--boxes: keep the boxes scoring at least this (a score "
         f"in [0, 1]; default {BOX_THRESHOLD}, {DETECTION_THRESHOLD} with --detector) ..."),
    Flag("min_boxes", int, None, f"... but at least this many (the best scoring; default "
         f"{MIN_BOXES}, 1 with --detector) ...", "positive"),
    Flag("max_boxes", int, None, "... and at most this many (Anderson et al.'s 0.2, 10 and "
         f"100; --min_boxes 36 --max_boxes 36 is their fixed 36; {LEARNED_MAX_BOXES} with "
         "--detector)", "positive"),
    Flag("box_pca_dim", int, 128, "PCA dimensions of a box's features (VGG16 4608, ResNet-101 "
         "2048; fitted on train boxes; 0: none, for --bottom_up_tsv)", "nonnegative"),
    Flag("box_side", int, BOX_SIDE, "--boxes: the image is scaled to this longer side (and padded "
         "to a square, nothing cut) for the feature map the boxes are pooled from", "positive"),
    Flag("threads", int, None, THREADS_HELP, "positive"),
    Flag("skip_bad_images", bool, False, "drop (and report) missing or unreadable images and "
         "captions of unknown images instead of stopping"),
    Flag("quiet", bool, False, "no progress bars"),
)
FLAG = {f.name: f for f in FLAGS}
GROUPS = {
    "the splits": (*(f"{s}_{k}" for s in SPLITS for k in ("annotations", "images")),
                   "split_file", "out_dir"),
    "captions": ("min_word_count", "max_length"),
    "the image encoder": ("encoder", "weights", "seed", "pca_dim", "batch_size", "device",
                          "num_workers", "threads"),
    "grid regions": ("grid", "grid_size", "grid_pca_dim"),
    "object regions": ("boxes", "detector", "bottom_up_tsv", "box_threshold", "min_boxes",
                       "max_boxes",
                       "box_pca_dim", "box_side"),
    "the run": ("skip_bad_images", "quiet"),
}


def build_parser():
    """The argument parser of the flag table."""
    return flag_parser("features_extraction.py", "Build a captioning dataset (CS231n COCO layout) "
                       "from images and captions.", GROUPS, FLAG)


def parse_args(argv=None):
    """The flags, each checked and then together (one line and exit 2 for a bad one), before any
    work."""
    p = build_parser()
    args = p.parse_args(argv)
    check_flags(p, FLAG, vars(args))
    _check_splits(p, args)
    if args.max_length < 3:
        p.error(f"--max_length must be at least 3 (<START>, a word, <END>), got {args.max_length}")
    if args.detector and args.boxes != "detector":
        p.error("--detector FILE is the detector of --boxes detector: add it")
    learned = (DETECTION_THRESHOLD, 1, LEARNED_MAX_BOXES) if args.detector else (
        BOX_THRESHOLD, MIN_BOXES, MAX_BOXES)
    for name, default in zip(("box_threshold", "min_boxes", "max_boxes"), learned):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.min_boxes > args.max_boxes or not 0 <= args.box_threshold <= 1:
        p.error(f"--min_boxes {args.min_boxes} must be at most --max_boxes {args.max_boxes}, and "
                f"--box_threshold a score in [0, 1] (got {args.box_threshold})")
    if args.boxes and args.bottom_up_tsv:
        p.error("--boxes and --bottom_up_tsv both give the object regions: choose one")
    if args.box_pca_dim == 0 and args.boxes:
        p.error("--box_pca_dim 0 (no PCA) is for --bottom_up_tsv; --boxes needs a PCA")
    if args.boxes == "detector" and not args.detector and args.weights not in ("imagenet",
                                                                               "random"):
        p.error("--boxes detector takes torchvision's COCO-trained Faster R-CNN (with --weights "
                "imagenet) or a seeded random one (--weights random); --weights PATH names the "
                "encoder's weights only: give the detector's boxes as a detections file instead")
    encoder = ENCODERS[args.encoder]
    if args.pca_dim > encoder.pooled_dim or args.grid_pca_dim > encoder.grid_channels:
        p.error(f"--pca_dim must be at most {encoder.pooled_dim} ({args.encoder}'s vector) and "
                f"--grid_pca_dim at most {encoder.grid_channels} (a region's channels)")
    return args


def _check_splits(p, args):
    """One line (exit 2) when the split flags do not make a dataset: --split_file with
    *_annotations, a split's captions without its images, two splits of the same file."""
    if args.split_file:
        given = [f"--{s}_annotations" for s in SPLITS if getattr(args, f"{s}_annotations")]
        if given or args.test_images:
            p.error(f"--split_file gives the splits and their captions: drop "
                    f"{', '.join(given or ['--test_images'])}")
        if not args.train_images:
            p.error("--split_file needs --train_images (and --val_images for COCO's val2014 "
                    "images)")
        return
    for split in SPLITS:
        ann, images = getattr(args, f"{split}_annotations"), getattr(args, f"{split}_images")
        if (split != "test" or ann or images) and not (ann and images):
            p.error(f"--{split}_annotations and --{split}_images are needed together (or "
                    f"--split_file)")
    given = {s: Path(getattr(args, f"{s}_annotations")) for s in SPLITS
             if getattr(args, f"{s}_annotations")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        if a in given and b in given and given[a].is_file() and given[b].is_file() \
                and given[a].read_bytes() == given[b].read_bytes():
            p.error(f"--{a}_annotations and --{b}_annotations are the same file ({given[b]}): each "
                    "split needs its own images and captions")


def splits(args, log):
    """The splits to build, as build_dataset takes them; says when there is no test split."""
    from core.data.karpathy import read_split_file

    if args.split_file:
        found = read_split_file(args.split_file,
                                {"train2014": args.train_images, "val2014": args.val_images},
                                args.train_images)
    else:
        found = {s: (getattr(args, f"{s}_annotations"), getattr(args, f"{s}_images"))
                 for s in SPLITS if getattr(args, f"{s}_annotations")}
    if "test" not in found:
        log("no test split (--split_file or --test_annotations): val will both choose the best "
            "checkpoint and be the split scored, like the CS231n download's val2014 used whole")
    return found


def main(argv=None):
    args = parse_args(argv)
    with interrupts("features_extraction.py", f"{args.out_dir} is as it was"), \
            user_errors("features_extraction.py"), contextlib.ExitStack() as stack:
        check_writable(folders=[("--out_dir", args.out_dir)])  # before hours of VGG16
        import torch  # the flags are read without it (--help, a bad flag: at once)

        from core.data.bottom_up import tsv_source
        from core.data.box_sources import BoxSource
        from core.data.builder import build_dataset
        from core.data.encoders import parse_weights
        from core.util import distributed
        from core.util.cli import choose_threads, limit_threads, resolve_device
        from core.util.fileio import RunLock

        device = resolve_device(args.device)
        ctx = distributed.init(torch.device(device).type)
        device = ctx.local_device(device)
        log = print if ctx.is_main else lambda *a: None
        limit_threads(choose_threads(args.threads, log))
        if args.boxes == "detector" and not args.detector and args.weights == "random":
            log("note: --boxes detector with --weights random: the detector's weights are random "
                "too, so its boxes mean nothing (tens of them per image): for offline tests only; "
                "--weights imagenet (online) gives torchvision's COCO-trained detector")
        try:
            spec = parse_weights(args.weights, args.seed, args.encoder)
            # one build per folder: a second is refused (rank 0 holds it; every rank agrees)
            lock = RunLock(Path(args.out_dir) / "coco2014_captions.h5", who="dataset build",
                           hint="wait for it, or pass another --out_dir")
            ctx.agreed(lambda: lock.__enter__() if ctx.is_main else None)
            stack.callback(lambda: lock.__exit__(None, None, None) if ctx.is_main else None)
            build_dataset(splits(args, log), args.out_dir, spec, batch_size=args.batch_size,
                          device=device, num_workers=args.num_workers,
                          min_word_count=args.min_word_count,
                          max_length=args.max_length, pca_dim=args.pca_dim,
                          grid_size=args.grid_size if args.grid else None,
                          grid_pca_dim=args.grid_pca_dim,
                          boxes=None if args.boxes is None else BoxSource.parse(
                              args.boxes, args.detector, threshold=args.box_threshold,
                              min_boxes=args.min_boxes, max_boxes=args.max_boxes),
                          box_pca_dim=args.box_pca_dim, box_side=args.box_side,
                          bottom_up_tsv=args.bottom_up_tsv and tsv_source(args.bottom_up_tsv),
                          skip_bad_images=args.skip_bad_images,
                          progress=not args.quiet and ctx.is_main, log=log, dist=ctx)
        finally:
            ctx.close()
    return 0


if __name__ == "__main__":
    exit_after(main)
