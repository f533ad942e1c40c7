"""The AG News loader on a tiny real-format copy, and on the real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from labelfree.data import DataNotFoundError
from labelfree.data.ag_news import AG_NEWS_CLASSES, load_ag_news, read_ag_news_csv
from tests.fixtures.ag_news import make_ag_news_rows, write_ag_news


def test_texts_and_labels(tmp_path):
    write_ag_news(tmp_path, n_train=40, n_test=20)
    texts, labels = load_ag_news(tmp_path, "train")
    assert len(texts) == 40 and labels.shape == (40,) and labels.dtype == torch.int64
    assert torch.bincount(labels).tolist() == [10] * len(AG_NEWS_CLASSES)
    label, title, description = make_ag_news_rows(40, seed=0)[0]
    assert labels[0] == label - 1
    # title and description joined, quotes kept, the escaped newline (a backslash) a space
    assert texts[0] == f"{title} {description}".replace("\\", " ")
    assert '"' in texts[0] and "\\" not in texts[0]
    test_texts, test_labels = load_ag_news(tmp_path, "test")
    assert len(test_texts) == 20 and int(test_labels.min()) == 0 and int(test_labels.max()) == 3


def test_balanced_subset_and_train_file_preference(tmp_path):
    write_ag_news(tmp_path, n_train=40, train_name="train_balanced_9808.csv")
    texts, labels = load_ag_news(tmp_path, "train", n_per_class=3, seed=5)
    assert len(texts) == 12 and torch.bincount(labels).tolist() == [3, 3, 3, 3]
    assert load_ag_news(tmp_path, "train", n_per_class=3, seed=5)[0] == texts
    write_ag_news(tmp_path, n_train=8)  # train.csv, the original file, is preferred when present
    assert len(load_ag_news(tmp_path, "train")[0]) == 8


def test_missing_and_malformed(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"train\.csv or train_balanced_9808\.csv"):
        load_ag_news(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        load_ag_news(tmp_path, "validation")
    bad = tmp_path / "bad.csv"
    bad.write_text('"5","title","text"\n')
    with pytest.raises(ValueError, match=r"bad\.csv, line 1"):
        read_ag_news_csv(bad)


@pytest.mark.realdata
def test_real_ag_news():
    data_dir = os.environ.get("LABELFREE_DATA_DIR")
    if not data_dir or not (Path(data_dir) / "ag_news").is_dir():
        pytest.skip("LABELFREE_DATA_DIR unset or without ag_news/")
    texts, labels = load_ag_news(data_dir, "test")
    assert len(texts) == 7600 and torch.bincount(labels).tolist() == [1900] * 4
    texts, labels = load_ag_news(data_dir, "train")
    assert len(texts) == len(labels) and torch.bincount(labels, minlength=4).min() > 0
