"""Result formats and video input of the tools.

Fast (no model): the frame loop (embedmask_mmdet.apis.run_video) on fake
captures (frames that fail to decode, a stream that stops, Ctrl-C) and on a
truncated video file; source detection; the demos' option checks.

Slow (the tiny model of test_tools_e2e.py, its ``env`` / ``trained``
fixtures): tools/demo.py on a generated video (annotated mp4 + jsonl) and on
images with --json; EmbedMaskInferencer's polygon masks; the exported model
through tools/deployment/onnx_test.py --format-only on an annotation-less
(test-dev-like) file, against tools/test.py's format-only through
--cfg-options; tools/deployment/onnx_demo.py on the video. The tools run
in-process (their main(argv)): a subprocess costs ~12 s of imports here.
"""
import importlib.util
import json
import os
import os.path as osp
import re

import cv2
import numpy as np
import pytest

from embedmask_mmdet.apis import (is_video_source, open_capture, run_video,
                                  source_name)
from embedmask_mmdet.utils import segmentation_to_mask
from test_tools_e2e import ROOT, env, trained  # noqa: F401

VIDEO_W, VIDEO_H, VIDEO_FRAMES = 160, 128, 10


def load_tool(path: str, name: str):
    """A tool module by file (tools/deployment is not a package)."""
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shapes_frame(i: int, w: int = VIDEO_W, h: int = VIDEO_H) -> np.ndarray:
    """A frame of moving shapes on a grey gradient (BGR)."""
    frame = np.zeros((h, w, 3), np.uint8)
    frame[:] = np.linspace(60, 140, w, dtype=np.uint8)[None, :, None]
    cv2.circle(frame, (25 + 8 * i, 40), 16, (40, 180, 240), -1)
    cv2.rectangle(frame, (90, 60 + 3 * i), (140, 95 + 3 * i), (200, 60, 50),
                  -1)
    pts = np.array([[20, 120], [60, 120], [40, 80 - 2 * i]], np.int32)
    cv2.fillPoly(frame, [pts], (60, 200, 60))
    return frame


def write_video(path: str, n: int = VIDEO_FRAMES, fourcc: str = 'mp4v',
                fps: float = 10.) -> str:
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps,
                             (VIDEO_W, VIDEO_H))
    assert writer.isOpened(), path
    for i in range(n):
        writer.write(shapes_frame(i))
    writer.release()
    return path


def read_frames(path: str):
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


class FakeCapture:
    """``read()`` plays ``script``: a frame index (decoded), None (a failed
    read) or an exception to raise; then failed reads forever. ``count``:
    CAP_PROP_FRAME_COUNT (0: unknown, a camera or stream)."""

    def __init__(self, script, count=0, fps=0.):
        self.script, self.count, self.fps = list(script), count, fps
        self.position = 0
        self.reads = 0
        self.released = False

    def read(self):
        self.reads += 1
        if not self.script:
            return False, None
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        if item is None:  # a frame the decoder fails on: position moves
            self.position += 1
            return False, None
        self.position += 1
        return True, shapes_frame(item)

    def get(self, prop):
        if prop == cv2.CAP_PROP_FRAME_COUNT:
            return float(self.count)
        if prop == cv2.CAP_PROP_POS_FRAMES:
            return float(self.position)
        if prop == cv2.CAP_PROP_FPS:
            return float(self.fps)
        return 0.

    def release(self):
        self.released = True


def identity(frame, index):
    return frame


# ------------------------------------------------------- the frame loop


