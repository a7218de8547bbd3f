"""Synthetic videos for the decoding benchmarks (``stan_mm.utils.benchmark``).

This module imports nothing of stan-mm, torch or decord, so that it can run alone in a
fresh interpreter: ``write_benchmark_videos`` encodes its PyAV (H.264, VP9) videos there,
because decord's and PyAV's bundled FFmpeg builds break each other in one process.

    python -c 'import runpy, sys; runpy.run_path(sys.argv[1], run_name="__main__")' \\
        stan_mm/utils/bench_videos.py '{"path": "v.mp4", "seed": [0, 0], "width": 340,
        "height": 256, "num_frames": 64, "fps": 30.0, "codec": "h264"}'
"""
import json
import sys
from typing import Iterable, Iterator, Sequence

import numpy as np

# codec -> file extension; PyAV encoder of the codecs not written by OpenCV
EXTENSIONS = {'mp4v': '.mp4', 'h264': '.mp4', 'vp9': '.webm'}
CODECS = tuple(EXTENSIONS)
ENCODERS = {'h264': 'libx264', 'vp9': 'libvpx-vp9'}


def write_video(path: str, seed: Sequence[int], width: int, height: int, num_frames: int,
                fps: float, codec: str) -> None:
    """Write one benchmark video to ``path``: ``codec`` ``'mp4v'`` with OpenCV, ``'h264'``
    or ``'vp9'`` with PyAV; frames from ``numpy.random.default_rng(seed)``."""
    frames = _synthetic_frames(np.random.default_rng(list(seed)), width, height, num_frames)
    if codec == 'mp4v':
        _write_mp4v(path, frames, width, height, fps)
    elif codec in ENCODERS:
        _write_pyav(path, frames, width, height, fps, ENCODERS[codec])
    else:
        raise ValueError(f'write_video: unknown codec {codec!r}')


def _synthetic_frames(rng: np.random.Generator, width: int, height: int,
                      num_frames: int) -> Iterator[np.ndarray]:
    """BGR uint8 ``[H, W, 3]`` frames of one benchmark video: a textured background
    panning across the frame and a few moving, colour-changing ellipses."""
    import cv2
    pan = rng.uniform(0.5, 2.0, size=2) * rng.choice([-1, 1], size=2)
    cw = width + int(abs(pan[0]) * num_frames) + 2
    ch = height + int(abs(pan[1]) * num_frames) + 2
    blobs = rng.uniform(0, 255, size=(max(ch // 24, 2), max(cw // 24, 2), 3))
    canvas = cv2.resize(blobs.astype(np.float32), (cw, ch), interpolation=cv2.INTER_CUBIC)
    canvas += rng.normal(0, 12, size=canvas.shape).astype(np.float32)
    canvas = np.clip(canvas, 0, 255).astype(np.uint8)
    objects = [dict(c=rng.uniform([0, 0], [width, height]),
                    v=rng.uniform(-4, 4, size=2),
                    axes=tuple(int(a) for a in rng.uniform(
                        max(min(width, height) / 16, 2), max(min(width, height) / 5, 3),
                        size=2)),
                    colour=rng.uniform(0, 255, size=3)) for _ in range(3)]
    for t in range(num_frames):
        x0 = int(round(t * pan[0])) if pan[0] > 0 else int(round(-pan[0] * (num_frames - t)))
        y0 = int(round(t * pan[1])) if pan[1] > 0 else int(round(-pan[1] * (num_frames - t)))
        frame = canvas[y0:y0 + height, x0:x0 + width].copy()
        for ob in objects:
            c = ob['c'] + t * ob['v']
            colour = tuple(float((v + 3 * t) % 256) for v in ob['colour'])
            cv2.ellipse(frame, (int(c[0]) % width, int(c[1]) % height), ob['axes'],
                        (7 * t) % 180, 0, 360, colour, -1, cv2.LINE_AA)
        yield frame


def _write_mp4v(path: str, frames: Iterable[np.ndarray], width: int, height: int,
                fps: float) -> None:
    import cv2
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), float(fps),
                             (width, height))
    if not writer.isOpened():
        raise RuntimeError(f'write_benchmark_videos: OpenCV cannot write {path} with the '
                           f"'mp4v' codec (check cv2.getBuildInformation())")
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()


def _write_pyav(path: str, frames: Iterable[np.ndarray], width: int, height: int,
                fps: float, encoder: str) -> None:
    try:
        import av
    except ImportError:
        raise RuntimeError(f'write_benchmark_videos: {encoder} videos are written with '
                           f'PyAV; install it with `pip install av` (or use codec '
                           f'mp4v)') from None
    from fractions import Fraction
    container = av.open(path, 'w')
    try:
        try:
            stream = container.add_stream(encoder, rate=Fraction(fps).limit_denominator(1001))
        except Exception as e:  # an FFmpeg build without this encoder
            raise RuntimeError(f'write_benchmark_videos: this PyAV build has no {encoder} '
                               f'encoder ({e}); use codec mp4v') from e
        stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
        for frame in frames:
            packet_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame),
                                                      format='bgr24')
            container.mux(stream.encode(packet_frame))
        container.mux(stream.encode())        # flush the encoder
    finally:
        container.close()


if __name__ == '__main__':
    write_video(**json.loads(sys.argv[-1]))
