"""utils/engine.py against hand-computed values: Precision.choose and needs_scaler, Runtime's
channels_last and autocast, TrainStep's outputs, train_one_epoch's SGD updates, means, accuracy,
step count, soft targets, mixing and non-finite streaks, check_streak, nonfinite_tensor, and
evaluate's probabilities, losses and sample order.

The model is a bias-free linear layer on CPU whose weights the tests set, so every number can be
worked out on paper.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError
from networks.losses import DANCriterion, total_loss
from networks.outputs import ModelOutput
from utils.distributed import DistInfo
from utils.engine import (MAX_NONFINITE_STEPS, BatchMix, Optimisation, Precision, Runtime, TrainInputs, TrainStep,
                          check_streak, evaluate, nonfinite_tensor, train_one_epoch)

CPU = Runtime(torch.device("cpu"))
# logits of x = [1, 2] under EYE_SUM are [1, 2, 3]: log-sum-exp is 3 + log(1 + e^-1 + e^-2).
EYE_SUM = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
LSE_123 = 3 + math.log(1 + math.exp(-1) + math.exp(-2))


class TinyNet(nn.Module):
    """logits = W x[:, :2] (3 classes, no bias); features = x[:, 2:], a marker column passed through.

    Counts its forward calls, which is the number of training steps.
    """

    def __init__(self, weight):
        super().__init__()
        self.linear = nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor(weight))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> ModelOutput:
        self.calls += 1
        return ModelOutput(self.linear(x[:, :2]), x[:, 2:])


class SpikeCriterion(nn.Module):
    """Cross-entropy plus `spike`, the sum of the marker column: a term without gradient, so an
    infinite marker makes the loss infinite while the weights' gradients stay finite."""

    weight_dict = {"ce": 1.0, "spike": 2.0}

    def forward(self, output, labels, soft=None):
        return {"ce": F.cross_entropy(output.logits, soft if soft is not None else labels),
                "spike": output.features.sum()}

    def total(self, losses):
        return total_loss(losses, self.weight_dict)


def batch(rows, labels, indices=None, marker=0.0):
    """(images (B, 3), labels, sources, indices) as the loaders yield them; column 2 is the marker."""
    x = torch.tensor(rows, dtype=torch.float32)
    x = torch.cat([x, torch.full((x.shape[0], 1), marker)], 1)
    idx = torch.arange(x.shape[0]) if indices is None else torch.tensor(indices)
    return x, torch.tensor(labels), torch.zeros(x.shape[0], dtype=torch.long), idx


def run_epoch(weight, batches, lr=0.0, factor=lambda it: 1.0, soft_targets=None, mix=None):
    """(stats, model, optimizer) after one epoch of plain SGD under a LambdaLR schedule."""
    model = TinyNet(weight)
    step = TrainStep(model, SpikeCriterion())
    optimizer = torch.optim.SGD(step.parameters(), lr=lr)
    opt = Optimisation(optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor),
                       torch.amp.GradScaler("cpu", enabled=False))
    stats = train_one_epoch(step, batches, opt, TrainInputs(lambda x: x, soft_targets, mix), CPU, "test")
    return stats, model, optimizer


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# Precision


def test_precision_is_always_off_on_the_cpu():
    for amp in (None, True, False):
        for dtype in ("auto", "bf16", "fp16"):
            assert Precision.choose(torch.device("cpu"), amp, dtype) == Precision(False, torch.float32)


def test_precision_on_cuda_prefers_bf16_and_honours_amp_false(monkeypatch):
    # Only the choice is tested: a CUDA device object needs no GPU until a tensor is made on it.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda = torch.device("cuda")
    assert Precision.choose(cuda, None) == Precision(True, torch.bfloat16)
    assert Precision.choose(cuda, True, "fp16") == Precision(True, torch.float16)
    assert Precision.choose(cuda, False, "bf16") == Precision()


def test_precision_without_bf16_falls_back_to_fp16_or_refuses_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Old GPU")
    assert Precision.choose(torch.device("cuda"), None, "auto") == Precision(True, torch.float16)
    with pytest.raises(UserError, match=r"Old GPU has no bfloat16; use --amp-dtype fp16"):
        Precision.choose(torch.device("cuda"), True, "bf16")


def test_only_enabled_fp16_needs_a_grad_scaler():
    assert Precision(True, torch.float16).needs_scaler
    assert not Precision(True, torch.bfloat16).needs_scaler  # bf16 has fp32's range: nothing to scale
    assert not Precision(False, torch.float16).needs_scaler
    assert not Precision().needs_scaler


# Runtime


