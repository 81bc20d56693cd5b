"""The frame loop of the demos on a video file, a camera or a stream.

``tools/demo.py`` (PyTorch) and ``tools/deployment/onnx_demo.py`` (ONNX)
both run :func:`run_video`: frames come from OpenCV's ``VideoCapture``; the
caller's ``process_frame`` predicts and draws (drawing stays in the tools);
the loop writes the drawn frames to a video, shows them, counts frames that
fail to decode and ends cleanly on the end of the stream, ``max_frames`` or
Ctrl-C, with a summary (frames, skipped, frames per second).
"""
import math
import os
import os.path as osp
import time
from dataclasses import dataclass
from typing import Callable, Optional

import cv2
import numpy as np

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg',
                    '.mpeg', '.wmv', '.flv', '.ts', '.3gp')
DEFAULT_FPS = 25.
# a camera or stream whose read() fails this many times in a row has ended
MAX_FAILURES = 30


def is_camera(source: str) -> bool:
    """A camera index: a string of digits such as ``'0'``."""
    return isinstance(source, str) and source.isdigit()


def is_stream(source: str) -> bool:
    """A stream URL (``rtsp://``, ``http://``, ``https://``, ...)."""
    return isinstance(source, str) and '://' in source


def is_video_source(source: str) -> bool:
    """A camera index, a stream URL or a file with a video extension
    (:data:`VIDEO_EXTENSIONS`); anything else is an image or a folder."""
    return is_camera(source) or is_stream(source) or (
        isinstance(source, str) and source.lower().endswith(VIDEO_EXTENSIONS))


def source_name(source: str) -> str:
    """A file-name stem for a source: the video's stem, ``camera<N>`` or
    ``stream``."""
    if is_camera(source):
        return f'camera{source}'
    if is_stream(source):
        return 'stream'
    return osp.splitext(osp.basename(source))[0]


def open_capture(source: str) -> cv2.VideoCapture:
    """``cv2.VideoCapture`` on a camera index, a stream URL or a video file.

    Raises:
        ValueError: A file that does not exist, or a source OpenCV cannot
            open (the message names it).
    """
    if is_camera(source):
        capture = cv2.VideoCapture(int(source))
    else:
        if not is_stream(source) and not osp.isfile(source):
            raise ValueError(f'video {source!r}: no such file')
        capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        capture.release()
        what = 'camera' if is_camera(source) else 'stream' \
            if is_stream(source) else 'video'
        raise ValueError(f'{what} {source!r}: OpenCV cannot open it (not a '
                         'video, truncated before its index, or unreachable)')
    return capture


def _prop(capture, prop) -> float:
    try:
        value = float(capture.get(prop))
    except Exception:  # a capture-like object without get()
        return 0.
    return value if math.isfinite(value) else 0.


@dataclass
class VideoSummary:
    """What :func:`run_video` did: ``frames`` processed, ``skipped`` frames
    that failed to decode, ``seconds`` of the loop, ``fps`` (frames /
    seconds), why it ended (``'end of stream'``, ``'max frames'``, ``'N
    failed reads in a row ...'``, ``'interrupted'`` (Ctrl-C) or ``'quit'``
    (q / Esc in the window)), the output ``size`` (w, h) and the written
    ``out`` file."""
    frames: int = 0
    skipped: int = 0
    seconds: float = 0.
    ended: str = ''
    size: Optional[tuple] = None
    out: Optional[str] = None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.

    def lines(self) -> list:
        """The summary as the demos print it."""
        return [
            f'{self.frames} frames processed, {self.skipped} skipped '
            f'(failed to decode); ended: {self.ended}',
            f'{self.frames} frames in {self.seconds:.2f} s: '
            f'{self.fps:.2f} frames per second'
        ] + ([f'video written to {self.out}'] if self.out else [])


