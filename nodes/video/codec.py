"""PyAV plumbing for the VIDEO type: probe, decode, remux without re-encoding, encode frames.

Why these rules:

* Provider videos arrive as finished H.264/AAC MP4 files.  Re-encoding them would cost CPU and
  quality for nothing, so saving an encoded video *remuxes* it: packets are copied as they are
  into a new container that carries the prompt/workflow metadata (``use_metadata_tags``, so the
  MP4 keeps custom keys) and the index at the front (``faststart``, so browsers start playing
  before the whole file arrived).
* Frames (IMAGE tensors) are encoded as H.264 ``yuv420p``: the one combination every browser
  plays.  4:2:0 needs even sizes, so an odd width or height is padded by repeating the last
  column or row (the picture is never cropped).
* Audio (ComfyUI's AUDIO: ``{"waveform": [B, C, T] float, "sample_rate": int}``) goes in as AAC;
  PyAV's encoder re-chunks samples into the codec's frame size.

torch and numpy are imported inside the functions: starting the server does not wait for them.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, Mapping

import av

# container name -> (PyAV format, file extension)
CONTAINERS: dict[str, tuple[str, str]] = {"mp4": ("mp4", "mp4")}
# codec name -> PyAV encoder for frames
VIDEO_ENCODERS: dict[str, str] = {"h264": "libx264"}


def mp4_options(target: Path | BinaryIO) -> dict[str, str]:
    """Custom metadata keys always; ``faststart`` (a second pass over the file) only for real files."""
    if isinstance(target, (str, Path)):
        return {"movflags": "+faststart+use_metadata_tags"}
    return {"movflags": "+use_metadata_tags"}


class VideoFormatError(ValueError):
    """The bytes are not a video PyAV can read (truncated download, an HTML error page …)."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video is, read from its container without decoding frames."""

    width: int
    height: int
    fps: Fraction
    frame_count: int
    duration: float
    container: str
    video_codec: str
    audio_codec: str | None

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None


def _open(source: bytes | Path) -> Any:
    try:
        return av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else str(source))
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoFormatError(f"not a readable video: {exc}") from exc


def probe(source: bytes | Path) -> VideoInfo:
    """Size, frame rate, frame count and codecs of an encoded video (counts packets when the
    container does not record the number of frames)."""
    with _open(source) as container:
        if not container.streams.video:
            raise VideoFormatError("the file has no video stream")
        stream = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        fps = stream.average_rate or stream.guessed_rate or Fraction(0)
        frames = int(stream.frames or 0)
        if frames <= 0:
            try:
                frames = sum(1 for packet in container.demux(stream) if packet.size)
            except av.error.FFmpegError as exc:
                raise VideoFormatError(f"cannot read the video packets: {exc}") from exc
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = frames / float(fps) if fps else 0.0
        return VideoInfo(width=int(stream.codec_context.width), height=int(stream.codec_context.height),
                         fps=Fraction(fps), frame_count=frames, duration=duration,
                         container=container.format.name, video_codec=stream.codec_context.name,
                         audio_codec=audio.codec_context.name if audio is not None else None)


def verify_playable(source: bytes | Path) -> VideoInfo:
    """Probe and decode every frame: raises :class:`VideoFormatError` for a truncated or corrupt file."""
    info = probe(source)
    decoded = 0
    try:
        with _open(source) as container:
            for _ in container.decode(video=0):
                decoded += 1
    except av.error.FFmpegError as exc:
        raise VideoFormatError(f"the video does not decode: {exc}") from exc
    if decoded == 0:
        raise VideoFormatError("the video has no decodable frame")
    return info


def decode(source: bytes | Path) -> tuple[Any, dict[str, Any] | None, Fraction]:
    """``(images [N, H, W, 3] float32 0..1, audio or None, fps)`` of an encoded video."""
    import numpy as np
    import torch

    frames: list[Any] = []
    chunks: list[Any] = []
    sample_rate = None
    with _open(source) as container:
        stream = container.streams.video[0]
        fps = Fraction(stream.average_rate or stream.guessed_rate or 1)
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
    if container_has_audio(source):
        with _open(source) as container:
            astream = container.streams.audio[0]
            sample_rate = astream.codec_context.sample_rate
            resampler = av.AudioResampler(format="fltp", layout=astream.codec_context.layout, rate=sample_rate)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
    if not frames:
        raise VideoFormatError("the video has no decodable frame")
    images = torch.from_numpy(np.stack(frames).astype(np.float32) / 255.0)
    audio = None
    if chunks:
        waveform = torch.from_numpy(np.concatenate(chunks, axis=1).astype(np.float32))[None]
        audio = {"waveform": waveform, "sample_rate": int(sample_rate)}
    return images, audio, fps


