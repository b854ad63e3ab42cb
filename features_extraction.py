"""Turn images + COCO-format captions into a dataset in the CS231n COCO captioning layout.

Usage:
    python features_extraction.py --train_annotations captions_train2014.json --train_images train2014/ \
        --val_annotations captions_val2014.json --val_images val2014/ --out_dir my_dataset
    python features_extraction.py ... --weights random --seed 0     # offline: seeded random VGG16
    torchrun --nproc_per_node K features_extraction.py ...          # K processes share the images

Extracts VGG16 fc7 (4096-d, after ReLU) with the ImageNet preprocessing, fits PCA to
--pca_dim dimensions on the train split only, and writes the captions, vocabulary,
features, image lists and the fc7 -> PCA transform (for captioning new images later).
"""
import torch

from core import distributed
from core.cli import ArgumentParser, interrupts, resolve_device, user_errors
from core.dataset_builder import build_dataset
from core.features import parse_weights


def parse_args(argv=None):
    p = ArgumentParser(prog="features_extraction.py",
                       description="Build a captioning dataset (CS231n COCO layout) from images and captions.")
    for split in ("train", "val"):
        p.add_argument(f"--{split}_annotations", required=True,
                       help=f"COCO-format captions JSON of the {split} split")
        p.add_argument(f"--{split}_images", required=True, help=f"folder holding the {split} images")
    p.add_argument("--out_dir", required=True, help="dataset folder to write")
    p.add_argument("--weights", default="imagenet",
                   help="VGG16 weights: imagenet (torchvision's, downloaded when online), random "
                        "(seeded random init, for offline use), or PATH to a state_dict file")
    p.add_argument("--seed", type=int, default=0, help="seed of --weights random")
    p.add_argument("--batch_size", type=int, default=32, help="images per forward pass")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes for image decoding")
    p.add_argument("--min_word_count", type=int, default=5,
                   help="words seen fewer times in the train captions become <UNK>")
    p.add_argument("--max_length", type=int, default=17, help="caption length with <START> and <END>; longer are cut")
    p.add_argument("--pca_dim", type=int, default=512, help="PCA dimensions of the *_pca.h5 features")
    p.add_argument("--skip_bad_images", action="store_true",
                   help="drop (and report) missing or unreadable images and captions of unknown images "
                        "instead of stopping")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if min(args.batch_size, args.pca_dim, args.min_word_count) <= 0 or args.max_length < 3 or args.num_workers < 0:
        p.error("--batch_size, --pca_dim and --min_word_count must be positive, --max_length at least 3")
    return args


def main(argv=None):
    args = parse_args(argv)
    with interrupts("features_extraction.py", f"{args.out_dir} is as it was"), user_errors("features_extraction.py"):
        device = resolve_device(args.device)
        ctx = distributed.init(torch.device(device).type)
        device = ctx.local_device(device)
        try:
            build_dataset({"train": (args.train_annotations, args.train_images),
                           "val": (args.val_annotations, args.val_images)},
                          args.out_dir, parse_weights(args.weights, args.seed), batch_size=args.batch_size,
                          device=device, num_workers=args.num_workers, min_word_count=args.min_word_count,
                          max_length=args.max_length, pca_dim=args.pca_dim, skip_bad_images=args.skip_bad_images,
                          progress=not args.quiet and ctx.is_main, log=print if ctx.is_main else lambda *a: None,
                          dist=ctx)
        finally:
            ctx.close()
    return 0


if __name__ == "__main__":
    distributed.exit_after(main)
