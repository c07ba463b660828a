import pytest
import torch
import torchvision

from common.errors import UserError
from networks import MODELS, build_criterion, build_model, min_input_size
from networks.dan import DAN
from utils.checkpoint import load_backbone


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_dan_parameter_count_matches_the_paper():
    model = DAN(num_classes=7, num_heads=4)
    assert count(model.trunk) == 11_176_512  # ResNet-18 without fc
    assert all(count(h) == 2_135_904 for h in model.heads)
    assert count(model) == 11_176_512 + 4 * 2_135_904 + (512 * 7 + 7) + 2 * 7
    assert abs(count(model) / 1e6 - 19.7) < 0.05


def test_dan_output_shapes_at_224():
    model = build_model("dan", num_classes=7, num_heads=4).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224))
        fmap = model.forward_features(torch.randn(1, 3, 224, 224))
    assert fmap.shape == (1, 512, 7, 7)
    assert out.logits.shape == (2, 7)
    assert out.features.shape == (2, 512)
    assert out.heads.shape == (2, 4, 512)
    assert out.attention.shape == (2, 4, 7, 7)
    # heads enter the sum after a log-softmax over the head axis
    assert torch.allclose(out.heads.exp().sum(dim=1), torch.ones(2, 512), atol=1e-5)


def test_dan_single_head_skips_log_softmax():
    model = build_model("dan", num_classes=3, num_heads=1).eval()
    with torch.no_grad():
        fmap = torch.randn(2, 512, 2, 2)
        out = model.forward_head(fmap)
        vec, _ = model.heads[0](fmap)
    assert torch.allclose(out.heads[:, 0], vec)


def test_dan_head_initialisation():
    head = DAN(num_classes=7, num_heads=2).heads[0]
    lin = head.channel.gate[0]
    assert torch.all(lin.bias == 0) and 0.0005 < lin.weight.std().item() < 0.002
    conv = head.spatial.conv3x3[0]
    assert torch.all(conv.bias == 0)
    fan_out = conv.out_channels * 9
    assert abs(conv.weight.std().item() - (2 / fan_out) ** 0.5) < 0.1 * (2 / fan_out) ** 0.5
    assert torch.all(head.spatial.conv3x3[1].weight == 1)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("num_classes", [6, 8])
def test_every_model_runs_on_random_input(name, num_classes):
    model = build_model(name, num_classes=num_classes).train()
    size = max(64, min_input_size(name))
    out = model(torch.randn(2, 3, size, size))
    assert out.logits.shape == (2, num_classes)
    assert out.features.shape == (2, model.num_features)
    assert torch.isfinite(out.logits).all()
    losses = build_criterion(name, model)(out, torch.tensor([0, num_classes - 1]))
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(UserError, match="unknown model"):
        build_model("vgg", num_classes=7)


def test_pretrained_resnet18_loads_into_the_trunk(tmp_path):
    reference = torchvision.models.resnet18(weights=None, num_classes=100)  # fc of another size is ignored
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "resnet18_msceleb.pth")
    model = build_model("dan", num_classes=7)
    load_backbone(model, tmp_path / "resnet18_msceleb.pth")
    assert torch.equal(model.trunk.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    assert torch.equal(model.trunk.bn1.running_mean, reference.bn1.running_mean)


def test_pretrained_file_that_does_not_fit_names_the_keys(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    del state["layer4.1.bn2.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"missing keys layer4\.1\.bn2\.weight.*unexpected keys extra\.weight"):
        load_backbone(build_model("dan", num_classes=7), tmp_path / "bad.pth")


def test_efficientnet_pretrained_from_timm_state_dict(tmp_path):
    source = build_model("efficientnet_b3", num_classes=1000)
    torch.save(source.backbone.state_dict(), tmp_path / "efficientnet_b3.pth")
    model = build_model("efficientnet_b3", num_classes=7)
    load_backbone(model, str(tmp_path / "efficientnet_b3.pth"))
    assert torch.equal(model.backbone.conv_stem.weight, source.backbone.conv_stem.weight)
    assert model.backbone.get_classifier().out_features == 7


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_models_spec_describes_the_model_it_builds(name):
    """The spec is what train.py, the checkpoint loader, the recognizer and the benchmarks read:
    it must say what the built model really does."""
    from networks import SPECS, default_input, spec_of
    from networks.losses import DANCriterion

    spec = SPECS[name]
    model = build_model(name, num_classes=3, **spec.options).eval()
    assert spec_of(model) is spec
    assert hasattr(model, spec.backbone) and isinstance(getattr(model, spec.backbone), torch.nn.Module)
    size = max(default_input(name).img_size // 2, min_input_size(name))
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert (out.attention is not None) == spec.attention
    assert isinstance(build_criterion(name, model), DANCriterion) == (spec.criterion == "dan")
    assert (spec.trunk is None) == (spec.input is not None)  # one place says the input


def test_grouped_dan_has_dans_spec_and_foreign_modules_are_refused():
    from networks import SPECS, spec_of
    from networks.dan import group_heads

    assert spec_of(group_heads(build_model("dan", num_classes=3))) is SPECS["dan"]
    with pytest.raises(UserError, match="not one of this project's models"):
        spec_of(torch.nn.Linear(2, 2))


def test_no_code_outside_networks_asks_a_models_name_or_class():
    """Per-model knowledge is in networks.SPECS: code elsewhere reads the spec (STYLE.md, habit 2)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    classes = "DAN|GroupedDAN|EfficientNetB3|ResNet18|FaceResNetClassifier|FaceResNetTrunk"
    pattern = re.compile(r"""[=!]=\s*["'](dan|efficientnet_b3|resnet18|face_resnet)["']|isinstance\([^)]*\b(%s)\b"""
                         % classes)
    files = [root / f"{s}.py" for s in ("train", "test", "predict", "serve")]
    files += [p for d in ("common", "data", "utils", "inference", "tools", "benchmarks")
              for p in (root / d).rglob("*.py")]
    found = [f"{p.relative_to(root)}:{i}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1)
             if pattern.search(line)]
    assert found == []
