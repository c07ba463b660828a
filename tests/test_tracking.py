"""inference.tracking: IoU by hand, association on synthetic tracks against hand-made ids,
the appearance check, and the moving average against a hand-computed one."""
import math

import numpy as np
import pytest

from inference.tracking import EmaSmoother, FaceTracker, appearance, iou_matrix


def test_iou_matrix_by_hand():
    a = [(0, 0, 10, 10), (100, 100, 4, 4)]
    b = [(5, 0, 10, 10), (0, 0, 10, 10), (50, 50, 1, 1)]
    # (0,0,10,10) vs (5,0,10,10): intersection 5x10 = 50, union 150
    expected = np.array([[50 / 150, 1.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(iou_matrix(a, b), expected)
    assert iou_matrix([], b).shape == (0, 3) and iou_matrix(a, []).shape == (2, 0)


def ids(tracker, boxes, looks=None):
    return [t.id for t in tracker.update(boxes, looks)]


def box_at(x, y=100, side=60):
    return (x, y, side, side)


def test_two_faces_crossing_keep_their_ids_through_a_missed_detection():
    """A walks right, B walks left (4 px a frame each); while they overlap only B is detected
    (A is behind it) for 12 frames; A comes out on B's other side and must get its id back."""
    red, blue = look(0), look(1)
    tracker, history = FaceTracker(), []
    for f in range(40):
        ax, bx = 100 + 4 * f, 260 - 4 * f
        if 14 <= f < 26:  # A hidden behind B
            history.append({"B": ids(tracker, [box_at(bx)], [blue])[0]})
        else:
            got = ids(tracker, [box_at(ax), box_at(bx)], [red, blue])
            history.append({"A": got[0], "B": got[1]})
    assert {h["B"] for h in history} == {2}
    assert {h["A"] for h in history if "A" in h} == {1}
    assert tracker.next_id == 3  # no third track was ever started


def test_crossing_without_looks_is_what_motion_free_iou_can_do():
    """The same crossing with no appearance: while the boxes overlap, B's box is nearer A's last
    box than A's own next one is, so ids may swap; the assignment must still give each box one
    track and never two boxes the same track."""
    tracker = FaceTracker()
    for f in range(40):
        got = ids(tracker, [box_at(100 + 4 * f), box_at(260 - 4 * f)])
        assert len(set(got)) == 2


def test_a_face_that_leaves_and_returns():
    """B leaves for 5 frames (under max_missed) and comes back where it was: same id. Then it
    leaves for longer than max_missed: its track ends and the return is a new track, 3."""
    tracker = FaceTracker(max_missed=8)
    a, b = box_at(50), box_at(300)
    seen = [ids(tracker, [a, b]) for _ in range(5)]
    seen += [ids(tracker, [a]) for _ in range(5)]
    seen += [ids(tracker, [a, b]) for _ in range(3)]
    seen += [ids(tracker, [a]) for _ in range(9)]  # the 9th miss ends B's track
    assert [t.id for t in tracker.tracks] == [1]
    seen += [ids(tracker, [a, b]) for _ in range(2)]
    expected = [[1, 2]] * 5 + [[1]] * 5 + [[1, 2]] * 3 + [[1]] * 9 + [[1, 3]] * 2
    assert seen == expected


def test_missed_detection_and_new_faces():
    tracker = FaceTracker()
    assert ids(tracker, [box_at(0)]) == [1]
    assert ids(tracker, []) == []  # one frame without the face
    assert ids(tracker, [box_at(3), box_at(400)]) == [1, 2]  # the face again, and a newcomer
    assert ids(tracker, [box_at(402), box_at(6)]) == [2, 1]  # ids follow the boxes, not the order
    assert [t.missed for t in tracker.tracks] == [0, 0]


def test_appearance_vetoes_an_overlapping_match_and_regains_a_hidden_face():
    red, blue = look(0), look(1)
    tracker = FaceTracker()
    assert ids(tracker, [box_at(100)], [red]) == [1]
    # a different-looking face where the red one was: not the same person
    assert ids(tracker, [box_at(104)], [blue]) == [2]
    # the red face again, a side away (no overlap) after one missed frame: picked up by its look
    assert ids(tracker, [box_at(104), box_at(160)], [blue, red]) == [2, 1]
    # 2 sides away after one miss is beyond the search radius (1.1 sides): a new track
    far = FaceTracker()
    assert ids(far, [box_at(100)], [red]) == [1]
    assert ids(far, [], []) == []
    assert ids(far, [box_at(220)], [red]) == [2]


def look(k: int) -> np.ndarray:
    """A plain-coloured face's appearance: k = 0 red, 1 blue."""
    image = np.zeros((40, 40, 3), np.uint8)
    image[..., 0 if k == 0 else 2] = 200
    image[..., 1] = 40
    return appearance(image, (0, 0, 40, 40))


def test_appearance_is_a_unit_histogram_and_tells_colours_apart():
    red, blue = look(0), look(1)
    assert red.shape == (128,) and abs(np.linalg.norm(red) - 1) < 1e-6
    assert float(red @ red) == pytest.approx(1.0) and float(red @ blue) == pytest.approx(0.0)
    empty = appearance(np.zeros((10, 10, 3), np.uint8), (50, 50, 10, 10))  # a box outside the image
    assert not empty.any()


def test_moving_average_with_a_variable_frame_stride_by_hand():
    tau = 0.5
    smoother = EmaSmoother(tau)
    p0, p1, p2 = np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([0.5, 0.5])
    np.testing.assert_allclose(smoother.update(7, 0.0, p0), p0)  # first frame: as it is
    a1 = 1 - math.exp(-0.1 / tau)  # 0.1 s later
    s1 = p0 + a1 * (p1 - p0)
    np.testing.assert_allclose(smoother.update(7, 0.1, p1), s1)
    a2 = 1 - math.exp(-0.4 / tau)  # then a gap of 0.4 s (a stride four times as long) weighs more
    np.testing.assert_allclose(smoother.update(7, 0.5, p2), s1 + a2 * (p2 - s1))
    assert a2 > a1
    np.testing.assert_allclose(smoother.update(8, 0.5, p1), p1)  # another track starts afresh
    smoother.forget([8])
    np.testing.assert_allclose(smoother.update(7, 0.6, p1), p1)  # 7 ended: a new start


def test_no_smoothing_and_bad_time_constants():
    smoother = EmaSmoother(0)
    smoother.update(1, 0.0, np.array([1.0, 0.0]))
    np.testing.assert_allclose(smoother.update(1, 0.03, np.array([0.2, 0.8])), [0.2, 0.8])
    for tau in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            EmaSmoother(tau)