def test_prepare_passes_through_or_makes_channels_last():
    x = torch.arange(12.0).reshape(1, 3, 2, 2)
    assert CPU.prepare(x) is x
    y = Runtime(torch.device("cpu"), channels_last=True).prepare(x)
    assert not x.is_contiguous(memory_format=torch.channels_last)
    assert y.is_contiguous(memory_format=torch.channels_last) and torch.equal(y, x)
    assert y.stride() == (12, 1, 6, 3)  # (N, C, H, W) strides of an NHWC layout


def test_autocast_follows_the_precision():
    layer = nn.Linear(2, 2)
    x = torch.ones(1, 2)
    with CPU.autocast():
        assert not torch.is_autocast_enabled("cpu")
        assert layer(x).dtype == torch.float32
    # fp16, not the CPU's default bf16: the output's dtype shows the precision's dtype was passed on.
    with Runtime(torch.device("cpu"), Precision(True, torch.float16)).autocast():
        assert torch.is_autocast_enabled("cpu")
        assert layer(x).dtype == torch.float16
    assert not torch.is_autocast_enabled("cpu")


# TrainStep


def test_train_step_returns_logits_terms_and_weighted_total():
    step = TrainStep(TinyNet(EYE_SUM), SpikeCriterion())
    images, labels, _, _ = batch([[1.0, 2.0]], [2], marker=0.25)
    logits, losses, loss = step(images, labels)
    assert torch.allclose(logits, torch.tensor([[1.0, 2.0, 3.0]]))
    assert set(losses) == {"ce", "spike"}
    assert losses["ce"].item() == pytest.approx(LSE_123 - 3, abs=1e-6)
    assert losses["spike"].item() == pytest.approx(0.25)
    assert loss.item() == pytest.approx(LSE_123 - 3 + 2 * 0.25, abs=1e-6)  # spike weighs 2


def test_train_step_passes_soft_targets_to_the_criterion():
    step = TrainStep(TinyNet(EYE_SUM), SpikeCriterion())
    images, labels, _, _ = batch([[1.0, 2.0]], [2])
    _, losses, _ = step(images, labels, torch.tensor([[0.5, 0.0, 0.5]]))
    # -(0.5 log p0 + 0.5 log p2) with log p_c = z_c - LSE
    assert losses["ce"].item() == pytest.approx(LSE_123 - 0.5 * (1 + 3), abs=1e-6)


def test_train_step_holds_the_criterions_parameters():
    # DDP averages what the wrapped module holds: DAN's class centers must be among them.
    criterion = DANCriterion(num_classes=3, feat_dim=1)
    step = TrainStep(TinyNet(EYE_SUM), criterion)
    assert set(step.state_dict()) == {"model.linear.weight", "criterion.centers"}
    assert any(p is criterion.centers for p in step.parameters())


# train_one_epoch


def test_one_sgd_step_matches_the_hand_computed_update():
    # W = 0: p = 1/3 everywhere, loss = log 3; grad = (p - onehot)^T x / B, worked out in the comments.
    batches = [batch([[1.0, 2.0], [3.0, -1.0]], [0, 2])]
    stats, model, _ = run_epoch(np.zeros((3, 2), np.float32).tolist(), batches, lr=0.6)
    # grad rows: class 0 [1/6, -5/6], class 1 [2/3, 1/6], class 2 [-5/6, 2/3]; W = -0.6 * grad
    expected = torch.tensor([[-0.1, 0.5], [-0.4, -0.1], [0.5, -0.4]])
    assert torch.allclose(model.linear.weight, expected, atol=1e-6)
    assert stats["train_loss"] == pytest.approx(math.log(3), abs=1e-6)
    assert stats["train_ce"] == pytest.approx(math.log(3), abs=1e-6)
    assert stats["train_spike"] == 0.0
    assert model.calls == 1
    assert set(stats) == {"train_ce", "train_spike", "train_loss", "train_acc", "train_images_per_s"}
    assert stats["train_images_per_s"] > 0


