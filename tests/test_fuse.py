"""networks.fuse: BatchNorm folding, DAN's merged and grouped heads, and GroupedDAN for training.

Every comparison runs the original and the transformed model on the same input in eval mode
(train mode for GroupedDAN) with random weights and random BatchNorm statistics. In float64 the
algebra must hold to 1e-4 absolutely (it holds to about 1e-10); in float32 to 1e-4 of each
output's scale (DAN's attention maps sum 512 channels and reach the hundreds).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from networks import ModelOutput, build_model, fuse
from networks.dan import GroupedDAN, group_heads
from networks.fuse import FusedDAN, fold_batchnorm


def randomize_batchnorms(model: nn.Module, x: torch.Tensor, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics of a realistic scale: the batch statistics of `x`, then perturbed."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for bn in bns:
        bn.momentum = 1.0  # running statistics := this batch's
    model.train()
    with torch.no_grad():
        model(x)
        for bn in bns:
            bn.momentum = 0.1
            bn.running_mean += 0.3 * torch.randn(bn.running_mean.shape, generator=g, dtype=bn.running_mean.dtype) \
                * bn.running_var.sqrt()
            bn.running_var *= 0.5 + 1.5 * torch.rand(bn.running_var.shape, generator=g, dtype=bn.running_var.dtype)
            bn.weight.copy_(0.5 + torch.rand(bn.weight.shape, generator=g, dtype=bn.weight.dtype))
            bn.bias.copy_(torch.rand(bn.bias.shape, generator=g, dtype=bn.bias.dtype) - 0.5)
    return model.eval()


def assert_outputs_close(a: ModelOutput, b: ModelOutput, absolute: bool) -> None:
    assert type(b) is ModelOutput
    for name in ModelOutput._fields:
        x, y = getattr(a, name), getattr(b, name)
        if x is None:
            assert y is None, name
            continue
        assert x.shape == y.shape, name
        scale = 1.0 if absolute else max(1.0, x.abs().max().item())
        assert (x - y).abs().max().item() <= 1e-4 * scale, f"{name}: {(x - y).abs().max().item()} (scale {scale})"


def random_dan(num_heads: int = 4, size: int = 96, dtype=torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("dan", num_classes=7, num_heads=num_heads).to(dtype)
    x = torch.randn(4, 3, size, size, dtype=dtype)
    return randomize_batchnorms(model, x, seed), x


def test_fold_batchnorm_by_hand():
    layer = nn.Linear(1, 1)
    bn = nn.BatchNorm1d(1, eps=1.0).eval()
    with torch.no_grad():
        layer.weight.fill_(2.0)
        layer.bias.fill_(1.0)
        bn.running_mean.fill_(1.0)
        bn.running_var.fill_(3.0)
        bn.weight.fill_(4.0)
        bn.bias.fill_(0.5)
    fold_batchnorm(layer, bn)
    # 4 * (2x + 1 - 1) / sqrt(3 + 1) + 0.5 = 4x + 0.5
    assert layer.weight.item() == pytest.approx(4.0)
    assert layer.bias.item() == pytest.approx(0.5)


@pytest.mark.parametrize("kernel, padding", [((1, 3), (0, 1)), ((3, 1), (1, 0))])
def test_asymmetric_kernel_is_a_zero_padded_3x3(kernel, padding):
    from networks.fuse import _as_3x3

    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 6)
    weight = torch.randn(3, 4, *kernel)
    square = _as_3x3(weight)
    assert square.shape == (3, 4, 3, 3)
    torch.testing.assert_close(F.conv2d(x, square, padding=1), F.conv2d(x, weight, padding=padding))


@pytest.mark.parametrize("num_heads", [4, 2, 1])
def test_fused_dan_matches_dan_float64(num_heads):
    model, x = random_dan(num_heads, dtype=torch.float64)
    fused = fuse(model)
    assert isinstance(fused, FusedDAN)
    with torch.no_grad():
        assert_outputs_close(model(x), fused(x), absolute=True)


def test_fused_dan_matches_dan_float32_and_is_folded():
    model, x = random_dan()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse(model)
    with torch.no_grad():
        out = model(x)
        assert_outputs_close(out, fused(x), absolute=False)
        # the attention overlay reads (B, N, H, W) on the trunk grid
        assert fused(x).attention.shape == (4, 4, 3, 3)
        # channels_last input (as on a GPU) gives the same result
        assert_outputs_close(out, fused(x.contiguous(memory_format=torch.channels_last)), absolute=False)
    assert not any(isinstance(m, _BatchNorm) for m in fused.modules())
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20 + 2  # ResNet-18's 20, then one 1x1 and one grouped 3x3 for all heads
    assert fused.spatial.groups == 4 and fused.spatial.kernel_size == (3, 3)
    # the original is untouched and keeps its mode
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name, size", [("resnet18", 64), ("efficientnet_b3", 64)])
def test_fuse_folds_other_models(name, size):
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    # Perturbed statistics compound over EfficientNet's 26 blocks: compare to the logits' scale.
    model = randomize_batchnorms(build_model(name, num_classes=7).double(), x)
    fused = fuse(model)
    assert type(fused) is type(model)
    assert not any(isinstance(m, _BatchNorm) for m in fused.modules())
    with torch.no_grad():
        assert_outputs_close(model(x), fused(x), absolute=False)


def test_fused_dan_in_onnx_runtime(tmp_path):
    """The fused graph exports (dynamic batch, opset 18) and ONNX Runtime agrees with PyTorch."""
    pytest.importorskip("onnxruntime")
    from benchmarks.bench import ort_session, write_onnx

    model, _ = random_dan(size=64)
    fused = fuse(model)
    path = write_onnx(fused, tmp_path / "fused.onnx", 64)
    session = ort_session(path, threads=1)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 64, 64)
        logits, attention = session.run(["logits", "attention"], {"input": x.numpy()})
        with torch.no_grad():
            out = model(x)
        np.testing.assert_allclose(logits, out.logits.numpy(), atol=1e-4 * max(1.0, out.logits.abs().max().item()))
        np.testing.assert_allclose(attention, out.attention.numpy(),
                                   atol=1e-4 * max(1.0, out.attention.abs().max().item()))


def test_grouped_dan_trains_like_dan():
    """Same outputs, gradients and BatchNorm running statistics as DAN, in train and eval mode."""
    model, x = random_dan(dtype=torch.float64)
    model.train()
    grouped = group_heads(model)
    assert isinstance(grouped, GroupedDAN) and grouped.training
    assert list(grouped.state_dict()) == list(model.state_dict())
    for _ in range(2):
        a, b = model(x), grouped(x)
        assert_outputs_close(a, b, absolute=True)
        for net, out in ((model, a), (grouped, b)):
            net.zero_grad()
            (out.logits.square().sum() + out.heads.square().mean() + out.attention.mean()).backward()
        grads = dict(model.named_parameters())
        for name, p in grouped.named_parameters():
            torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-7, atol=1e-10, msg=name)
    ours = grouped.state_dict()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ours[name], value, rtol=1e-9, atol=1e-12, msg=name)
    model.eval()
    grouped.eval()
    with torch.no_grad():
        assert_outputs_close(model(x), grouped(x), absolute=True)
        assert_outputs_close(model(x), fuse(grouped)(x), absolute=True)