def test_loop_skips_and_counts_frames_that_fail_to_decode(tmp_path):
    """A 10-frame file whose frames 3 and 4 do not decode: 8 processed and
    written, 2 skipped, the end of the file is the end (not a failure)."""
    cap = FakeCapture([0, 1, 2, None, None, 5, 6, 7, 8, 9], count=10,
                      fps=12)
    seen, lines = [], []
    out = str(tmp_path / 'out.mp4')
    summary = run_video(cap, lambda f, i: seen.append(i) or f,
                        out_video=out, log=lines.append)
    assert (summary.frames, summary.skipped) == (8, 2)
    assert summary.ended == 'end of stream' and cap.released
    assert seen == [0, 1, 2, 5, 6, 7, 8, 9]  # indices in the stream
    assert cap.reads == 11  # one read past the end, no retries
    frames = read_frames(out)
    assert len(frames) == 8 and frames[0].shape == (VIDEO_H, VIDEO_W, 3)
    assert cv2.VideoCapture(out).get(cv2.CAP_PROP_FPS) == pytest.approx(12)
    assert lines[0] == ('8 frames processed, 2 skipped (failed to decode); '
                        'ended: end of stream')
    assert re.fullmatch(r'8 frames in \d+\.\d\d s: \d+\.\d\d frames per '
                        r'second', lines[1]), lines[1]
    assert lines[2] == f'video written to {out}'


def test_loop_on_a_stream_that_stops():
    """No frame count (a camera / stream): failures followed by a frame are
    skipped frames; N failures in a row end it and are not counted."""
    cap = FakeCapture([0, None, None, 3, 4], count=0)
    summary = run_video(cap, identity, max_failures=5, log=None)
    assert (summary.frames, summary.skipped) == (3, 2)
    assert summary.ended == 'end of stream (5 failed reads in a row)'
    assert cap.reads == 5 + 5 and cap.released
    assert summary.out is None and summary.size == (VIDEO_W, VIDEO_H)


def test_loop_on_a_truncated_file(tmp_path):
    """A real MJPG .avi cut at 60% of its bytes: OpenCV still lists 10
    frames but decodes only the first ones; the loop processes those, counts
    the rest as skipped and ends."""
    path = write_video(str(tmp_path / 'full.avi'), fourcc='MJPG')
    with open(path, 'rb') as f:
        data = f.read()
    cut = str(tmp_path / 'cut.avi')
    with open(cut, 'wb') as f:
        f.write(data[:int(len(data) * 0.6)])
    capture = open_capture(cut)
    out = str(tmp_path / 'cut_out.mp4')
    summary = run_video(capture, identity, out_video=out, log=None)
    assert 0 < summary.frames < VIDEO_FRAMES
    assert summary.frames + summary.skipped == VIDEO_FRAMES
    assert summary.ended.startswith('30 failed reads in a row at frame')
    assert len(read_frames(out)) == summary.frames


def test_ctrl_c_releases_the_writer_and_prints_the_summary(tmp_path):
    cap = FakeCapture([0, 1, 2, KeyboardInterrupt(), 4], count=0)
    out = str(tmp_path / 'int.mp4')
    lines = []
    summary = run_video(cap, identity, out_video=out, log=lines.append)
    assert summary.ended == 'interrupted' and summary.frames == 3
    assert cap.released
    # the writer was released: the file is complete and readable
    assert len(read_frames(out)) == 3
    assert lines[0].startswith('3 frames processed, 0 skipped') and \
        lines[0].endswith('ended: interrupted')
    assert 'frames per second' in lines[1]
    # inside the model call too
    def interrupted(frame, index):
        if index == 2:
            raise KeyboardInterrupt
        return frame
    cap = FakeCapture(range(6), count=6)
    summary = run_video(cap, interrupted, log=None)
    assert (summary.frames, summary.ended) == (2, 'interrupted')


def test_max_frames_and_fps_fallback(tmp_path):
    cap = FakeCapture(range(10), count=10, fps=0)  # no fps reported
    out = str(tmp_path / 'max.mp4')
    summary = run_video(cap, identity, out_video=out, max_frames=4, log=None)
    assert (summary.frames, summary.ended) == (4, 'max frames')
    assert cap.reads == 4
    assert cv2.VideoCapture(out).get(cv2.CAP_PROP_FPS) == pytest.approx(25)


