"""Compare the train/validation loss curves of the decoders in one figure.

Usage:
    python benchmarks/plot_loss_curves.py [--history_dir outputs] [--out docs/loss_curves.png]

Reads <history_dir>/<stem>_history.json as written by training.py (<stem>: the model type's default
checkpoint's, e.g. lstm_checkpoint), for every model type of
core/model/registry.py (the ones present are plotted), and saves the figure.
"""
import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.model.registry import MODEL_TYPES  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history_dir", default="outputs",
                        help="folder holding the <checkpoint stem>_history.json files")
    parser.add_argument("--out", default="outputs/loss_curves.png", help="where to save the figure")
    args = parser.parse_args(argv)
    fig, (ax_loss, ax_cider) = plt.subplots(1, 2, figsize=(11, 4))
    found = []
    for model, color in zip(MODEL_TYPES, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        path = Path(args.history_dir) / f"{Path(MODEL_TYPES[model].checkpoint).stem}_history.json"
        if not path.is_file():
            continue
        found.append(model)
        h = json.loads(path.read_text())
        epochs = range(1, len(h["train_loss"]) + 1)
        ax_loss.plot(epochs, h["train_loss"], "-", color=color, label=f"{model} train")
        ax_loss.plot(epochs, h["val_loss"], "--", color=color, label=f"{model} val")
        if h.get("val_cider"):
            ax_cider.plot(h["eval_epoch"], h["val_cider"], "o-", color=color, label=model)
    if not found:
        parser.exit(2, f"no *_history.json files in {args.history_dir}: run training.py first\n")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss (summed over words, per caption)")
    ax_loss.legend(fontsize=8)
    ax_cider.set_xlabel("epoch")
    ax_cider.set_ylabel("val CIDEr (--eval_every)")
    ax_cider.legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    plt.close(fig)
    print(f"saved {args.out} ({', '.join(found)})")


if __name__ == "__main__":
    main()
