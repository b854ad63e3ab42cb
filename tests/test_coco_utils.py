import json
import shutil

import h5py
import numpy as np
import pytest

from core.data.coco_utils import decode_captions, load_coco_data, sample_coco_minibatch, subset_rows
from core.util.errors import UserError


def test_layout_is_read_back(fake_coco):
    data = load_coco_data(fake_coco)
    assert data["train_captions"].shape == (300, 17) and data["train_captions"].dtype == np.int32
    assert data["train_image_idxs"].shape == (300,) and data["train_image_idxs"].dtype == np.int32
    assert data["train_features"].shape == (60, 512) and data["train_features"].dtype == np.float32
    assert data["val_features"].shape == (20, 512) and len(data["val_urls"]) == 20
    assert data["idx_to_word"][:4] == ["<NULL>", "<START>", "<END>", "<UNK>"]
    assert all(data["word_to_idx"][w] == i for i, w in enumerate(data["idx_to_word"]))
    assert (data["train_captions"][:, 0] == 1).all()
    assert load_coco_data(fake_coco, pca_features=False)["train_features"].shape == (60, 64)


def test_max_train_is_a_seeded_subset_without_replacement(fake_coco):
    full = load_coco_data(fake_coco)
    a = load_coco_data(fake_coco, max_train=120, seed=5)
    b = load_coco_data(fake_coco, max_train=120, seed=5)
    c = load_coco_data(fake_coco, max_train=120, seed=6)
    np.testing.assert_array_equal(a["train_captions"], b["train_captions"])
    assert not np.array_equal(a["train_captions"], c["train_captions"])
    rows = subset_rows(len(full["train_captions"]), 120, seed=5)
    assert len(rows) == 120 and len(np.unique(rows)) == 120
    np.testing.assert_array_equal(a["train_captions"], full["train_captions"][rows])
    np.testing.assert_array_equal(a["train_image_idxs"], full["train_image_idxs"][rows])
    assert len(load_coco_data(fake_coco, max_train=300)["train_captions"]) == 300
    with pytest.raises(UserError, match="301"):
        load_coco_data(fake_coco, max_train=301)


def test_decode_captions():
    idx_to_word = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "cat"]
    assert decode_captions(np.array([1, 4, 5, 2, 4, 0]), idx_to_word) == "a cat"
    assert decode_captions(np.array([[1, 4, 2], [4, 3, 0]]), idx_to_word) == ["a", "a <UNK>"]


def test_sample_minibatch_draws_distinct_rows_with_their_own_images(fake_coco):
    """The CS231n function: B distinct caption rows, each with its image's features and URL.
    Breaks caught: rows drawn with replacement, features or URLs of other images."""
    data = load_coco_data(fake_coco)
    caps, feats, urls = sample_coco_minibatch(data, batch_size=7, split="val", rng=np.random.default_rng(0))
    rows = np.random.default_rng(0).choice(len(data["val_captions"]), size=7, replace=False)
    images = data["val_image_idxs"][rows]
    np.testing.assert_array_equal(caps, data["val_captions"][rows])
    np.testing.assert_array_equal(feats, data["val_features"][images])
    np.testing.assert_array_equal(urls, data["val_urls"][images])
    assert len(set(rows.tolist())) == 7


def test_missing_and_broken_files_give_clear_errors(fake_coco, tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_coco_data(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(fake_coco, broken)
    (broken / "val2014_urls.txt").unlink()
    with pytest.raises(UserError, match="val2014_urls.txt"):
        load_coco_data(broken)
    shutil.copy(fake_coco / "val2014_urls.txt", broken)
    (broken / "train2014_vgg16_fc7_pca.h5").write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="cannot read .*train2014_vgg16_fc7_pca.h5"):
        load_coco_data(broken)
    shutil.copy(fake_coco / "train2014_vgg16_fc7_pca.h5", broken)
    (broken / "coco2014_vocab.json").write_text(json.dumps({"words": []}))
    with pytest.raises(UserError, match="vocabulary"):
        load_coco_data(broken)
    shutil.copy(fake_coco / "coco2014_vocab.json", broken)
    with h5py.File(broken / "coco2014_captions.h5", "a") as f:
        f["val_image_idxs"][0] = 999
    with pytest.raises(UserError, match="image indices"):
        load_coco_data(broken)
