"""The synthetic videos of tools/analysis_tools/track_eval.py
(embedmask_mmdet/datasets/synthetic_video.py): deterministic, ground truth
that matches the pixels, the head-on crossings where they were planned, and
a file OpenCV reads back."""
import cv2
import numpy as np
import pytest

from embedmask_mmdet.datasets import SYNTHETIC_CLASSES
from embedmask_mmdet.datasets.synthetic_video import (make_synthetic_video,
                                                      write_video)


@pytest.fixture(scope='module')
def video():
    return make_synthetic_video(seed=3, num_frames=24, num_objects=5,
                                crossings=2, with_masks=True)


def centre(obj):
    x, y, w, h = obj['bbox']
    return np.array([x + w / 2, y + h / 2])


def test_deterministic_and_seeded(video):
    again = make_synthetic_video(seed=3, num_frames=24, num_objects=5,
                                 crossings=2)
    assert all((a == b).all() for a, b in zip(video.frames, again.frames))
    assert [[(o['id'], o['bbox']) for o in g] for g in video.gt] == \
        [[(o['id'], o['bbox']) for o in g] for g in again.gt]
    other = make_synthetic_video(seed=4, num_frames=2)
    assert not (other.frames[0] == video.frames[0]).all()


def test_ground_truth_matches_the_pixels(video):
    assert len(video.frames) == len(video.gt) == 24
    assert video.frames[0].shape == (320, 320, 3)
    assert video.frames[0].dtype == np.uint8
    assert all(0 <= c < len(SYNTHETIC_CLASSES) for c in video.labels)
    full_area = {}
    for f, objects in enumerate(video.gt):
        ids = [o['id'] for o in objects]
        assert len(set(ids)) == len(ids)
        covered = np.zeros((320, 320), int)
        for o in objects:
            mask = o['mask']
            covered += mask
            assert o['area'] == mask.sum() >= 20
            assert o['label'] == video.labels[o['id']]
            ys, xs = np.nonzero(mask)
            assert o['bbox'] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(),
                                 ys.max() + 1 - ys.min()]
            full_area[o['id']] = max(full_area.get(o['id'], 0), o['area'])
        assert covered.max() <= 1  # visible masks never overlap
    # every object is seen, mostly whole (the template moves by whole
    # pixels, so an unoccluded object keeps its area)
    assert sorted(full_area) == list(range(video.num_objects))
    # the objects are painted: consecutive frames differ inside the masks
    # (they moved) far more than outside (pixel noise only)
    a, b = (v.astype(int) for v in video.frames[:2])
    inside = np.zeros((320, 320), bool)
    for o in video.gt[0] + video.gt[1]:
        inside |= o['mask']
    assert np.abs(a - b)[inside].mean() > 3 * np.abs(a - b)[~inside].mean()


def test_crossing_pairs_meet_in_the_middle(video):
    assert video.crossing_pairs == [(0, 1), (2, 3)]
    for a, b in video.crossing_pairs:
        gaps = []
        for objects in video.gt:
            by_id = {o['id']: o for o in objects}
            if a in by_id and b in by_id:
                gaps.append(np.linalg.norm(centre(by_id[a]) -
                                           centre(by_id[b])))
            else:  # one hidden behind the other
                gaps.append(0.)
        gaps = np.array(gaps)
        # they approach, meet around frames 11-12, and part again
        assert gaps[0] > 30 and gaps[-1] > 30
        assert gaps[10:14].min() < 20
        assert np.argmin(gaps) in range(8, 16)
        # where they meet, the one behind is partly hidden or gone
        middle = [{o['id']: o['area'] for o in video.gt[f]} for f in (11, 12)]
        first = {o['id']: o['area'] for o in video.gt[0]}
        assert any(m.get(o, 0) < first[o] for m in middle for o in (a, b))


def test_arguments_and_written_file(tmp_path):
    with pytest.raises(ValueError, match='crossings'):
        make_synthetic_video(num_objects=3, crossings=2)
    with pytest.raises(ValueError, match='num_frames'):
        make_synthetic_video(num_frames=1)
    short = make_synthetic_video(seed=0, num_frames=3, num_objects=2,
                                 crossings=1)
    path = write_video(str(tmp_path / 'v' / 'short.mp4'), short.frames)
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == 3
    # mp4v is lossy: the decoded frame is close to what was written
    assert np.abs(frames[1].astype(int) - short.frames[1]).mean() < 6
