"""ComfyUI's core video nodes (``comfy_extras/nodes_video.py``): same class names, inputs and
outputs, so workflows saved in ComfyUI load here.  The saved-result preview is ComfyUI's
``{"images": [...], "animated": [true]}`` with an ``.mp4`` file name, which the stock frontend
plays in a ``<video>`` element."""
from __future__ import annotations

import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graph_runtime.context import NodeContext, NodeError
from graph_runtime.file_hashes import sha256_of_file
from graph_runtime.paths import PathEscapeError, safe_join
from graph_runtime.schema import Combo, FileList, Float, Hidden, HiddenKind, Node, NodeResult, Output, Socket, String
from nodes.image import next_save_path, remember_counter
from nodes.video.codec import VideoFormatError
from nodes.video.types import AUDIO, VIDEO, Video

CATEGORY = "image/video"
VIDEO_EXTENSIONS = frozenset({".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".mpeg", ".mpg", ".flv", ".wmv"})


def is_video_name(name: str) -> bool:
    suffix = Path(name).suffix.lower()
    guessed = mimetypes.guess_type(name)[0] or ""
    return suffix in VIDEO_EXTENSIONS or guessed.startswith("video/")


@dataclass(frozen=True)
class InputVideos(FileList):
    """The video files of the input folder (what LoadVideo's upload widget lists)."""

    folder: str = "input"

    def resolve(self, paths: Any) -> list[str]:
        if paths is None or not paths.input_dir.is_dir():
            return []
        return sorted(p.name for p in paths.input_dir.iterdir() if p.is_file() and is_video_name(p.name))


def _input_video_path(paths: Any, name: str) -> Path:
    """``input/<name>`` or the annotated ``name [input|output|temp]`` forms; raises NodeError."""
    kind = "input"
    match = re.match(r"^(.*) \[(input|output|temp)\]$", name)
    if match:
        name, kind = match.group(1), match.group(2)
    try:
        path = safe_join(paths.directory_for(kind), name)
    except PathEscapeError as exc:
        raise NodeError(f"Invalid video file name {name!r}: {exc}", input_name="file") from exc
    if not path.is_file():
        raise NodeError(f"Invalid video file: {name} (not found in the {kind} folder); upload it or copy it there",
                        input_name="file")
    return path


def preview_entry(filename: str, subfolder: str, kind: str = "output") -> dict[str, str]:
    return {"filename": filename, "subfolder": subfolder, "type": kind}


class LoadVideo(Node):
    """Loads a video file from the input folder (kept encoded until a node needs its frames)."""

    DISPLAY_NAME = "Load Video"
    CATEGORY = CATEGORY
    INPUTS = (Combo("file", InputVideos(), video_upload=True),)
    OUTPUTS = (Output(VIDEO),)

    @classmethod
    def fingerprint(cls, file: str, paths: Any = None) -> str:
        """The file's sha256, so replacing the file re-runs the node."""
        if paths is None:
            return f"unknown:{file}"
        try:
            return sha256_of_file(_input_video_path(paths, file))
        except NodeError:
            return f"missing:{file}"

    @classmethod
    def validate_inputs(cls, file: str, paths: Any = None) -> bool | str:
        if paths is None:
            return True
        try:
            _input_video_path(paths, file)
        except NodeError as exc:
            return str(exc)
        return True

    def execute(self, ctx: NodeContext, file: str) -> tuple:
        path = _input_video_path(ctx.paths, file)
        try:
            video = Video.from_bytes(path.read_bytes())
        except VideoFormatError as exc:
            raise NodeError(f"Cannot read video {file}: {exc}", input_name="file") from exc
        return (video,)


class SaveVideo(Node):
    """Saves the input video to your output folder, with the prompt and workflow in the file."""

    DISPLAY_NAME = "Save Video"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    INPUTS = (Socket("video", VIDEO, tooltip="The video to save."),
              String("filename_prefix", "video/ComfyUI", tooltip="The prefix for the file to save. This may include "
                     "formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include "
                     "values from nodes."),
              Combo("format", ("auto", "mp4"), "auto", tooltip="The format to save the video as."),
              Combo("codec", ("auto", "h264"), "auto", tooltip="The codec to use for the video."))
    HIDDEN = (Hidden("prompt", HiddenKind.PROMPT), Hidden("extra_pnginfo", HiddenKind.EXTRA_PNGINFO))
    OUTPUTS = ()

    def execute(self, ctx: NodeContext, video: Video, filename_prefix: str = "video/ComfyUI", format: str = "auto",
                codec: str = "auto", prompt: dict | None = None, extra_pnginfo: dict | None = None) -> NodeResult:
        if not isinstance(video, Video):
            raise NodeError(f"SaveVideo needs a VIDEO, got {type(video).__name__}", input_name="video")
        width, height = video.get_dimensions()
        root = ctx.paths.output_dir
        folder, base, counter = next_save_path(root, filename_prefix, width, height, extension="mp4")
        name = f"{base}_{counter:05}_.mp4"
        metadata: dict[str, Any] = dict(extra_pnginfo or {})
        if prompt is not None:
            metadata["prompt"] = prompt
        target = folder / name
        try:
            video.save(target, container=format, video_codec=codec, metadata=metadata)
        except VideoFormatError as exc:
            target.unlink(missing_ok=True)
            raise NodeError(f"Cannot save the video: {exc}", input_name="video") from exc
        remember_counter(folder, base, counter)
        subfolder = folder.relative_to(root.resolve()).as_posix() if folder != root.resolve() else ""
        ctx.record(video_file=name, video_frames=video.info.frame_count)
        return NodeResult((), {"images": [preview_entry(name, subfolder)], "animated": [True]})


class CreateVideo(Node):
    """Creates a video from images at a frame rate, with optional audio."""

    DISPLAY_NAME = "Create Video"
    CATEGORY = CATEGORY
    INPUTS = (Socket("images", "IMAGE", tooltip="The images to create a video from."),
              Float("fps", 30.0, min=1.0, max=120.0, step=1.0),
              Socket("audio", AUDIO, optional=True, tooltip="The audio to add to the video."))
    OUTPUTS = (Output(VIDEO),)

    def execute(self, ctx: NodeContext, images: Any, fps: float, audio: dict | None = None) -> tuple:
        try:
            return (Video.from_components(images, fps, audio),)
        except ValueError as exc:
            raise NodeError(f"CreateVideo: {exc}", input_name="images") from exc


class GetVideoComponents(Node):
    """Extracts all components from a video: frames, audio, and framerate."""

    DISPLAY_NAME = "Get Video Components"
    CATEGORY = CATEGORY
    INPUTS = (Socket("video", VIDEO, tooltip="The video to extract components from."),)
    OUTPUTS = (Output("IMAGE", "images"), Output(AUDIO, "audio"), Output("FLOAT", "fps"))

    def execute(self, ctx: NodeContext, video: Video) -> tuple:
        try:
            parts = video.components()
        except VideoFormatError as exc:
            raise NodeError(f"Cannot decode the video: {exc}", input_name="video") from exc
        return (parts.images, parts.audio, float(parts.fps))
