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
from core.evaluation.settings import parse_args
from core.model.registry import MODEL_TYPES
from core.util.cli import (
    choose_threads, exit_after, interrupts, is_main_process, limit_threads, resolve_device,
    user_errors)

def main(argv=None):
    args = parse_args(argv)
    with interrupts("inference.py",
                    "the files written before are kept"), user_errors("inference.py"):
        # the captioning stack, torch included, only once the flags are read (--help stays instant)
        import torch

        from core.evaluation.captions import caption_figure, evaluate, settle
        from core.util import distributed

        limit_threads(choose_threads(args.threads,
                                     print if is_main_process() else (lambda *a, **k: None)))
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
