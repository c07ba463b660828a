"""inference.faces: square crops with a margin, eye-line alignment, the training resize."""
import numpy as np
from PIL import Image

from inference.faces import Detection, crop_face, crop_matrix, resize_faces


def test_crop_is_square_with_margin_and_edge_padding():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :, 0] = np.arange(200, dtype=np.uint8)[None, :]
    crop = crop_face(image, Detection((150, 10, 40, 20)), margin=0.25)
    assert crop.shape == (60, 60, 3)  # max(40, 20) * 1.5
    assert crop[30, 0, 0] == 140 and crop[30, -1, 0] == 199  # right of the photo repeats its edge


def test_alignment_levels_the_eyes():
    landmarks = np.array([[40.0, 50.0], [80.0, 70.0], [60, 70], [45, 90], [75, 95]])
    det = Detection((30, 30, 60, 70), landmarks=landmarks)
    matrix, side = crop_matrix(det, margin=0.2)
    eyes = np.hstack([landmarks[:2], np.ones((2, 1))]) @ matrix.T
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1e-6 and eyes[0, 0] < eyes[1, 0]
    assert side == round(70 * 1.4)
    unaligned, _ = crop_matrix(det, margin=0.2, align=False)
    assert np.allclose(unaligned[:, :2], np.eye(2))


def test_resize_matches_training_resize(astronaut):
    crop = astronaut[:200, 200:400]
    expected = np.asarray(Image.fromarray(crop).resize((64, 64), Image.BILINEAR))
    assert np.array_equal(resize_faces([crop], 64)[0], expected)
    grey = resize_faces([crop], 64, grayscale=True)[0]
    assert np.array_equal(grey[..., 0], grey[..., 2])