def test_sources(tmp_path):
    assert is_video_source('0') and is_video_source('12')
    assert is_video_source('rtsp://cam.local/stream')
    assert is_video_source('http://host:8080/video.mjpg')
    assert is_video_source('clip.MP4') and is_video_source('a/b.avi')
    assert not is_video_source('img.jpg') and not is_video_source('folder')
    assert source_name('0') == 'camera0' and source_name('a/b.mp4') == 'b'
    assert source_name('rtsp://x/y') == 'stream'
    with pytest.raises(ValueError, match="video '.*nope.mp4': no such file"):
        open_capture(str(tmp_path / 'nope.mp4'))
    bad = tmp_path / 'bad.mp4'
    bad.write_text('not a video')
    with pytest.raises(ValueError, match='OpenCV cannot open it'):
        open_capture(str(bad))


def test_demo_option_checks(tmp_path, capsys):
    demo = load_tool('tools/demo.py', 'demo_tool')
    onnx_demo = load_tool('tools/deployment/onnx_demo.py', 'onnx_demo_tool')
    # an unknown --json format: argparse names the option and the choices
    for tool, model in ((demo, ['c.py', 'k.pth']), (onnx_demo, ['m.onnx'])):
        with pytest.raises(SystemExit) as e:
            tool.parse_args(['x.jpg'] + model + ['--json', 'bitmap'])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "--json: invalid choice: 'bitmap'" in err
        assert "'none', 'rle', 'polygon'" in err
    args = demo.parse_args(['x.jpg', 'c.py', 'k.pth', '--out-dir', 'o',
                            '--out-video', 'v.mp4'])
    with pytest.raises(SystemExit, match='--out-video / --max-frames are for '
                       "a video, camera or stream input; 'x.jpg'"):
        demo.check_output_args(args)
    args = demo.parse_args(['x.jpg', 'c.py', 'k.pth'])
    with pytest.raises(SystemExit, match='--out-dir is required'):
        demo.check_output_args(args)
    args = onnx_demo.parse_args(['v.mp4', 'm.onnx', '--json', 'rle'])
    with pytest.raises(SystemExit, match='--json rle with a video'):
        onnx_demo.check_output_args(args)
    args = onnx_demo.parse_args(['0', 'm.onnx', '--limit', '3'])
    with pytest.raises(SystemExit, match='--max-frames for a video'):
        onnx_demo.check_output_args(args)
    args = demo.parse_args(['rtsp://h/s', 'c.py', 'k.pth', '--json',
                            'polygon', '--out-video', 'out/v.mp4'])
    assert demo.check_output_args(args) is True
    assert demo.jsonl_path(args) == 'out/v.jsonl'
    # onnx_demo runs the same options and the same video loop as demo
    for name in ('add_output_args', 'check_output_args', 'run_video_source',
                 'write_image_outputs'):
        assert getattr(onnx_demo, name).__code__.co_filename == \
            osp.join(ROOT, 'tools', 'demo.py'), name
    assert demo.run_video is onnx_demo.run_video_source.__globals__[
        'run_video']


# ------------------------------------------------ end to end (the model)


def check_jsonl(path, frames, height, width, mask_format):
    with open(path) as f:
        docs = [json.loads(line) for line in f]
    assert [d['frame'] for d in docs] == list(range(frames))
    for doc in docs:
        assert (doc['height'], doc['width']) == (height, width)
        assert doc['mask_format'] == mask_format
        for inst in doc['instances']:
            assert len(inst['bbox']) == 4 and 'class' in inst
            mask = segmentation_to_mask(inst['segmentation'], height, width)
            assert mask.shape == (height, width)
    return docs