def test_epoch_means_accuracy_weights_and_schedule_match_a_direct_computation():
    w0 = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    x1, y1 = np.array([[2.0, 1.0], [0.0, 1.0]]), np.array([0, 0])
    x2, y2 = np.array([[-1.0, -1.0]]), np.array([2])
    batches = [batch(x1.tolist(), y1.tolist()), batch(x2.tolist(), y2.tolist())]
    stats, model, optimizer = run_epoch(w0.tolist(), batches, lr=0.5, factor=lambda it: 1 / (it + 1))

    # Plain SGD by hand: lr 0.5 for step 1, 0.25 for step 2 (the scheduler steps every iteration).
    p1 = softmax(x1 @ w0.T)
    w1 = w0 - 0.5 * (p1 - np.eye(3)[y1]).T @ x1 / 2
    p2 = softmax(x2 @ w1.T)
    w2 = w1 - 0.25 * (p2 - np.eye(3)[y2]).T @ x2 / 1
    ce1 = -np.log(p1[np.arange(2), y1]).mean()
    ce2 = -np.log(p2[0, y2[0]])

    assert np.allclose(model.linear.weight.detach().numpy(), w2, atol=1e-6)
    # Means are per image, not per batch: batch 1 counts twice.
    assert stats["train_loss"] == pytest.approx((2 * ce1 + ce2) / 3, abs=1e-6)
    assert stats["train_ce"] == pytest.approx((2 * ce1 + ce2) / 3, abs=1e-6)
    # Step 1 predicts [0, 1] for labels [0, 0], step 2 predicts class 2 (logits about [-1.39, -0.63, 2.03]).
    assert p1.argmax(1).tolist() == [0, 1] and p2.argmax(1).tolist() == [2]
    assert stats["train_acc"] == pytest.approx(2 / 3)
    assert model.calls == 2 and optimizer.param_groups[0]["lr"] == pytest.approx(0.5 / 3)


def test_soft_targets_are_picked_by_sample_index():
    # Row 3 is one-hot on class 0 and row 0 on class 2: a wrong row changes the loss by 2.
    soft = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    stats, _, _ = run_epoch(EYE_SUM, [batch([[1.0, 2.0]], [2], indices=[3])], soft_targets=soft)
    assert stats["train_ce"] == pytest.approx(LSE_123 - 1, abs=1e-6)
    # The accuracy still counts the hard label (2, the argmax of [1, 2, 3]).
    assert stats["train_acc"] == 1.0


@pytest.mark.parametrize("lam, accuracy", [(0.25, 1.0), (0.75, 0.0)])
def test_mixed_batches_count_the_label_of_the_larger_part(monkeypatch, lam, accuracy):
    calls = []

    def fake_mix(x, soft, alpha, cutmix):
        calls.append((soft.clone(), alpha, cutmix))
        return x, soft, lam, torch.tensor([1, 0])

    monkeypatch.setattr("utils.engine.mix_batch", fake_mix)
    soft = torch.eye(3)
    # Predictions are [2, 0]; the labels are those swapped, so only the partner's labels match.
    images = batch([[1.0, 2.0], [1.0, -1.0]], [0, 2], indices=[1, 2])
    stats, _, _ = run_epoch(EYE_SUM, [images], soft_targets=soft, mix=BatchMix(0.4, cutmix=True))
    assert stats["train_acc"] == accuracy
    (rows, alpha, cutmix), = calls
    assert torch.equal(rows, soft[[1, 2]]) and alpha == 0.4 and cutmix is True


def test_nonfinite_steps_are_left_out_of_every_mean_but_counted_in_accuracy():
    # Weights stay put (lr 0) and finite: the infinite marker only reaches the gradient-free spike term.
    inf = float("inf")
    good = batch([[1.0, 2.0], [1.0, -1.0]], [2, 1])  # predictions [2, 0]: one right
    bad = batch([[1.0, 2.0]], [2], marker=inf)  # prediction 2: right
    stats, model, _ = run_epoch(EYE_SUM, [bad, bad, good, bad])
    logits_good = np.array([[1.0, 2.0, 3.0], [1.0, -1.0, 0.0]])
    ce_good = -np.log(softmax(logits_good)[[0, 1], [2, 1]]).mean()
    # The bad steps' ce is finite, yet it is left out with their total.
    assert stats["train_ce"] == pytest.approx(ce_good, abs=1e-6)
    assert stats["train_loss"] == pytest.approx(ce_good, abs=1e-6)
    assert stats["train_spike"] == 0.0
    assert stats["train_acc"] == pytest.approx(4 / 5)
    assert model.calls == 4


def test_an_epoch_without_a_finite_step_reports_nan_means():
    bad = batch([[1.0, 2.0]], [2], marker=float("nan"))
    stats, _, _ = run_epoch(EYE_SUM, [bad] * (MAX_NONFINITE_STEPS - 1))
    assert math.isnan(stats["train_loss"]) and math.isnan(stats["train_ce"])
    assert stats["train_acc"] == 1.0


def test_a_streak_between_checks_stops_the_epoch_at_the_next_check():
    # On the CPU the streak is read at steps 0, 10 and the last; steps 2-4 fail, 5 onwards pass again.
    good, bad = batch([[1.0, 2.0]], [2]), batch([[1.0, 2.0]], [2], marker=float("inf"))
    batches = [good, good, bad, bad, bad] + [good] * 7
    with pytest.raises(UserError, match=r"3 steps in a row \(by step 11 of test\)"):
        run_epoch(EYE_SUM, batches)