def container_has_audio(source: bytes | Path) -> bool:
    with _open(source) as container:
        return bool(container.streams.audio)


def _metadata_tags(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(k): v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
            for k, v in (metadata or {}).items()}


def remux(source: bytes | Path, target: Path | BinaryIO, *, metadata: Mapping[str, Any] | None = None) -> None:
    """Copy the video and audio packets of ``source`` into a new MP4 with ``metadata``; no re-encode."""
    with _open(source) as inp, av.open(target, mode="w", format="mp4", options=mp4_options(target)) as out:
        out.metadata.update(_metadata_tags(metadata))
        mapping = {}
        for stream in list(inp.streams.video[:1]) + list(inp.streams.audio[:1]):
            mapping[stream.index] = out.add_stream_from_template(stream)
        for packet in inp.demux(*[inp.streams[i] for i in mapping]):
            if packet.dts is None:  # the demuxer's flush packet
                continue
            packet.stream = mapping[packet.stream.index]
            out.mux(packet)


def _even(images: Any) -> Any:
    """Pad [N, H, W, C] to even H and W by repeating the last row/column (4:2:0 needs even sizes)."""
    import torch

    n, h, w, c = images.shape
    if h % 2:
        images = torch.cat([images, images[:, -1:]], dim=1)
    if w % 2:
        images = torch.cat([images, images[:, :, -1:]], dim=2)
    return images


def encode(images: Any, fps: Fraction | float, target: Path | BinaryIO, *, audio: Mapping[str, Any] | None = None,
           metadata: Mapping[str, Any] | None = None, crf: int = 23) -> None:
    """IMAGE frames (+ AUDIO) → H.264 yuv420p (+ AAC) MP4 at ``fps``."""
    import numpy as np
    import torch

    if images.ndim != 4 or images.shape[0] == 0 or images.shape[-1] not in (3, 4):
        raise ValueError(f"images must be a non-empty [N, H, W, 3] batch, got shape {tuple(images.shape)}")
    frames = _even(images[..., :3].detach().cpu().float().clamp(0, 1))
    rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    with av.open(target, mode="w", format="mp4", options=mp4_options(target)) as out:
        out.metadata.update(_metadata_tags(metadata))
        vstream = out.add_stream(VIDEO_ENCODERS["h264"], rate=rate)
        vstream.width, vstream.height = int(frames.shape[2]), int(frames.shape[1])
        vstream.pix_fmt = "yuv420p"
        vstream.options = {"crf": str(crf)}
        astream = None
        if audio is not None:
            sample_rate = int(audio["sample_rate"])
            channels = int(audio["waveform"].shape[1])
            astream = out.add_stream("aac", rate=sample_rate, layout="mono" if channels == 1 else "stereo")
        pixels = (frames * 255.0).round().to(dtype=torch.uint8).numpy()
        for array in pixels:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            for packet in vstream.encode(frame):
                out.mux(packet)
        for packet in vstream.encode(None):
            out.mux(packet)
        if astream is not None:
            waveform = audio["waveform"][0].detach().cpu().float()
            if waveform.shape[0] > 2:
                waveform = waveform[:2]
            samples = np.ascontiguousarray(waveform.numpy())
            frame = av.AudioFrame.from_ndarray(samples, format="fltp",
                                               layout="mono" if samples.shape[0] == 1 else "stereo")
            frame.sample_rate = int(audio["sample_rate"])
            frame.pts = 0
            for packet in astream.encode(frame):
                out.mux(packet)
            for packet in astream.encode(None):
                out.mux(packet)


def encode_to_bytes(images: Any, fps: Fraction | float, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    encode(images, fps, buffer, **kwargs)
    return buffer.getvalue()