@pytest.mark.slow
def test_demo_on_a_video(env, trained, tmp_path, capsys):
    demo = load_tool('tools/demo.py', 'demo_tool')
    video = write_video(str(tmp_path / 'shapes.mp4'))
    out = str(tmp_path / 'out' / 'annotated.mp4')
    demo.main([video, env['config'], trained['ckpt'], '--out-video', out,
               '--json', 'rle', '--score-thr', '0.05', '--device', 'cpu'])
    stdout = capsys.readouterr().out
    assert (f'{VIDEO_FRAMES} frames processed, 0 skipped (failed to '
            'decode); ended: end of stream') in stdout, stdout[-2000:]
    fps = re.search(rf'{VIDEO_FRAMES} frames in (\d+\.\d\d) s: (\d+\.\d\d) '
                    'frames per second', stdout)
    assert fps and float(fps.group(2)) > 0, stdout[-2000:]
    assert f'video written to {out}' in stdout
    frames = read_frames(out)
    assert len(frames) == VIDEO_FRAMES
    assert frames[0].shape == (VIDEO_H, VIDEO_W, 3)
    cv2.imwrite(str(tmp_path / 'frame5.png'), frames[5])  # to look at
    # detections were drawn (this barely trained model's masks cover most
    # of the frame)
    assert np.abs(frames[5].astype(int) - shapes_frame(5)).mean() > 10
    docs = check_jsonl(osp.splitext(out)[0] + '.jsonl', VIDEO_FRAMES,
                       VIDEO_H, VIDEO_W, 'rle')
    assert sum(len(d['instances']) for d in docs) > 0

    # nothing above the threshold: the frames come out as they went in,
    # colours included (BGR -> the visualizer's RGB -> BGR)
    out = str(tmp_path / 'plain.mp4')
    demo.main([video, env['config'], trained['ckpt'], '--out-video', out,
               '--score-thr', '1.01', '--device', 'cpu', '--max-frames', '2'])
    frames, source = read_frames(out), read_frames(video)
    assert len(frames) == 2
    for i in (0, 1):
        diff = np.abs(frames[i].astype(int) - source[i]).mean()
        swapped = np.abs(frames[i].astype(int) - source[i][..., ::-1]).mean()
        assert diff < 6, (i, diff)  # an mp4v generation: ~2.5
        assert swapped > 10, (i, swapped)  # R and B swapped would show
    # --max-frames, polygons into --out-dir, no video written
    out_dir = str(tmp_path / 'jsonl')
    capsys.readouterr()
    demo.main([video, env['config'], trained['ckpt'], '--max-frames', '3',
               '--json', 'polygon', '--out-dir', out_dir, '--score-thr',
               '0.05', '--device', 'cpu'])
    stdout = capsys.readouterr().out
    assert '3 frames processed, 0 skipped (failed to decode); ended: max ' \
        'frames' in stdout, stdout[-2000:]
    docs = check_jsonl(osp.join(out_dir, 'shapes.jsonl'), 3, VIDEO_H,
                       VIDEO_W, 'polygon')
    assert sum(len(d['instances']) for d in docs) > 0
    assert os.listdir(out_dir) == ['shapes.jsonl']


