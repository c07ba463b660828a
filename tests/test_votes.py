"""Annotator votes: distributions under FER+'s outlier rule, the soft-label loss, and FaceFolder's targets."""
import math

import numpy as np
import pytest
import torch

from common.errors import UserError
from data.datasets import FaceFolder
from data.votes import read_votes, vote_distribution
from helpers import make_image_folder
from networks.losses import CECriterion, DANCriterion, classification_loss
from networks.outputs import ModelOutput

CLASSES = ["angry", "happy", "neutral", "sad"]


def test_vote_distribution_drops_single_votes_and_non_emotions():
    counts = {"neutral": 6, "happy": 0, "sad": 1, "angry": 1, "unknown": 2}
    assert vote_distribution(counts, CLASSES).tolist() == [0, 0, 1, 0]
    counts = {"happy": 5, "sad": 3, "angry": 1, "unknown": 1}
    assert np.allclose(vote_distribution(counts, CLASSES), [0, 5 / 8, 0, 3 / 8])
    assert np.allclose(vote_distribution(counts, CLASSES, min_votes=1), [1 / 9, 5 / 9, 0, 3 / 9])
    assert vote_distribution({"happy": 1, "unknown": 9}, CLASSES) is None  # nothing left: caller uses the label


def test_soft_label_cross_entropy_against_hand_computation():
    logits = torch.tensor([[1.0, 2.0, 0.0]])
    soft = torch.tensor([[0.5, 0.5, 0.0]])
    # softmax: e / (e + e^2 + 1) = 0.244728, e^2 / (...) = 0.665241
    expected = -(0.5 * math.log(0.244728) + 0.5 * math.log(0.665241))
    got = classification_loss(logits, torch.tensor([1]), soft, label_smoothing=0.0).item()
    assert math.isclose(got, expected, rel_tol=1e-5)
    # one-hot targets give the ordinary cross-entropy
    onehot = classification_loss(logits, torch.tensor([1]), torch.tensor([[0.0, 1.0, 0.0]]), 0.0).item()
    assert math.isclose(onehot, -math.log(0.665241), rel_tol=1e-5)


def test_logit_adjustment_adds_the_bias_inside_the_loss_only():
    logits = torch.tensor([[0.0, 0.0]])
    bias = torch.tensor([math.log(0.75), math.log(0.25)])  # tau = 1, prior (0.75, 0.25)
    # softmax(log prior) = prior, so the loss of class 1 is -log 0.25
    got = classification_loss(logits, torch.tensor([1]), None, 0.0, bias).item()
    assert math.isclose(got, -math.log(0.25), rel_tol=1e-6)


def test_dan_criterion_takes_soft_targets_for_ce_and_labels_for_affinity():
    torch.manual_seed(0)
    criterion = DANCriterion(num_classes=3, feat_dim=4)
    out = ModelOutput(logits=torch.randn(2, 3), features=torch.randn(2, 4), heads=torch.randn(2, 2, 4))
    labels = torch.tensor([0, 2])
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]])
    hard, mixed = criterion(out, labels), criterion(out, labels, soft)
    assert torch.equal(hard["affinity"], mixed["affinity"]) and torch.equal(hard["partition"], mixed["partition"])
    expected = -(soft * out.logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(mixed["ce"], expected)
    assert torch.allclose(CECriterion()(out, labels, soft)["ce"], expected)


def write_votes(root, rows):
    lines = ["file,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"]
    lines += [f"{path}," + ",".join(str(v) for v in votes) for path, votes in rows]
    (root / "votes.csv").write_text("\n".join(lines) + "\n")


def test_face_folder_reads_votes_and_falls_back_to_one_hot(tmp_path):
    root = make_image_folder(tmp_path / "fp", ["happy", "sad"], per_class=2, size=16)
    write_votes(root, [("train/happy/train_happy_0.png", [2, 6, 0, 1, 0, 0, 0, 0, 1, 0]),   # neutral 2 happy 6
                       ("train/sad/train_sad_0.png", [0, 1, 0, 9, 0, 0, 0, 0, 0, 0])])      # the 1 is dropped
    other = make_image_folder(tmp_path / "other", ["happy"], per_class=1, size=16)
    ds = FaceFolder([root, other], "train", 16)
    assert ds.classes == ["happy", "sad"]
    targets, from_votes = ds.vote_targets()
    row = {s.path: (t, v) for s, t, v in zip(ds.samples, targets, from_votes)}
    t, v = row[str(root / "train/happy/train_happy_0.png")]
    assert v and np.allclose(t, [1.0, 0.0])  # neutral is not a class of this data: left out, the rest renormalised
    t, v = row[str(root / "train/sad/train_sad_0.png")]
    assert v and np.allclose(t, [0.0, 1.0])
    t, v = row[str(other / "train/happy/train_happy_0.png")]  # same relative path, another dataset: no votes
    assert not v and t.tolist() == [1.0, 0.0]
    assert from_votes.sum() == 2 and len(ds) == 5


def test_votes_file_errors_are_one_line(tmp_path):
    (tmp_path / "v.csv").write_text("file,happy\nx.png,two\n")
    with pytest.raises(UserError, match="whole numbers"):
        read_votes(tmp_path / "v.csv")
    (tmp_path / "w.csv").write_text("path,happy\n")
    with pytest.raises(UserError, match="'file' column"):
        read_votes(tmp_path / "w.csv")
