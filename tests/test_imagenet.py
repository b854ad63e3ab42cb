"""CS231n's ImageNet validation images: the loader in CS231n's form, reading the file's pickled class
names without running code, and inference.py --imagenet_val captioning them with their classes."""
import numpy as np
import pytest

from core.data import imagenet
from core.util.errors import UserError
from tests.test_reliability import Payload  # pickles a call to open(path, "w")


def _file(path, n=3):
    np.savez(path, X=(np.arange(n * 16 * 16 * 3) % 255).astype(np.uint8).reshape(n, 16, 16, 3),
             y=np.arange(n) + 5, label_map=np.array({k + 5: f"class {k}" for k in range(n)}, dtype=object))
    return path


def test_the_loader_reads_cs231ns_file_and_its_class_names(tmp_path):
    """Breaks caught: num ignored, the class names' keys read as strings, the file's pickled dict
    needing allow_pickle (which would run a crafted file's code)."""
    path = _file(tmp_path / "imagenet_val_25.npz")
    X, y, names = imagenet.load_imagenet_val(path=path)
    assert X.shape == (3, 16, 16, 3) and X.dtype == np.uint8 and y.tolist() == [5, 6, 7]
    assert names == {5: "class 0", 6: "class 1", 7: "class 2"}
    X2, y2, _ = imagenet.load_imagenet_val(num=2, path=path)
    assert len(X2) == len(y2) == 2 and np.array_equal(X2, X[:2])
    with pytest.raises(UserError, match="get_imagenet_val.sh"):
        imagenet.load_imagenet_val(path=tmp_path / "missing.npz")


def test_a_crafted_label_map_runs_nothing(tmp_path):
    """Break caught: the class names read with allow_pickle (a crafted file's code run)."""
    marker = tmp_path / "payload_ran"
    path = tmp_path / "crafted.npz"
    np.savez(path, X=np.zeros((1, 4, 4, 3), np.uint8), y=np.array([0]),
             label_map=np.array([Payload(str(marker))], dtype=object))
    with pytest.raises(UserError, match="is not CS231n's imagenet_val_25.npz"):
        imagenet.load_imagenet_val(path=path)
    assert not marker.exists()


def test_inference_captions_them_with_their_classes(tmp_path, capsys, monkeypatch):
    """--imagenet_val: the images through the dataset's features, each caption printed beside its
    ImageNet class (break caught: the classes not shown)."""
    import core.data.features
    import core.evaluation.captions
    import inference
    from core.data.coco_utils import SAMPLE_DIR, load_vocab
    from core.model.checkpoint import save_checkpoint
    from core.model.rnn_model import CaptioningRNN

    monkeypatch.setattr(imagenet, "IMAGENET_FILE", _file(tmp_path / "imagenet_val_25.npz"))
    monkeypatch.setattr(core.data.features, "extract_fc7",
                        lambda paths, *a, **k: (np.zeros((len(paths), 4096), np.float32), {}))
    shown = []
    monkeypatch.setattr(core.evaluation.captions, "save_caption_grid",
                        lambda images, titles, path, suptitle, **k: shown.append((titles, path)))
    _, word_to_idx = load_vocab(SAMPLE_DIR)
    checkpoint = tmp_path / "m.npz"
    save_checkpoint(CaptioningRNN(word_to_idx, input_dim=512, wordvec_dim=4, hidden_dim=4, seed=0), checkpoint)
    inference.main(["--model", "rnn", "--checkpoint", str(checkpoint), "--data_dir", str(SAMPLE_DIR),
                    "--imagenet_val", "--device", "cpu", "--out_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert out.count("ImageNet: class") == 3 and "ImageNet: class 2" in out
    titles, path = shown[0]
    assert path.name == "m_imagenet_val_greedy_captions.png" and "ImageNet: class 0" in titles[0]