@pytest.mark.slow
def test_demo_json_and_inferencer_polygons(env, trained, tmp_path, capsys):
    from embedmask_mmdet.apis import EmbedMaskInferencer
    val_dir = osp.join(env['data_root'], 'val')
    demo = load_tool('tools/demo.py', 'demo_tool')
    out_dir = str(tmp_path / 'demo')
    demo.main([val_dir, env['config'], trained['ckpt'], '--out-dir', out_dir,
               '--limit', '2', '--json', 'polygon', '--score-thr', '0.05',
               '--device', 'cpu'])
    assert sorted(os.listdir(out_dir)) == ['000000.json', '000000.png',
                                           '000001.json', '000001.png']
    with open(osp.join(out_dir, '000001.json')) as f:
        doc = json.load(f)
    assert doc['image'] == osp.join(val_dir, '000001.jpg')
    assert doc['mask_format'] == 'polygon' and doc['score_thr'] == 0.05
    assert all(i['score'] > 0.05 for i in doc['instances'])
    assert '000001.json: ' in capsys.readouterr().out

    image = osp.join(val_dir, '000001.jpg')
    inferencer = EmbedMaskInferencer(env['config'], weights=trained['ckpt'],
                                     device='cpu', show_progress=False,
                                     mask_format='polygon')
    res = inferencer(image, no_save_vis=True, out_dir=str(tmp_path / 'inf'),
                     no_save_pred=False)
    pred = res['predictions'][0]
    with open(tmp_path / 'inf' / 'preds' / '000001.json') as f:
        assert json.load(f) == json.loads(json.dumps(pred))
    # the call's mask_format overrides; RLE is mmdet's own output
    rle = inferencer(image, no_save_vis=True, mask_format='rle')
    rle = rle['predictions'][0]
    samples = inferencer(image, no_save_vis=True,
                         return_datasamples=True)['predictions']
    masks = samples[0].pred_instances.masks.numpy()
    assert len(pred['masks']) == len(rle['masks']) == len(masks) > 0
    assert pred['dropped_contours'] == 0
    assert pred['bboxes'] == rle['bboxes'] and pred['scores'] == rle['scores']
    h, w = masks.shape[1:]
    for polygons, encoded, mask in zip(pred['masks'], rle['masks'], masks):
        assert np.array_equal(segmentation_to_mask(encoded, h, w), mask)
        filled = segmentation_to_mask(polygons, h, w)
        # outlines on the pixel edges: every mask pixel, plus holes only
        assert (filled | mask).sum() == filled.sum()
        holes = filled & ~mask
        if mask.any():
            contours, _ = cv2.findContours(mask.astype(np.uint8),
                                           cv2.RETR_CCOMP,
                                           cv2.CHAIN_APPROX_NONE)
            outer = np.zeros_like(mask, np.uint8)
            cv2.drawContours(outer, contours, -1, 1, -1)
            assert not (holes & ~outer.astype(bool)).any()
    with pytest.raises(ValueError, match="mask_format='svg'"):
        EmbedMaskInferencer(env['config'], weights=trained['ckpt'],
                            device='cpu', mask_format='svg')


@pytest.fixture(scope='module')
def exported(env, trained, tmp_path_factory):
    """The trained model exported at a fixed 96x96 input (the test
    pipeline's size; the static graph exports in ~35 s, the dynamic one in
    ~90 s on 2 busy cores)."""
    pytest.importorskip('onnxruntime')
    from embedmask_mmdet.deploy import export_onnx
    from embedmask_mmdet.models.utils.torch_compat import \
        export_torch_problem
    if export_torch_problem():
        pytest.skip(export_torch_problem())
    onnx_file = str(tmp_path_factory.mktemp('formats_export') / 'tiny.onnx')
    export_onnx(env['config'], trained['ckpt'], onnx_file, shape=(96, 96))
    return onnx_file


def images_only_annotations(env, path):
    """The val annotation file without its annotations: a test-dev-like
    image list."""
    with open(osp.join(env['data_root'], 'annotations',
                       'instances_val.json')) as f:
        gt = json.load(f)
    gt.pop('annotations')
    with open(path, 'w') as f:
        json.dump(gt, f)
    return path


