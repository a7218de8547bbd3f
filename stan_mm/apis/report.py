"""Human-readable outputs of the demos: text tables and a self-contained HTML page with
frame thumbnails (JPEG, base64-embedded: the page needs no other file)."""
import base64
import html
import os.path as osp
from typing import List, Optional, Sequence

import numpy as np


def video_thumbnails(path: str, num: int = 4, height: int = 96) -> List[bytes]:
    """``num`` frames at the centres of ``num`` equal segments of the video, resized to
    ``height`` pixels (aspect kept), as JPEG bytes. decord first, OpenCV when decord fails.
    Raises ``VideoReadError`` when neither can read the file."""
    import cv2
    from stan_mm.datasets.transforms.video_io import VideoReadError, decode_frames_opencv
    local = osp.abspath(path)   # FFmpeg reads a relative 'a:b.mp4' as protocol 'a'
    try:
        import decord
        reader = decord.VideoReader(local, num_threads=1)
        total = len(reader)
        inds = _centres(total, num)
        frames = list(reader.get_batch(inds).asnumpy())
    except Exception:  # noqa: BLE001  (decord failures: try OpenCV, which names the file)
        cap = cv2.VideoCapture(local)
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        cap.release()
        if total < 1:
            raise VideoReadError(path, 'neither decord nor OpenCV can read it')
        frames = decode_frames_opencv(local, _centres(total, num), path)
    out = []
    for rgb in frames:
        h, w = rgb.shape[:2]
        small = cv2.resize(rgb, (max(1, round(w * height / h)), height),
                           interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode('.jpg', cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, 85])
        if ok:
            out.append(buf.tobytes())
    return out


def _centres(total: int, num: int) -> List[int]:
    num = max(1, min(num, total))
    return [int((2 * k + 1) * total / (2 * num)) for k in range(num)]


def format_table(query: str, scores: Sequence[float], names: Sequence[str],
                 label: str = 'video') -> str:
    """``query`` then one ``rank  score  name`` line per result."""
    lines = [f'query: {query}', f'{"rank":>6}  {"score":>8}  {label}']
    for r, (s, n) in enumerate(zip(scores, names), start=1):
        lines.append(f'{r:>6}  {s:>8.4f}  {n}')
    return '\n'.join(lines)


_CSS = """body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}
td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:middle}
img{height:72px;margin-right:2px}h2{margin-top:1.5em}.meta{color:#666;font-size:90%}"""


def search_html(queries: Sequence[str], ranking: np.ndarray, sim: np.ndarray,
                video_paths: Sequence[str], display_names: Sequence[str],
                title: str = 'stan-mm text-to-video search', subtitle: str = '',
                thumbs: int = 4) -> str:
    """A page with one table per query: rank, score, video name, ``thumbs`` frames."""
    cache = {}

    def images(i: int) -> str:
        if i not in cache:
            try:
                jpgs = video_thumbnails(video_paths[i], thumbs)
                cache[i] = ''.join(
                    f'<img alt="frame" src="data:image/jpeg;base64,'
                    f'{base64.b64encode(j).decode("ascii")}">' for j in jpgs)
            except Exception as e:  # noqa: BLE001  (a page without this video's frames)
                cache[i] = f'<i>no thumbnails: {html.escape(str(e))}</i>'
        return cache[i]

    parts = ['<!DOCTYPE html><html><head><meta charset="utf-8">',
             f'<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>',
             f'<h1>{html.escape(title)}</h1>']
    if subtitle:
        parts.append(f'<p class="meta">{html.escape(subtitle)}</p>')
    for q, query in enumerate(queries):
        parts.append(f'<h2>{html.escape(query)}</h2><table>'
                     '<tr><th>rank</th><th>score</th><th>video</th><th>frames</th></tr>')
        for r, i in enumerate(ranking[q], start=1):
            parts.append(f'<tr><td>{r}</td><td>{sim[q, i]:.4f}</td>'
                         f'<td>{html.escape(display_names[i])}</td><td>{images(int(i))}</td>'
                         '</tr>')
        parts.append('</table>')
    parts.append('</body></html>')
    return '\n'.join(parts)


def display_name(path: str, root: Optional[str]) -> str:
    """``path`` relative to ``root`` when inside it, else the path itself."""
    if root:
        rel = osp.relpath(path, root)
        if not rel.startswith('..'):
            return rel
    return path
