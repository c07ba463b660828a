import math

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from common.errors import UserError
from data.classes import normalize_class_name
from data.datasets import FaceFolder, collate_skip_none, find_datasets
from data.loading import Batches, ShardedSampler, TensorCache, balanced_weights
from data.transforms import PRESETS, AugmentConfig, Normalize, TrainAugment, compose_affine
from helpers import make_image_folder


def test_class_names_are_normalised():
    assert normalize_class_name("Sadness") == "sad"
    assert normalize_class_name("anger") == "angry"
    assert normalize_class_name("my_class") == "my_class"


def test_several_datasets_match_classes_by_name_and_keep_sources(tmp_path):
    a = make_image_folder(tmp_path / "ckplus", ["anger", "happy"], per_class=2)
    b = make_image_folder(tmp_path / "rafdb", ["happiness", "sadness"], per_class=3)
    ds = FaceFolder([a, b], "train", img_size=32)
    assert ds.classes == ["angry", "happy", "sad"]
    assert ds.sources == ["ckplus", "rafdb"]
    assert len(ds) == 4 + 6
    assert np.bincount(ds.labels).tolist() == [2, 5, 3]
    image, label, source, index = ds[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8


def test_merged_file_names_carry_their_source(tmp_path):
    root = make_image_folder(tmp_path / "merged", ["happy"], per_class=2, prefix="rafdb__")
    make_image_folder(tmp_path / "merged", ["sad"], per_class=2, prefix="ckplus__")
    assert FaceFolder([root], "train", 32).sources == ["ckplus", "rafdb"]


def test_merged_source_names_may_hold_single_underscores(tmp_path):
    # data.prepare names CK+48's source ck_plus_48; only the first "__" ends the source.
    root = make_image_folder(tmp_path / "merged", ["happy"], per_class=2, prefix="ck_plus_48__S005__")
    assert FaceFolder([root], "train", 32).sources == ["ck_plus_48"]


def test_manifest_names_the_source(tmp_path):
    root = make_image_folder(tmp_path / "merged", ["happy"], per_class=2, splits=("train",))
    files = sorted((root / "train" / "happy").iterdir())
    (root / "manifest.csv").write_text("path,class,split,source,subject,original\n"
                                       f"train/happy/{files[0].name},happy,train,rafdb,,x\n")
    ds = FaceFolder([root], "train", 16)
    assert ds.sources == ["merged", "rafdb"]


def test_grey_images_become_rgb(tmp_path):
    folder = tmp_path / "d" / "train" / "happy"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((20, 20), 100, np.uint8), mode="L").save(folder / "g.jpg")
    image = FaceFolder([tmp_path / "d"], "train", 16)[0][0]
    assert image.shape == (3, 16, 16)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_unreadable_image_is_skipped_not_fatal(tmp_path, caplog):
    root = make_image_folder(tmp_path / "d", ["happy", "sad"], per_class=2, splits=("train",))
    (root / "train" / "sad" / "broken.jpg").write_bytes(b"not an image")
    ds = FaceFolder([root], "train", 16)
    assert len(ds) == 5
    batch = collate_skip_none([ds[i] for i in range(len(ds))])
    assert batch[0].shape[0] == 4
    assert "broken.jpg" in caplog.text
    cache = TensorCache(ds, torch.device("cpu"), workers=0)
    assert cache.images.shape[0] == 4 and len(ds.samples) == 4


def test_unknown_class_in_evaluation_data_is_an_error(tmp_path):
    root = make_image_folder(tmp_path / "d", ["happy", "contempt"], per_class=1, splits=("val",))
    with pytest.raises(UserError, match="contempt"):
        FaceFolder([root], "val", 16, classes=["happy", "sad"])


def test_missing_split_is_an_error(tmp_path):
    root = make_image_folder(tmp_path / "d", ["happy"], per_class=1, splits=("train",))
    with pytest.raises(UserError, match="val"):
        FaceFolder([root], "val", 16)


