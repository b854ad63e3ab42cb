"""Caption images with a trained decoder and compare with the ground truth.

Usage:
    python inference.py --model rnn                      # train and val images, one figure
    python inference.py --model transformer --split train --num_images 9
    python inference.py --model rnn --num_samples 300    # train images of that training subset
    python inference.py --model lstm --image photo.jpg more.jpg      # your own images
    python inference.py --model attention_lstm --attention --split val  # where each word looked
    python inference.py --model lstm --eval --beam_size 3            # COCO metrics, test split
    python inference.py --model lstm --eval --split val --references captions_val2014.json
        # against the raw COCO captions

The model is rebuilt from the checkpoint alone (this project's) or from the checkpoint and the
vocabulary of --data_dir (the original repository's weight-only files). Prints the reference
and the predicted caption of --num_images images of each split, marked as images the model was
trained on or not, and saves them as one grid, <out_dir>/<stem>_<splits>_<decoding>_captions.png
with the checkpoint's stem (e.g. rnn_checkpoint_train_val_greedy_captions.png; panels whose image
cannot be fetched show the captions only). With --image, the files go through the dataset's own
VGG16 weights and fc7 -> PCA transform, and the figure is
<out_dir>/<stem>_images_<decoding>_captions.png. With --attention (a decoder that attends over image
regions, greedy decoding), the figure shows each image with one panel per generated word and the
attention that word was chosen with: <stem>_<splits>_attention.png (<stem>_images_attention.png with
--image). With --eval, every image of the split (default: test when the dataset has one, else val,
said) is captioned once and scored against all of its references (BLEU-1..4, METEOR when Java is
present, ROUGE-L, CIDEr-D): the dataset's own captions, or with --references the raw captions of a
COCO annotation file; the scores and every predicted caption go to
<out_dir>/<stem>_<split>_<decoding>_eval.json.
"""
from core.model.registry import MODEL_TYPES
from core.util.cli import (
    Flag, check_flags, exit_after, flag_parser, interrupts, limit_threads, resolve_device,
    user_errors)

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
    Flag("attention", bool, False, f"draw where each word looked (decoders over image regions: "
         f"{', '.join(ATTENDING)}), greedy decoding"),
    Flag("eval", bool, False, "caption every image of --split and report COCO caption metrics"),
    Flag("references", str, None, "--eval: score against the raw captions of this COCO annotation "
         "file (captions_val2014.json), as papers do, instead of the dataset's encoded ones (cut "
         "to 17 tokens, rare words <UNK>)", metavar="ANNOTATIONS_JSON"),
    Flag("seed", int, 231, "seed for choosing the images"),
    Flag("out_dir", str, "outputs", "directory for the caption figure"),
    Flag("threads", int, None, "CPU threads of numpy's BLAS and torch (unset: one per core; fewer "
         "on a machine busy with other jobs, see training.py --help)", "positive"),
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
    if args.image and args.image_folder:
        p.error("--image and --image_folder: pass one of them")
    if args.eval and (args.image or args.image_folder):
        p.error("--eval scores a dataset split; it cannot be combined with --image or "
                "--image_folder")
    if args.attention and args.eval:
        p.error("--attention draws the captions of chosen images: drop --eval")
    if args.attention and args.model not in ATTENDING:
        p.error(f"--attention needs a decoder that attends over image regions "
                f"({', '.join(ATTENDING)}); {args.model} reads one feature vector per image")
    if args.references and not args.eval:
        p.error("--references is the reference captions of --eval; add --eval")
    return args


def main(argv=None):
    args = parse_args(argv)
    with interrupts("inference.py",
                    "the files written before are kept"), user_errors("inference.py"):
        # the captioning stack, torch included, only once the flags are read (--help stays instant)
        import torch

        from core.evaluation.captions import caption_figure, evaluate, settle
        from core.util import distributed

        limit_threads(args.threads)
        # one process, or one per GPU under torchrun (--eval shares the decoding; the rest is rank
        # 0's)
        uses_torch = MODEL_TYPES[args.model].uses_torch
        ctx = distributed.init(torch.device(resolve_device(args.device) if uses_torch
                                            else "cpu").type)
        try:
            say = print if ctx.is_main else (lambda *a, **k: None)
            # the checkpoint, data folder and split, once
            settings, model, config = settle(args, ctx, say)
            torch.manual_seed(settings.seed)
            if settings.eval:
                evaluate(settings, model, config, ctx)
            elif ctx.is_main:
                caption_figure(settings, model, config)
            return 0
        finally:
            ctx.close()


if __name__ == "__main__":
    exit_after(main)