@pytest.mark.slow
def test_onnx_test_format_only_matches_test_py(env, trained, exported,
                                               tmp_path, capsys):
    from pycocotools.coco import COCO
    test_dev = images_only_annotations(env, str(tmp_path / 'test-dev.json'))
    options = [f'test_dataloader.dataset.ann_file={test_dev}',
               f'test_evaluator.ann_file={test_dev}']
    prefix = str(tmp_path / 'onnx' / 'results')
    onnx_test = load_tool('tools/deployment/onnx_test.py', 'onnx_test_tool')
    onnx_test.main([env['config'], exported, '--format-only', '--out', prefix,
                    '--cfg-options'] + options)
    onnx_out = capsys.readouterr().out
    assert '--format-only: nothing evaluated' in onnx_out
    assert 'coco/segm_mAP' not in onnx_out
    assert 'coco/bbox_mAP' not in onnx_out
    # mmdet's way, through our tools/test.py
    ref_prefix = str(tmp_path / 'pt' / 'results')
    test_tool = load_tool('tools/test.py', 'test_tool')
    test_tool.main([env['config'], trained['ckpt'], '--work-dir',
                    str(tmp_path / 'pt'), '--cfg-options',
                    'test_evaluator.format_only=True',
                    f'test_evaluator.outfile_prefix={ref_prefix}'] + options)
    out = capsys.readouterr().out
    assert 'coco/segm_mAP' not in out
    assert ('test_evaluator.format_only: nothing evaluated; results written '
            f'to {ref_prefix}.bbox.json, {ref_prefix}.segm.json') in out, \
        out[-2000:]
    assert not osp.exists(tmp_path / 'pt' / 'test_metrics.json')

    gt = COCO(osp.join(env['data_root'], 'annotations', 'instances_val.json'))
    for kind in ('bbox', 'segm'):
        with open(f'{prefix}.{kind}.json') as f:
            got = json.load(f)
        with open(f'{ref_prefix}.{kind}.json') as f:
            ref = json.load(f)
        assert f'{prefix}.{kind}.json: {len(got)} {kind} results' in \
            onnx_out
        assert {r['image_id'] for r in got} == set(gt.getImgIds())
        assert len(got) == len(ref) > 0
        assert {r['category_id'] for r in got} <= set(gt.getCatIds())
        gt.loadRes(got)  # the COCO api reads it
        # the same detections as PyTorch (the parity bar of test_onnx_parity)
        key = lambda r: (r['image_id'], -r['score'])  # noqa: E731
        for a, b in zip(sorted(got, key=key), sorted(ref, key=key)):
            assert a['image_id'] == b['image_id']
            assert abs(a['score'] - b['score']) <= 1e-3
            if a['category_id'] == b['category_id']:
                assert np.abs(np.subtract(a['bbox'], b['bbox'])).max() <= 0.5
        if kind == 'segm':
            for r in got:
                h, w = r['segmentation']['size']
                assert (h, w) == (gt.imgs[r['image_id']]['height'],
                                  gt.imgs[r['image_id']]['width'])


@pytest.mark.slow
def test_onnx_demo_on_a_video(env, exported, tmp_path, capsys):
    onnx_demo = load_tool('tools/deployment/onnx_demo.py', 'onnx_demo_tool')
    video = write_video(str(tmp_path / 'clip.mp4'))
    out = str(tmp_path / 'clip_out.mp4')
    onnx_demo.main([video, exported, '--out-video', out, '--json', 'rle',
                    '--max-frames', '6', '--score-thr', '0.05'])
    stdout = capsys.readouterr().out
    assert '6 frames processed, 0 skipped (failed to decode); ended: max ' \
        'frames' in stdout, stdout[-2000:]
    assert re.search(r'6 frames in \d+\.\d\d s: \d+\.\d\d frames per second',
                     stdout)
    frames = read_frames(out)
    assert len(frames) == 6 and frames[0].shape == (VIDEO_H, VIDEO_W, 3)
    cv2.imwrite(str(tmp_path / 'onnx_frame3.png'), frames[3])  # to look at
    check_jsonl(osp.splitext(out)[0] + '.jsonl', 6, VIDEO_H, VIDEO_W, 'rle')

    # images with --json: the returned samples' masks, at the image size
    image = osp.join(env['data_root'], 'val', '000002.jpg')
    out_dir = tmp_path / 'imgs'
    onnx_demo.main([image, exported, '--out-dir', str(out_dir), '--json',
                    'polygon', '--score-thr', '0.05'])
    assert sorted(os.listdir(out_dir)) == ['000002.json', '000002.png']
    with open(out_dir / '000002.json') as f:
        doc = json.load(f)
    assert doc['image'] == image and doc['mask_format'] == 'polygon'
    assert (doc['height'], doc['width']) == cv2.imread(image).shape[:2]
    assert '000002.json: ' in capsys.readouterr().out
    # drawn in the config's palette, as tools/demo.py draws (the .onnx
    # carries only the class names)
    meta = onnx_demo.drawing_meta(onnx_demo.EmbedMaskONNXModel(exported))
    assert len(meta['palette']) == len(meta['classes'])