def test_find_datasets(tmp_path):
    make_image_folder(tmp_path / "Data" / "a", ["happy"], per_class=1)
    (tmp_path / "Data" / "weights").mkdir()
    assert [p.name for p in find_datasets(tmp_path / "Data")] == ["a"]


def identity_config(**kw):
    return AugmentConfig(**{"flip": 0.0, "p_affine": 0.0, "p_erase": 0.0, **kw})


def test_augment_identity_and_flip_are_exact():
    x = torch.randint(0, 256, (3, 3, 12, 12), dtype=torch.uint8)
    norm = Normalize()
    assert torch.allclose(TrainAugment(identity_config(), norm)(x), norm(x), atol=1e-5)
    assert torch.allclose(TrainAugment(identity_config(flip=1.0), norm)(x), norm(x).flip(-1), atol=1e-5)


def test_augment_rotation_by_90_degrees_matches_rot90():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    aug = TrainAugment(identity_config(), Normalize([0] * 3, [1] * 3))
    one = torch.ones(2)
    aug.affine_matrices = lambda b: compose_affine(one * math.pi / 2, one, torch.zeros(2, 2), one)
    # a positive angle turns the picture counter-clockwise, as torchvision's rotate does
    expected = torchvision.transforms.functional.rotate(x, 90.0).float() / 255
    assert torch.allclose(aug(x), expected, atol=1e-5)
    assert torch.allclose(expected, torch.rot90(x.float() / 255, k=1, dims=(2, 3)))


def test_augment_translation_moves_content_the_right_way():
    x = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    x[..., 2, 2] = 255
    aug = TrainAugment(identity_config(p_affine=1.0, degrees=0.0, translate=0.25), Normalize([0] * 3, [1] * 3))
    torch.manual_seed(0)
    theta = aug.affine_matrices(1)
    shift_px = -theta[0, :, 2] * 8 / 2  # input = output + t  =>  content moves by -t (in pixels)
    torch.manual_seed(0)
    y = aug(x)[0, 0]
    peak = (y == y.max()).nonzero()[0]
    assert torch.allclose(peak.float(), torch.tensor([2.0, 2.0]) + shift_px.flip(0), atol=1.01)


def test_random_erasing_area_is_in_range():
    torch.manual_seed(0)
    aug = TrainAugment(identity_config(p_erase=1.0), Normalize([0.5] * 3, [1] * 3))
    x = torch.full((200, 3, 20, 20), 255, dtype=torch.uint8)
    erased = (aug(x) == 0).all(1).float().mean((1, 2))
    assert erased.min() >= 0.005 and erased.max() <= 0.3
    assert 0.05 < erased.mean() < 0.2


def test_presets_exist():
    assert PRESETS["rafdb"].p_affine == 0.2 and PRESETS["affectnet"].p_affine == 0.7


def test_sampler_is_seeded_by_epoch_and_shards_cover_everything():
    s = ShardedSampler(10, shuffle=True, seed=3)
    s.set_epoch(1)
    first = list(s)
    s.set_epoch(2)
    assert list(s) != first
    s.set_epoch(1)
    assert list(s) == first
    shards = [ShardedSampler(10, True, 3, rank=r, world_size=3) for r in range(3)]
    for sh in shards:
        sh.set_epoch(1)
    parts = [list(sh) for sh in shards]
    assert all(len(p) == 4 for p in parts)  # padded to equal length
    assert set(sum(parts, [])) == set(range(10))
    evals = [list(ShardedSampler(10, False, rank=r, world_size=3)) for r in range(3)]
    assert sorted(sum(evals, [])) == list(range(10))  # evaluation is not padded


@pytest.mark.parametrize("n", [1, 7, 10, 12])
@pytest.mark.parametrize("world_size", [1, 3, 4])
@pytest.mark.parametrize("shuffle", [True, False])
def test_sampler_length_is_the_number_of_indices_without_drawing_them(n, world_size, shuffle):
    weights = torch.ones(n, dtype=torch.double)
    for rank in range(world_size):
        for w in (None, weights):
            s = ShardedSampler(n, shuffle, seed=1, rank=rank, world_size=world_size, weights=w)
            assert len(s) == len(s.indices()) == len(list(s))