def run_video(capture, process_frame: Callable[[np.ndarray, int],
                                               np.ndarray],
              out_video: Optional[str] = None, show: bool = False,
              max_frames: int = 0, max_failures: int = MAX_FAILURES,
              fps: Optional[float] = None, window: str = 'EmbedMask',
              log: Optional[Callable[[str], None]] = print) -> VideoSummary:
    """Run ``process_frame`` on every frame of ``capture``.

    Args:
        capture: An opened ``cv2.VideoCapture`` (:func:`open_capture`), or
            any object with ``read()`` -> (ok, BGR frame), ``get(prop)`` and
            ``release()``.
        process_frame: (BGR uint8 frame, frame index) -> the drawn BGR
            frame to write / show (or None to write / show nothing).
        out_video (str, optional): Write the drawn frames here (mp4v, the
            source's fps, or ``fps``, or 25 when the source reports none).
        show (bool): Show the drawn frames in a window; q or Esc stops.
        max_frames (int): Stop after this many processed frames (0: all).
        max_failures (int): A read that fails this many times in a row
            ends the loop (a camera or stream that stopped, a file
            truncated mid-way).
        log: Where the summary lines go (None: nowhere).

    A read that fails where the container's frame count says frames
    remain is a frame that failed to decode: it is skipped and counted,
    and the loop goes on. A failed read at or past that count, or where
    the source has no count (cameras, streams), is the end of the stream
    once ``max_failures`` reads in a row failed. A file whose reads keep
    failing before its listed count (truncated mid-way) ends the same way,
    and every frame it lists but did not decode is counted as skipped.
    Ctrl-C (KeyboardInterrupt) ends the loop the same way: the writer and
    the capture are released and the summary is returned.

    Returns:
        VideoSummary
    """
    total = int(_prop(capture, cv2.CAP_PROP_FRAME_COUNT))  # <= 0: unknown
    if fps is None:
        fps = _prop(capture, cv2.CAP_PROP_FPS)
        if not 0 < fps <= 240:  # 0, -1, or a stream's 90000 time base
            fps = DEFAULT_FPS
    summary = VideoSummary(out=out_video)
    writer = None
    failures = 0  # failed reads in a row, not yet resolved
    start = time.perf_counter()
    try:
        while not max_frames or summary.frames < max_frames:
            ok, frame = capture.read()
            if not ok or frame is None:
                position = _prop(capture, cv2.CAP_PROP_POS_FRAMES)
                if total > 0 and position >= total:
                    # pending failures were listed frames that did not decode
                    summary.skipped += min(failures, max(
                        0, total - summary.frames - summary.skipped))
                    summary.ended = 'end of stream'
                    break
                failures += 1
                if failures >= max_failures:
                    if total > 0:  # the frames listed but not decoded
                        summary.skipped += max(0, total - summary.frames -
                                               summary.skipped)
                        summary.ended = (f'{failures} failed reads in a row '
                                         f'at frame {int(position)} of '
                                         f'{total}')
                    else:
                        summary.ended = (f'end of stream ({failures} failed '
                                         'reads in a row)')
                    break
                continue
            summary.skipped += failures  # failures followed by a frame
            failures = 0
            drawn = process_frame(frame, summary.frames + summary.skipped)
            summary.frames += 1
            if drawn is None:
                continue
            if summary.size is None:
                summary.size = (drawn.shape[1], drawn.shape[0])
            if (drawn.shape[1], drawn.shape[0]) != summary.size:
                # a stream that changed resolution: the writer's size
                drawn = cv2.resize(drawn, summary.size)
            if out_video is not None:
                if writer is None:
                    writer = _open_writer(out_video, fps, summary.size)
                writer.write(np.ascontiguousarray(drawn))
            if show:
                cv2.imshow(window, drawn)
                if cv2.waitKey(1) & 0xFF in (ord('q'), 27):
                    summary.ended = 'quit'
                    break
        else:
            summary.ended = 'max frames'
    except KeyboardInterrupt:
        summary.ended = 'interrupted'
    finally:
        summary.seconds = time.perf_counter() - start
        if writer is not None:
            writer.release()
        capture.release()
        if show:
            try:
                cv2.destroyAllWindows()
            except cv2.error:
                pass
    if writer is None:
        summary.out = None
    if log is not None:
        for line in summary.lines():
            log(line)
    return summary


def _open_writer(path: str, fps: float, size: tuple) -> cv2.VideoWriter:
    folder = osp.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), fps,
                             size)
    if not writer.isOpened():
        raise ValueError(f'--out-video {path!r}: OpenCV cannot write an mp4v '
                         'video there (use a .mp4 name in a writable folder)')
    return writer

