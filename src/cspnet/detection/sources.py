"""What ``cspnet detect predict`` reads: image files, folders, glob patterns, ``.txt`` lists and videos;
and the COCO file its results are written against.

:func:`collect_sources` turns the command's arguments into a list of :class:`Source` (an image or a
video file), in the order given (a folder's and a pattern's files sorted). Videos are decoded and
annotated videos written with `PyAV <https://pyav.basswood-io.com>`_ (FFmpeg's libraries; the
optional extra ``cspnet[video]``): :class:`VideoReader` yields RGB frames, :class:`VideoWriter`
encodes H.264 MP4. :func:`coco_index` reads a COCO instances file's image ids (by file name) and
category ids, so that ``results.json`` can be scored against it.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> for name in ("b.jpg", "a.png", "clip.mp4", "notes.md"):
...     _ = (folder / name).write_bytes(b"")
>>> [(s.path.name, s.kind) for s in collect_sources([str(folder)])]
[('a.png', 'image'), ('b.jpg', 'image'), ('clip.mp4', 'video')]
>>> [s.path.name for s in collect_sources([str(folder / "*.jpg")])]
['b.jpg']
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
VIDEO_EXTRA = "video"  # pip install "cspnet[video]": PyAV
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Source:
    """One input of ``detect predict``: an image or a video file."""

    path: Path
    kind: str  # "image" or "video"


def _kind(path: Path) -> str:
    return "video" if path.suffix.lower() in VIDEO_EXTENSIONS else "image"


def _folder(path: Path) -> list[Source]:
    from cspnet.data.folder import IMAGE_EXTENSIONS

    wanted = (*IMAGE_EXTENSIONS, *VIDEO_EXTENSIONS)
    found = sorted(p for p in path.rglob("*") if p.suffix.lower() in wanted and p.is_file())
    if not found:
        raise ValueError(f"{path}: no images or videos in this folder (expected {', '.join(IMAGE_EXTENSIONS[:4])}, "
                         f"..., {', '.join(VIDEO_EXTENSIONS[:3])}, ...)")  # fmt: skip
    return [Source(p, _kind(p)) for p in found]


def _listed(path: Path) -> list[Source]:
    """The files a ``.txt`` list names, one per line (relative ones against the list's folder)."""
    from cspnet.detection.data.readers import read_data_file

    sources = []
    for n, line in enumerate(read_data_file(path, "image list").split("\n"), 1):
        if not line.strip():
            continue
        item = Path(line.strip())
        item = item if item.is_absolute() else path.parent / item
        if not item.is_file():
            raise FileNotFoundError(f"{path}:{n}: image not found: {item}")
        sources.append(Source(item, _kind(item)))
    if not sources:
        raise ValueError(f"{path}: the list names no files")
    return sources


def collect_sources(items: Sequence[str | os.PathLike[str]]) -> list[Source]:
    """Every image and video that ``items`` name: files, folders (searched recursively), glob
    patterns (``photos/*.jpg``, ``**`` recursive) and ``.txt`` lists of paths.

    ``FileNotFoundError`` / ``ValueError`` in one line for a missing file, an empty folder, a
    pattern that matches nothing.
    """
    sources: list[Source] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            sources += _folder(path)
        elif path.is_file():
            sources += _listed(path) if path.suffix.lower() == ".txt" else [Source(path, _kind(path))]
        elif _GLOB_CHARS & set(str(item)):
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True) if Path(m).is_file())
            if not matches:
                raise FileNotFoundError(f"no files match {item}")
            sources += [Source(m, _kind(m)) for m in matches]
        else:
            raise FileNotFoundError(f"image not found: {path}")
    return sources


# -- video ------------------------------------------------------------------------------------------
def import_av() -> Any:
    """PyAV, or ``ModuleNotFoundError`` naming the extra that installs it."""
    try:
        import av
    except ImportError as exc:
        raise ModuleNotFoundError(f'reading and writing video needs PyAV: pip install "cspnet[{VIDEO_EXTRA}]"') from exc
    return av