def test_balanced_weights_equalise_classes():
    labels = np.array([0] * 90 + [1] * 10)
    w = balanced_weights(labels, 2)
    assert torch.isclose(w[labels == 0].sum(), w[labels == 1].sum())
    draws = torch.multinomial(w, 10000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert 0.45 < (torch.as_tensor(labels)[draws] == 1).float().mean() < 0.55


def test_cached_and_streamed_batches_agree(tiny_data):
    ds = FaceFolder([tiny_data], "val", 16)
    sampler = ShardedSampler(len(ds), shuffle=False)
    streamed = list(Batches(ds, sampler, 5, None, workers=0))
    cached = list(Batches(ds, sampler, 5, TensorCache(ds, torch.device("cpu"), 0)))
    assert len(streamed) == len(cached) == 3
    for a, b in zip(streamed, cached):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_sampler_repeats_oversample_a_source_exactly():
    from data.loading import source_repeats
    repeats = source_repeats(np.array([0, 0, 1, 1, 0]), ["big", "small"], {"small": 3})
    assert repeats.tolist() == [1, 1, 3, 3, 1]
    s = ShardedSampler(5, True, seed=0, repeats=repeats)
    idx = s.indices()
    assert len(s) == len(idx) == 9 and sorted(idx.tolist()) == [0, 1, 2, 2, 2, 3, 3, 3, 4]
    shards = [ShardedSampler(5, True, 0, rank=r, world_size=2, repeats=repeats) for r in range(2)]
    assert [len(x) for x in shards] == [5, 5] and [len(x.indices()) for x in shards] == [5, 5]
    with pytest.raises(UserError, match="not sources"):
        source_repeats(np.array([0]), ["big"], {"ckplus48": 8})


def test_photometric_blur_and_jpeg_augmentations():
    torch.manual_seed(0)
    norm = Normalize([0] * 3, [1] * 3)
    x = (torch.rand(4, 3, 16, 16) * 255).to(torch.uint8)
    off = TrainAugment(identity_config(p_color=0.0, p_blur=0.0, p_jpeg=0.0), norm)
    assert torch.allclose(off(x), norm(x), atol=1e-5)
    # zero-width jitter ranges leave the images as they are
    bright = TrainAugment(identity_config(p_color=1.0, brightness=0.0, contrast=0.0, gamma=(1.0, 1.0)), norm)
    assert torch.allclose(bright(x), norm(x), atol=1e-5)
    # a blur keeps the mean of a flat image and lowers the variance of noise
    blur = TrainAugment(identity_config(p_blur=1.0, blur_sigma=(1.0, 1.0)), norm)
    flat = torch.full((2, 3, 16, 16), 100, dtype=torch.uint8)
    assert torch.allclose(blur(flat), norm(flat), atol=1e-5)
    assert blur(x).var() < norm(x).var() / 2
    jpeg = TrainAugment(identity_config(p_jpeg=1.0, jpeg_quality=(20, 20)), norm)
    out = jpeg(x)
    assert out.shape == x.shape and not torch.allclose(out, norm(x), atol=1e-3)
    assert (out - norm(x)).abs().mean() < 0.25  # the same picture, compressed


def test_mix_batch_mixes_images_and_targets_alike():
    from data.transforms import mix_batch
    torch.manual_seed(0)
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 8, 8).clone()
    targets = torch.eye(4)
    mixed, t, lam, perm = mix_batch(x, targets, alpha=0.4, cutmix=False)
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[perm])
    assert torch.allclose(t.sum(1), torch.ones(4)) and torch.allclose(t, lam * targets + (1 - lam) * targets[perm])
    mixed, t, lam, perm = mix_batch(x, targets, alpha=1.0, cutmix=True)
    own = (mixed == x).float().mean(dim=(1, 2, 3))  # the share of each image left in place
    moved = perm != torch.arange(4)
    assert torch.allclose(own[moved], torch.full_like(own[moved], lam))