def test_a_streak_ending_the_epoch_is_caught_by_the_last_steps_check():
    # Three steps: only steps 0 (streak 1) and 2, the last, are checked.
    bad = batch([[1.0, 2.0]], [2], marker=float("inf"))
    with pytest.raises(UserError, match=r"\(by step 3 of test\)"):
        run_epoch(EYE_SUM, [bad] * MAX_NONFINITE_STEPS)


def test_the_weights_spoiled_by_a_nan_loss_are_named():
    # A NaN input spoils the gradient and so the weights: what train.py's check_finite reports.
    step = TrainStep(TinyNet(EYE_SUM), SpikeCriterion()).eval()  # as evaluate leaves it after an epoch
    optimizer = torch.optim.SGD(step.parameters(), lr=0.1)
    opt = Optimisation(optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0),
                       torch.amp.GradScaler("cpu", enabled=False))
    stats = train_one_epoch(step, [batch([[float("nan"), 1.0]], [0])], opt, TrainInputs(lambda x: x), CPU, "t")
    assert step.model.training  # the epoch put the model back in training mode
    assert math.isnan(stats["train_loss"])
    assert nonfinite_tensor(step.state_dict()) == "model.linear.weight"


# check_streak and nonfinite_tensor


def test_check_streak_raises_from_the_limit_on():
    assert MAX_NONFINITE_STEPS == 3
    for worst in (0, MAX_NONFINITE_STEPS - 1):
        check_streak(torch.tensor(worst, dtype=torch.int32), 4, "epoch 1/2", DistInfo())
    for worst in (MAX_NONFINITE_STEPS, 7):
        with pytest.raises(UserError, match=r"by step 5 of epoch 1/2\); lower --lr"):
            check_streak(torch.tensor(worst, dtype=torch.int32), 4, "epoch 1/2", DistInfo())


def test_nonfinite_tensor_names_the_first_bad_floating_tensor():
    state = {"steps": torch.tensor([1, 2]), "ok": torch.ones(2), "inf": torch.tensor([0.0, -math.inf]),
             "nan": torch.tensor([math.nan])}
    assert nonfinite_tensor(state) == "inf"
    assert nonfinite_tensor({"ok": torch.ones(2), "nan": torch.tensor([1.0, math.nan]).half()}) == "nan"
    assert nonfinite_tensor({"steps": torch.tensor([7]), "ok": torch.zeros(3, 3)}) is None
    assert nonfinite_tensor({}) is None


# evaluate


def test_evaluate_matches_a_direct_computation_in_index_order():
    model = TinyNet(EYE_SUM).train()
    first = batch([[2.0, 3.0], [1.0, 1.0]], [2, 0], indices=[2, 0], marker=5.0)
    second = batch([[3.0, 1.0]], [1], indices=[1], marker=7.0)
    sources = [torch.tensor([1, 0]), torch.tensor([2])]
    batches = [(x, y, s, i) for (x, y, _, i), s in zip([first, second], sources)]
    result = evaluate(model, batches, lambda t: t - 1, CPU, keep_features=True)

    assert not model.training
    assert set(result) == {"indices", "labels", "sources", "probs", "loss", "features", "preds"}
    # Sorted by index: samples 0, 1, 2 are [1, 1], [3, 1], [2, 3] (and markers 5, 7, 5), less 1.
    x = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 2.0]])
    logits = x @ np.array(EYE_SUM).T  # [[0, 0, 0], [2, 0, 2], [1, 2, 3]]
    probs = softmax(logits)
    labels = np.array([0, 1, 2])
    assert result["indices"].tolist() == [0, 1, 2]
    assert result["labels"].tolist() == labels.tolist()
    assert result["sources"].tolist() == [0, 2, 1]
    assert result["probs"].shape == (3, 3) and result["probs"].dtype == np.float32
    assert np.allclose(result["probs"], probs, atol=1e-6)
    assert np.allclose(result["loss"], -np.log(probs[np.arange(3), labels]), atol=1e-6)
    assert result["preds"].tolist() == [0, 0, 2]  # ties go to the first class
    assert result["features"].tolist() == [[4.0], [6.0], [4.0]]
    assert model.calls == 2


def test_evaluate_leaves_out_features_unless_asked():
    result = evaluate(TinyNet(EYE_SUM), [batch([[1.0, 2.0]], [2])], lambda t: t, CPU)
    assert "features" not in result
    assert result["preds"].tolist() == [2]
    assert result["loss"][0] == pytest.approx(LSE_123 - 3, abs=1e-6)
