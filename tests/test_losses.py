import math

import torch

from networks.losses import DANCriterion, affinity_loss, partition_loss, total_loss
from networks.outputs import ModelOutput


def test_affinity_loss_against_hand_computation():
    features = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, -1.0]])
    labels = torch.tensor([0, 1, 0])
    centers = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # squared distances to own center: (0+4), (0+1), (4+1)
    # variance across classes (unbiased, 2 classes): dim0: (1-0.5)^2*2/1 = 0.5; dim1: (0-1)^2*2/1 = 2 -> 2.5
    expected = (4 / 2.5 + 1 / 2.5 + 5 / 2.5) / 3
    assert math.isclose(affinity_loss(features, labels, centers).item(), expected, rel_tol=1e-6)


def test_affinity_loss_is_clamped():
    centers = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    features = centers.clone()  # zero distance -> clamped to 1e-12 each
    loss = affinity_loss(features, torch.tensor([0, 1]), centers)
    assert math.isclose(loss.item(), 1e-12, rel_tol=1e-4)


def test_partition_loss_against_hand_computation():
    heads = torch.tensor([[[1.0, 2.0], [3.0, 2.0]]])  # (B=1, N=2, D=2)
    # unbiased variance over heads: dim0: (1-2)^2+(3-2)^2 = 2 / 1 = 2; dim1: 0 -> mean 1
    expected = math.log(1 + 2 / (1 + torch.finfo(torch.float32).eps))
    assert math.isclose(partition_loss(heads).item(), expected, rel_tol=1e-6)


def test_partition_loss_is_zero_for_one_head():
    assert partition_loss(torch.randn(4, 1, 8)).item() == 0.0


def test_criterion_has_exactly_one_center_per_class():
    criterion = DANCriterion(num_classes=7, feat_dim=512)
    assert criterion.centers.shape == (7, 512)


def test_criterion_terms_and_weighted_total():
    torch.manual_seed(0)
    criterion = DANCriterion(num_classes=3, feat_dim=4)
    out = ModelOutput(torch.randn(5, 3), torch.randn(5, 4), torch.randn(5, 2, 4))
    labels = torch.tensor([0, 1, 2, 0, 1])
    losses = criterion(out, labels)
    assert set(losses) == {"ce", "affinity", "partition"}
    assert math.isclose(losses["ce"].item(), torch.nn.functional.cross_entropy(out.logits, labels).item(), rel_tol=1e-6)
    total = total_loss(losses, {"ce": 1.0, "affinity": 0.5, "partition": 2.0})
    expected = losses["ce"] + 0.5 * losses["affinity"] + 2.0 * losses["partition"]
    assert math.isclose(total.item(), expected.item(), rel_tol=1e-6)
    # the criterion owns its weights (--lambda-aff, --lambda-part) and sums its own terms
    weighted = DANCriterion(num_classes=3, feat_dim=4, lambda_aff=0.5, lambda_part=2.0)
    assert weighted.weight_dict == {"ce": 1.0, "affinity": 0.5, "partition": 2.0}
    weighted.load_state_dict(criterion.state_dict())
    assert math.isclose(weighted.total(weighted(out, labels)).item(), expected.item(), rel_tol=1e-6)


def test_written_out_variance_equals_torch_var():
    from networks.losses import _unbiased_var

    x = torch.randn(6, 4, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for dim in range(3):
        assert torch.allclose(_unbiased_var(x, dim), x.var(dim=dim), rtol=1e-12, atol=1e-12)
