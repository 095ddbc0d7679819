"""The VIDEO value that flows between nodes (ComfyUI's ``VIDEO`` socket type).

A :class:`Video` is either *encoded* (the bytes of a video file — a provider's MP4, an uploaded
file) or *components* (IMAGE frames, an fps and optional AUDIO, from ``CreateVideo``).  Nothing is
decoded or encoded until a node asks: a provider's video goes from download to ``SaveVideo``
untouched (remuxed, never re-encoded), and frames are only encoded when they are saved or their
bytes are needed.  Values are immutable, so the output cache can hand one to several consumers.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import av

from nodes.video import codec
from nodes.video.codec import VideoInfo

VIDEO = "VIDEO"
AUDIO = "AUDIO"


@dataclass(frozen=True)
class VideoComponents:
    """Frames ``[N, H, W, 3]`` float 0..1, frames per second, and an optional AUDIO dict."""

    images: Any
    fps: Fraction
    audio: Mapping[str, Any] | None = None


class Video:
    """A video kept encoded (bytes or a file) or as components; see the module docstring."""

    def __init__(self, *, data: bytes | None = None, path: Path | None = None,
                 components: VideoComponents | None = None) -> None:
        if sum(x is not None for x in (data, path, components)) != 1:
            raise ValueError("a Video is built from exactly one of data, path or components")
        self._data = bytes(data) if data is not None else None
        self._path = Path(path) if path is not None else None
        self._components = components

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_bytes(cls, data: bytes) -> "Video":
        """An encoded video from memory (checked to be a readable video)."""
        video = cls(data=data)
        video.info  # noqa: B018 - raises VideoFormatError early for bytes that are not a video
        return video

    @classmethod
    def from_file(cls, path: Path) -> "Video":
        return cls(path=path)

    @classmethod
    def from_components(cls, images: Any, fps: float | Fraction, audio: Mapping[str, Any] | None = None) -> "Video":
        if images is None or getattr(images, "ndim", 0) != 4 or images.shape[0] == 0:
            raise ValueError("a video needs a non-empty IMAGE batch [N, H, W, C]")
        rate = fps if isinstance(fps, Fraction) else Fraction(round(float(fps) * 1000), 1000)
        if rate <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        return cls(components=VideoComponents(images, rate, audio))

    # -- what it is -----------------------------------------------------------------------------
    @property
    def is_encoded(self) -> bool:
        return self._components is None

    @property
    def source(self) -> bytes | Path | None:
        """The encoded bytes or file (None for components)."""
        return self._data if self._data is not None else self._path

    @cached_property
    def info(self) -> VideoInfo:
        if self._components is not None:
            images, fps = self._components.images, self._components.fps
            h, w = int(images.shape[1]), int(images.shape[2])
            return VideoInfo(width=w, height=h, fps=fps, frame_count=int(images.shape[0]),
                             duration=float(images.shape[0] / fps), container="frames", video_codec="raw",
                             audio_codec="pcm" if self._components.audio is not None else None)
        return codec.probe(self.source)

    def get_dimensions(self) -> tuple[int, int]:
        """(width, height), as ComfyUI's VideoInput.get_dimensions."""
        return self.info.width, self.info.height

    @property
    def nbytes(self) -> int:
        """Memory held (the output cache budgets by it)."""
        if self._data is not None:
            return len(self._data)
        if self._components is not None:
            images = self._components.images
            audio = self._components.audio
            return int(images.numel() * images.element_size()) + int(
                getattr(audio["waveform"], "nbytes", 0) if audio else 0)
        return 0

    # -- conversions ----------------------------------------------------------------------------
    def components(self) -> VideoComponents:
        """Decoded frames, fps and audio (decodes encoded videos each time: nothing big is kept)."""
        if self._components is not None:
            return self._components
        images, audio, fps = codec.decode(self.source)
        return VideoComponents(images, fps, audio)

    def encoded_bytes(self) -> bytes:
        """The bytes of an MP4 of this video: the original bytes when encoded, else H.264."""
        if self._data is not None:
            return self._data
        if self._path is not None:
            return self._path.read_bytes()
        c = self._components
        return codec.encode_to_bytes(c.images, c.fps, audio=c.audio)

    def save(self, target: Path, *, container: str = "mp4", video_codec: str = "auto",
             metadata: Mapping[str, Any] | None = None) -> None:
        """Write an MP4: encoded H.264 videos are remuxed (packets copied), others encoded as H.264."""
        if container not in ("auto", "mp4"):
            raise ValueError(f"unsupported container {container!r}; use 'mp4'")
        if video_codec not in ("auto", "h264"):
            raise ValueError(f"unsupported codec {video_codec!r}; use 'h264'")
        if self._components is None:
            if self.info.video_codec == "h264" or video_codec == "auto":
                try:
                    codec.remux(self.source, target, metadata=metadata)
                    return
                except av.error.FFmpegError:  # a stream MP4 cannot carry: encode it instead
                    Path(target).unlink(missing_ok=True)
            c = self.components()
        else:
            c = self._components
        codec.encode(c.images, c.fps, target, audio=c.audio, metadata=metadata)

    def __repr__(self) -> str:
        kind = "frames" if self._components is not None else ("file" if self._path else f"{len(self._data)} bytes")
        return f"Video({kind})"
