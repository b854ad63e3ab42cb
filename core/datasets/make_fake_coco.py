"""Write a dataset in the exact CS231n COCO captioning layout, with generated content.

For tests and benchmarks: the captions follow a per-class word template (so a decoder
can learn them from the features); the fc7 features are non-negative class centroids plus
noise and the "PCA" features a fixed linear projection of them, as in the real data.

Usage:
    python -m core.datasets.make_fake_coco OUT_DIR                 # a few hundred captions
    python -m core.datasets.make_fake_coco OUT_DIR --full_size     # COCO's sizes (400,135 captions)
"""
import argparse
import json
from contextlib import nullcontext
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

SPECIAL = ["<NULL>", "<START>", "<END>", "<UNK>"]
FULL_SIZE = {"train_images": 82783, "train_captions": 400135, "val_images": 40504,
             "val_captions": 195954}


def write_fake_coco(out_dir, train_images=60, val_images=20, captions_per_image=5, vocab_size=40,
                    num_classes=6, pca_dim=512, fc7_dim=None, max_length=17, image_dir=None,
                    train_captions=None, val_captions=None, grid=None, boxes=None, seed=0):
    """Write coco2014_captions.h5, {train,val}2014_vgg16_fc7_pca.h5 (and _fc7.h5 with fc7_dim),
    coco2014_vocab.json and {train,val}2014_urls.txt into out_dir; with grid (R, G) also
    {train,val}2014_vgg16_grid_pca.h5, (images, R, G) float16 region features: the image's class
    centroid in region class % R, noise elsewhere.

    vocab_size counts the 4 special tokens. train_captions/val_captions override
    images * captions_per_image. With image_dir, a small PNG per image is written
    there and the URL files hold their paths; otherwise they hold paths that do not exist.
    Returns out_dir as a Path.
    """
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    words = SPECIAL + [f"w{i}" for i in range(vocab_size - len(SPECIAL))]
    (out_dir / "coco2014_vocab.json").write_text(
        json.dumps({"idx_to_word": words, "word_to_idx": {w: i for i, w in enumerate(words)}}))

    body = max_length - 2
    templates = rng.integers(len(SPECIAL), vocab_size, size=(num_classes, body))
    lengths = rng.integers(max(2, body // 3), body + 1, size=num_classes)
    F = fc7_dim or pca_dim  # fc7 features are written only with fc7_dim
    centroids = np.abs(rng.standard_normal((num_classes, F))).astype(np.float32)
    fc7_mean = centroids.mean(axis=0)
    # linear, like a PCA
    pca_map = (rng.standard_normal((pca_dim, F)) / np.sqrt(F)).astype(np.float32)
    counts = {"train": (train_images, train_captions), "val": (val_images, val_captions)}
    # its own stream: the other files are the same with and without
    grid_rng = np.random.default_rng([seed, 1])
    grid_centroids = (None if grid is None
                      else grid_rng.standard_normal((num_classes, grid[1])).astype(np.float32))

    with h5py.File(out_dir / "coco2014_captions.h5", "w") as caps_file:
        for split, (num_images, num_captions) in counts.items():
            num_captions = num_images * captions_per_image if num_captions is None else num_captions
            classes = rng.integers(0, num_classes, size=num_images)
            image_idxs = (np.arange(num_captions) % num_images).astype(np.int32)
            captions = np.zeros((num_captions, max_length), dtype=np.int32)
            cls = classes[image_idxs]
            captions[:, 0] = SPECIAL.index("<START>")
            captions[:, 1:1 + body] = templates[cls]
            swap = rng.integers(1, 1 + body, size=num_captions)  # one word per caption varies
            captions[np.arange(num_captions), swap] = rng.integers(len(SPECIAL), vocab_size,
                                                                   size=num_captions)
            ends = 1 + lengths[cls]
            captions[np.arange(max_length)[None, :] > ends[:, None]] = SPECIAL.index("<NULL>")
            captions[np.arange(num_captions), ends] = SPECIAL.index("<END>")
            caps_file.create_dataset(f"{split}_captions", data=captions)
            caps_file.create_dataset(f"{split}_image_idxs", data=image_idxs)

            fc7_path = out_dir / f"{split}2014_vgg16_fc7.h5"
            with h5py.File(out_dir / f"{split}2014_vgg16_fc7_pca.h5", "w") as f, \
                    (h5py.File(fc7_path, "w") if fc7_dim else nullcontext()) as g:
                feats = f.create_dataset("features", shape=(num_images, pca_dim), dtype=np.float32)
                fc7 = g.create_dataset("features", shape=(num_images, fc7_dim),
                                       dtype=np.float32) if g else None
                for start in range(0, num_images, 8192):
                    block = classes[start:start + 8192]
                    noise = rng.standard_normal((len(block), F), dtype=np.float32)
                    # (B, F) non-negative, as after ReLU
                    raw = np.maximum(centroids[block] + 0.1 * noise, 0)
                    feats[start:start + len(block)] = (raw - fc7_mean) @ pca_map.T
                    if fc7 is not None:
                        fc7[start:start + len(block)] = raw
            if grid is not None:
                _write_grid(out_dir / f"{split}2014_vgg16_grid_pca.h5", classes, grid,
                            grid_centroids, grid_rng)
            if boxes is not None:
                _write_boxes(out_dir / f"{split}2014_vgg16_boxes_pca.h5", classes, boxes,
                             np.random.default_rng([seed, 2, len(classes)]))

            _write_urls(out_dir, split, classes, image_dir)
    return out_dir


def _write_urls(out_dir, split, classes, image_dir):
    """<split>2014_urls.txt: with image_dir, a 32 x 32 PNG per image (grey by its class) written
    there and its path; else paths that do not exist."""
    if image_dir is None:
        urls = [f"missing-images/{split}/{i:06d}.jpg" for i in range(len(classes))]
    else:
        split_dir = Path(image_dir) / split
        split_dir.mkdir(parents=True, exist_ok=True)
        urls = []
        for i, c in enumerate(classes):
            path = split_dir / f"{i:06d}.png"
            Image.fromarray(np.full((32, 32, 3), (40 * c) % 256, dtype=np.uint8)).save(path)
            urls.append(str(path.resolve()))
    (out_dir / f"{split}2014_urls.txt").write_text("\n".join(urls) + "\n")


def _write_grid(path, classes, grid, centroids, rng, block=4096):
    """Region features (images, R, G) float16: centroid of the class in region class % R, noise
    elsewhere."""
    R, G = grid
    with h5py.File(path, "w") as f:
        out = f.create_dataset("features", shape=(len(classes), R, G), dtype=np.float16,
                               chunks=(min(len(classes), 256), R, G))
        for start in range(0, len(classes), block):
            c = classes[start:start + block]
            regions = 0.3 * rng.standard_normal((len(c), R, G), dtype=np.float32)
            regions[np.arange(len(c)), c % R] += centroids[c]
            out[start:start + len(c)] = regions.astype(np.float16)


def _write_boxes(path, classes, boxes, rng, block=4096):
    """Object regions in the boxes layout: features (images, K, D) float16, boxes (images, K, 4) in
    640 x 480 images, counts (images,), image_sizes (images, 2); the class's centroid (a fixed
    pattern of the class) in the first box, noise rows drawn from a bank of 4096 (full size is
    4.5 billion values: drawing each would take longer than writing them)."""
    K, D = boxes
    counts = rng.integers(min(10, K), K + 1, size=len(classes)).astype(np.int32)
    with h5py.File(path, "w") as f:
        features = f.create_dataset("features", shape=(len(classes), K, D), dtype=np.float16,
                                    chunks=(min(len(classes), 8), K, D), fillvalue=0)
        corners = f.create_dataset("boxes", shape=(len(classes), K, 4), dtype=np.float32,
                                   fillvalue=0)
        f.create_dataset("counts", data=counts)
        f.create_dataset("image_sizes", data=np.tile(np.float32([640, 480]), (len(classes), 1)))
        centroids = np.random.default_rng(7).standard_normal((int(classes.max()) + 1, D))
        bank = 0.3 * rng.standard_normal((4096, D), dtype=np.float32)
        for start in range(0, len(classes), block):
            c, n = classes[start:start + block], counts[start:start + block]
            own = np.arange(K)[None, :] < n[:, None]  # (B, K)
            values = bank[rng.integers(0, len(bank), size=(len(c), K))]  # (B, K, D)
            values[:, 0] += centroids[c]
            features[start:start + len(c)] = np.where(own[..., None], values, 0).astype(np.float16)
            x0 = rng.uniform(0, 500, size=(len(c), K, 1))
            y0 = rng.uniform(0, 380, size=(len(c), K, 1))
            wh = rng.uniform(20, 100, size=(len(c), K, 2))
            xyxy = np.concatenate([x0, y0, x0 + wh[..., :1], y0 + wh[..., 1:]], axis=2)
            corners[start:start + len(c)] = np.where(own[..., None], xyxy, 0).astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="directory to write the dataset into")
    parser.add_argument("--full_size", action="store_true",
                        help="COCO 2014's sizes: 82,783/40,504 images, 400,135/195,954 captions, "
                             "1004 words")
    parser.add_argument("--fc7", action="store_true",
                        help="also write 4096-d non-PCA fc7 feature files")
    parser.add_argument("--grid", action="store_true",
                        help="also write region features (49 regions of 64)")
    parser.add_argument("--boxes", type=int, nargs=2, default=None, metavar=("K", "D"),
                        help="also write object regions: up to K boxes an image of D-d features "
                             "(36 2048: the standard bottom-up features, 18 GB at full size)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    if args.full_size:
        write_fake_coco(args.out_dir, train_images=FULL_SIZE["train_images"],
                        val_images=FULL_SIZE["val_images"],
                        train_captions=FULL_SIZE["train_captions"],
                        val_captions=FULL_SIZE["val_captions"],
                        vocab_size=1004, num_classes=500, fc7_dim=4096 if args.fc7 else None,
                        grid=(49, 64) if args.grid else None, boxes=args.boxes, seed=args.seed)
    else:
        write_fake_coco(args.out_dir, fc7_dim=4096 if args.fc7 else None, grid=(49, 64)
                        if args.grid else None, boxes=args.boxes, seed=args.seed)
    print(f"wrote {args.out_dir}")


if __name__ == "__main__":
    main()