# ------------------------------------- instance IDs (--track, track_eval)


@pytest.mark.slow
def test_demo_track_on_a_video(env, trained, tmp_path, capsys, monkeypatch):
    """tools/demo.py --track: the tracker sees every frame, its IDs are
    what is drawn (mmdet's TrackLocalVisualizer), unique in a frame and
    carried between frames; image inputs refuse --track."""
    from embedmask_mmdet.apis import EmbeddingTracker
    from embedmask_mmdet.datasets.synthetic_video import (
        make_synthetic_video, write_video as write_synthetic)
    from mmdet.visualization import TrackLocalVisualizer
    tracked, drawn = [], []
    track, draw_instances = (EmbeddingTracker.track,
                             TrackLocalVisualizer._draw_instances)

    def spy_track(self, detections, frame_id=None):
        out = track(self, detections, frame_id)
        tracked.append(out.instances_id.tolist())
        return out

    def spy_draw(self, image, instances):
        drawn.append(instances.instances_id.tolist())
        return draw_instances(self, image, instances)

    monkeypatch.setattr(EmbeddingTracker, 'track', spy_track)
    monkeypatch.setattr(TrackLocalVisualizer, '_draw_instances', spy_draw)
    clip = make_synthetic_video(seed=1, num_frames=4, num_objects=3,
                                crossings=1, size=(128, 96))
    video = write_synthetic(str(tmp_path / 'crossing.mp4'), clip.frames)
    out = str(tmp_path / 'tracked.mp4')
    demo = load_tool('tools/demo.py', 'demo_tool')
    demo.main([video, env['config'], trained['ckpt'], '--out-video', out,
               '--track', '--score-thr', '0.05', '--device', 'cpu'])
    stdout = capsys.readouterr().out
    assert '4 frames processed, 0 skipped' in stdout, stdout[-2000:]
    assert len(tracked) == 4 and drawn == tracked
    assert sum(map(len, tracked)) > 0, 'no detections above 0.05'
    for ids in tracked:
        assert len(set(ids)) == len(ids)
    first = next(ids for ids in tracked if ids)
    assert sorted(first) == list(range(len(first)))
    # the barely trained model's boxes hardly move: most IDs carry over
    assert any(set(a) & set(b) for a, b in zip(tracked, tracked[1:]))
    frames = read_frames(out)
    assert len(frames) == 4 and frames[0].shape == (96, 128, 3)
    cv2.imwrite(str(tmp_path / 'tracked2.png'), frames[2])  # to look at
    assert np.abs(frames[2].astype(int) - clip.frames[2]).mean() > 5
    image = osp.join(env['data_root'], 'val', '000002.jpg')
    with pytest.raises(SystemExit, match='--track is for a video'):
        demo.main([image, env['config'], trained['ckpt'], '--out-dir',
                   str(tmp_path / 'imgs'), '--track'])


@pytest.mark.slow
def test_track_eval_run_and_render(trained, env):
    """tools/analysis_tools/track_eval.py's run() on the tiny model: both
    trackers scored on the same detections, and the markdown table."""
    from mmdet.apis import init_detector
    from analysis_tools import track_eval
    model = init_detector(env['config'], trained['ckpt'], device='cpu')
    result = track_eval.run(model=model, num_videos=1, num_frames=3,
                            num_objects=2, crossings=1, score_thr=0.05,
                            checkpoint=trained['ckpt'])
    setup, rows = result['setup'], result['rows']
    assert setup['frames'] == 3 and setup['crossings'] == 1
    assert setup['gt_boxes'] > 0 and setup['detect_s_per_frame'] > 0
    assert [r['name'] for r in rows] == list(track_eval.TRACKERS)
    for r in rows:
        assert 0 <= r['crossings_kept'] <= 1
        assert r['num_switches'] >= 0 and r['idf1'] <= 1
    table = track_eval.render(result)
    assert '| association | ID switches | IDF1 | MOTA |' in table
    assert all(f"| {r['name']} |" in table for r in rows)
