import numpy as np
import pytest

from core.evaluation.metrics import format_scores, references_by_image, score_captions

IDX_TO_WORD = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "red", "circle", "blue", "square", "left", "of"]
W = {w: i for i, w in enumerate(IDX_TO_WORD)}


def encode(text, length=10):
    ids = [W["<START>"]] + [W[w] for w in text.split()] + [W["<END>"]]
    return ids + [W["<NULL>"]] * (length - len(ids))


def test_references_are_grouped_by_image_without_special_tokens():
    captions = np.array([encode("a red circle"), encode("a blue square"), encode("red circle"),
                         encode("a blue square left of a red circle")])
    refs = references_by_image(captions, np.array([3, 7, 3, 7]), IDX_TO_WORD)
    assert refs == {3: ["a red circle", "red circle"], 7: ["a blue square", "a blue square left of a red circle"]}


def test_perfect_predictions_score_one_and_wrong_ones_less():
    refs = {0: ["a red circle left of a blue square", "a red circle"],
            1: ["a blue square", "a blue square left of a red circle"],
            2: ["a red circle left of a blue square"]}
    perfect = {0: "a red circle left of a blue square", 1: "a blue square left of a red circle",
               2: "a red circle left of a blue square"}
    scores = score_captions(perfect, refs, meteor=False)
    assert scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["BLEU-1"] == pytest.approx(1.0, abs=1e-6) and scores["ROUGE-L"] == pytest.approx(1.0)
    assert scores["METEOR"] is None and "skipped" in format_scores(scores)
    swapped = {0: perfect[1], 1: "a blue square", 2: perfect[2]}  # image 0 gets the caption of another image
    worse = score_captions(swapped, refs, meteor=False)
    assert worse["BLEU-4"] < 1.0 and worse["CIDEr"] < scores["CIDEr"]
    with pytest.raises(ValueError, match="same images"):
        score_captions({0: "a"}, refs)


@pytest.mark.slow
def test_meteor_runs_when_java_is_present():
    import shutil

    if shutil.which("java") is None:
        pytest.skip("no Java runtime: METEOR is reported as skipped (tested above)")
    scores = score_captions({0: "a red circle"}, {0: ["a red circle", "a circle"]})
    assert scores["METEOR"] == pytest.approx(1.0, abs=1e-3)


def test_an_interrupted_meteor_scoring_ends_its_java_process_and_does_not_hang(monkeypatch):
    """Break caught: Ctrl-C during METEOR left pycocoevalcap's lock held, so its __del__ waited for
    ever (until a second Ctrl-C) and its Java process lived on."""
    import subprocess
    import sys
    import threading

    import pycocoevalcap.meteor.meteor as meteor

    import core.evaluation.metrics as evaluation

    made = []

    class InterruptedMeteor:
        def __init__(self):
            self.meteor_p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            self.lock = threading.Lock()
            made.append(self)

        def compute_score(self, gts, res):
            self.lock.acquire()  # as pycocoevalcap does, then Ctrl-C arrives while Java scores
            raise KeyboardInterrupt

    monkeypatch.setattr(meteor, "Meteor", InterruptedMeteor)
    monkeypatch.setattr(evaluation, "java_available", lambda: True)
    with pytest.raises(KeyboardInterrupt):
        evaluation.score_captions({1: "a cat"}, {1: ["a cat", "a dog"]})
    scorer = made[0]
    assert scorer.meteor_p.poll() is not None  # the process is ended
    assert scorer.lock.acquire(timeout=1)  # and its lock is free: pycocoevalcap's __del__ would not hang


def test_the_coco_results_file_is_keyed_by_coco_image_id(tmp_path, capsys):
    """Break caught: --eval wrote only its own JSON, keyed by row index and URL, which the COCO
    evaluation server and other toolkits cannot read."""
    import json

    import numpy as np

    from core.evaluation.captions import coco_ids, write_coco_results

    urls = np.array(["val2014/COCO_val2014_000000391895.jpg", "images/val/000000522418.jpg",
                     "http://farm4.staticflickr.com/3153/2970773875_164f0c0b83_z.jpg",
                     "photos/000000391895.png"])
    assert coco_ids(urls, [0, 1]) == ({0: 391895, 1: 522418}, None)
    assert coco_ids(urls, [0, 2])[0] is None  # a Flickr URL carries no COCO id
    assert coco_ids(urls, [2], known={2: 42}) == ({2: 42}, None)  # what --references matched
    # two names of one id (break caught: said to give no ids at all)
    assert coco_ids(urls, [0, 3]) == (None, "two images' names give the COCO id 391895 "
                                            "(val2014/COCO_val2014_000000391895.jpg, photos/000000391895.png)")
    path = tmp_path / "r_val_greedy_results.json"
    write_coco_results(path, {1: "a dog", 0: "a cat"}, urls)
    assert json.loads(path.read_text()) == [{"image_id": 391895, "caption": "a cat"},
                                            {"image_id": 522418, "caption": "a dog"}]
    write_coco_results(tmp_path / "none.json", {2: "a bird"}, urls)
    assert not (tmp_path / "none.json").exists()
    assert "--references captions_val2014.json supplies them" in capsys.readouterr().out


def test_figures_name_folders_relative_to_the_repository(tmp_path, monkeypatch):
    """Break caught: the committed attention figure's title showed the absolute path of the machine
    that drew it (/work/main/core/datasets/sample_captioning)."""
    from core.data.coco_utils import SAMPLE_DIR
    from core.evaluation.captions import shown_path

    monkeypatch.chdir(tmp_path)  # wherever the figure is drawn from
    assert shown_path(SAMPLE_DIR) == "core/datasets/sample_captioning"
    assert shown_path(tmp_path / "mine") == "mine"


def test_the_beam_options_reach_the_evaluation_and_name_its_files(fake_coco, tmp_path, capsys, monkeypatch):
    """--block_trigrams, --remove_bad_endings, --group_size and --diversity_lambda go to the decoding
    of --eval and name its files (break caught: the options dropped, or their scores written over
    the plain beam's file)."""
    import json

    import core.evaluation.metrics
    import inference
    import training
    from tests.helpers import one_line_error

    training.main(["--model", "rnn", "--data_dir", str(fake_coco), "--hidden_dim", "8", "--wordvec_dim", "8",
                   "--epochs", "1", "--max_iters", "1", "--quiet", "--checkpoint", str(tmp_path / "r.npz"),
                   "--out_dir", str(tmp_path)])
    seen = []
    decode = core.evaluation.metrics.decode
    monkeypatch.setattr(core.evaluation.metrics, "decode", lambda *a, **k: (seen.append(k), decode(*a, **k))[1])
    inference.main(["--model", "rnn", "--checkpoint", str(tmp_path / "r.npz"), "--eval", "--out_dir", str(tmp_path),
                    "--beam_size", "4", "--block_trigrams", "--remove_bad_endings", "--group_size", "2",
                    "--diversity_lambda", "0.3"])
    written = json.loads((tmp_path / "r_val_beam4_tri_end_g2d0.3_eval.json").read_text())
    assert written["decoding"] == "beam4_tri_end_g2d0.3"
    assert seen[0]["block_trigrams"] is True and seen[0]["group_size"] == 2
    assert seen[0]["diversity_lambda"] == 0.3 and len(seen[0]["bad_endings"]) == 0  # no such word in w0..w35
    capsys.readouterr()
    one_line_error(capsys, lambda: inference.main(["--model", "rnn", "--checkpoint", str(tmp_path / "r.npz"),
                                                   "--beam_size", "3", "--group_size", "2"]),
                   "--beam_size 3 must be a multiple of --group_size 2")