class VideoReader:
    """The frames of a video file as ``uint8 (H, W, 3)`` RGB arrays, with the stream's frame rate.

    ``ValueError`` in one line for a file FFmpeg cannot open or that has no video stream.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        av = import_av()
        self.path = Path(path)
        try:
            self.container = av.open(str(path))
        except (av.FFmpegError, OSError) as exc:
            raise ValueError(f"cannot read video {path}: {' '.join(str(exc).split())}") from exc
        if not self.container.streams.video:
            self.container.close()
            raise ValueError(f"{path} has no video stream")
        self.stream = self.container.streams.video[0]
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else 25.0
        self.frames = int(self.stream.frames or 0)  # 0: the container does not say

    def __iter__(self) -> Iterator[np.ndarray]:
        av = import_av()
        try:
            for frame in self.container.decode(self.stream):
                yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as exc:  # a truncated file: the frames before it were given
            raise ValueError(f"cannot decode video {self.path}: {' '.join(str(exc).split())}") from exc
        finally:
            self.container.close()


@dataclass
class VideoWriter:
    """H.264 (yuv420p, CRF 20) MP4 at ``fps``; frames are ``uint8 (H, W, 3)`` RGB arrays, cut to even
    sides (yuv420p needs them). Open it with ``with``; ``path`` is written when the block ends."""

    path: Path
    fps: float
    _container: Any = field(default=None, init=False)
    _stream: Any = field(default=None, init=False)
    frames: int = field(default=0, init=False)

    def __enter__(self) -> VideoWriter:
        from fractions import Fraction

        av = import_av()
        self._container = av.open(str(self.path), "w", format="mp4")
        self._stream = self._container.add_stream("h264", rate=Fraction(self.fps).limit_denominator(1001))
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": "20"}
        return self

    def write(self, frame: np.ndarray) -> None:
        av = import_av()
        height, width = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
        if not self.frames:
            self._stream.width, self._stream.height = width, height
        image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:height, :width]), format="rgb24")
        for packet in self._stream.encode(image):
            self._container.mux(packet)
        self.frames += 1

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None and self.frames:
                for packet in self._stream.encode():
                    self._container.mux(packet)
        finally:
            self._container.close()


# -- COCO ids of the images ---------------------------------------------------------------------------
@dataclass
class CocoIndex:
    """A COCO instances file's image ids by file name and its categories (sorted by id: the classes)."""

    path: Path
    image_ids: dict[str, int]  # file_name as the JSON has it (posix) -> id
    by_basename: dict[str, int]  # basename -> id, for basenames that occur once
    category_ids: list[int]
    category_names: list[str]

    def image_id(self, image: Path) -> int | None:
        """The id of ``image``: its path's longest tail that is a ``file_name`` of the JSON, else its basename."""
        parts = image.parts
        for k in range(len(parts), 0, -1):
            found = self.image_ids.get("/".join(parts[-k:]))
            if found is not None:
                return found
        return self.by_basename.get(image.name)


def coco_index(path: str | os.PathLike[str]) -> CocoIndex:
    """The image ids and categories of a COCO instances file (checked as the detection reader checks them;
    the image files themselves need not be present)."""
    from collections import Counter

    from cspnet.detection.data.readers import _coco_categories, _coco_images, _load_coco_json, one_line_errors

    @one_line_errors
    def read(file: Path) -> CocoIndex:
        data = _load_coco_json(file)
        categories = _coco_categories(file, data)
        images = _coco_images(file, data)
        names = {name.replace(os.sep, "/"): image_id for image_id, name, *_ in images}
        counts = Counter(Path(name).name for name in names)
        basenames = {Path(name).name: i for name, i in names.items() if counts[Path(name).name] == 1}
        return CocoIndex(file, names, basenames, [c for c, _ in categories], [n for _, n in categories])

    return read(Path(path))