def test_grayscale_folder_matches_pils_luma(tmp_path):
    folder = tmp_path / "d" / "train" / "happy"
    folder.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "c.png")
    colour = FaceFolder([tmp_path / "d"], "train", 16)[0][0]
    grey = FaceFolder([tmp_path / "d"], "train", 16, grayscale=True)[0][0]
    assert not torch.equal(colour[0], colour[2])
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    luma = pixels @ np.array([0.299, 0.587, 0.114])  # ITU-R 601, what PIL's "L" rounds
    assert np.abs(grey[0].numpy() - luma).max() <= 1


def test_colour_matrices_by_hand():
    from data.transforms import LUMA, colour_matrices
    one = torch.ones(1)
    assert torch.allclose(colour_matrices(torch.zeros(1), one, torch.ones(1, 3))[0], torch.eye(3), atol=1e-6)
    # saturation 0: every channel becomes the luma
    flat = colour_matrices(torch.zeros(1), torch.zeros(1), torch.ones(1, 3))[0]
    assert torch.allclose(flat, torch.tensor(LUMA).expand(3, 3), atol=1e-6)
    # a hue turn keeps greys grey and the luma of any colour
    turn = colour_matrices(torch.tensor([1.3]), one, torch.ones(1, 3))[0]
    assert torch.allclose(turn @ torch.full((3,), 0.4), torch.full((3,), 0.4), atol=1e-6)
    rgb = torch.tensor([0.9, 0.2, 0.1])
    assert torch.allclose(torch.tensor(LUMA) @ (turn @ rgb), torch.tensor(LUMA) @ rgb, atol=1e-6)
    assert not torch.allclose(turn @ rgb, rgb, atol=1e-2)
    # white balance: per-channel gains
    gains = torch.tensor([[1.1, 1.0, 0.9]])
    assert torch.allclose(colour_matrices(torch.zeros(1), one, gains)[0], torch.diag(gains[0]), atol=1e-6)


def test_colour_shift_and_grey_augmentations():
    torch.manual_seed(0)
    norm = Normalize([0] * 3, [1] * 3)
    x = (torch.rand(6, 3, 16, 16) * 255).to(torch.uint8)
    grey = TrainAugment(identity_config(p_grey=1.0), norm)(x)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    shifted = TrainAugment(identity_config(p_colour_shift=1.0), norm)(x)
    assert not torch.allclose(shifted, norm(x), atol=1e-2) and shifted.min() >= 0 and shifted.max() <= 1
    # the shift moves colour, not brightness much: the luma stays close
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert ((shifted * luma).sum(1) - (norm(x) * luma).sum(1)).abs().mean() < 0.05


@pytest.mark.parametrize("content, words", [
    (b"path,class,split,source,subject,original\ntrain/happy/a.png,happy,train,\xff\xfe\xfa,,x\n", "not UTF-8 text"),
    (b"path,class,split,source,subject,original\ntrain/happy/a.png,happy,train,src,,"
     + b"x" * 200_000 + b"\n", "field larger than field limit"),
])
def test_bad_manifests_are_one_line_naming_the_file(tmp_path, content, words):
    """Invalid UTF-8, or a field over csv's 128 KB limit, in a manifest: a traceback before."""
    from data.prepare.common import read_manifest
    root = make_image_folder(tmp_path / "d", ["happy"], per_class=1)
    (root / "manifest.csv").write_bytes(content)
    for read in (lambda: FaceFolder([root], "train", 16), lambda: read_manifest(root)):
        with pytest.raises(UserError, match=words) as err:
            read()
        assert "manifest.csv" in str(err.value) and "line" in str(err.value) and "\n" not in str(err.value)


def test_bad_votes_file_is_one_line(tmp_path):
    from data.votes import read_votes
    path = tmp_path / "votes.csv"
    path.write_bytes(b"file,happy,sad\n\xff\xfe,1,2\n")
    with pytest.raises(UserError, match="votes.csv, near line .*: not UTF-8"):
        read_votes(path)
