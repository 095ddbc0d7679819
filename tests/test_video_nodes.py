"""The VIDEO type and the core video nodes: encode, remux without re-encoding, decode, save, preview."""
from __future__ import annotations

import io
import json
from fractions import Fraction

import av
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graph_runtime.node_info import node_info
from graph_runtime.registry import build_registry
from graph_runtime.service import Runtime
from nodes.video import codec
from nodes.video.codec import VideoFormatError
from nodes.video.types import Video


def gradient_frames(n: int, h: int, w: int) -> torch.Tensor:
    ys = torch.linspace(0, 1, h)[:, None].expand(h, w)
    xs = torch.linspace(0, 1, w)[None, :].expand(h, w)
    frames = [torch.stack([ys, xs, torch.full((h, w), i / max(n - 1, 1))], dim=-1) for i in range(n)]
    return torch.stack(frames)


def tone(seconds: float, rate: int = 16000, channels: int = 1) -> dict:
    t = torch.arange(int(seconds * rate)) / rate
    wave = 0.3 * torch.sin(2 * torch.pi * 440 * t)
    return {"waveform": wave.expand(channels, -1)[None].clone(), "sample_rate": rate}


def packets(data: bytes) -> list[bytes]:
    with av.open(io.BytesIO(data)) as c:
        return [bytes(p) for p in c.demux(video=0) if p.size]


def smooth_frames(colours: list[tuple[float, float, float]], h: int, w: int) -> torch.Tensor:
    """One flat colour per frame with a faint vertical ramp: content 4:2:0 chroma keeps."""
    ramp = torch.linspace(-0.05, 0.05, h)[:, None, None].expand(h, w, 3)
    return torch.stack([torch.tensor(c).expand(h, w, 3) + ramp for c in colours]).clamp(0, 1)


colour = st.tuples(*[st.floats(0.15, 0.85)] * 3)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(colours=st.lists(colour, min_size=1, max_size=6), h=st.integers(2, 40), w=st.integers(2, 40),
       fps=st.sampled_from([1.0, 8.0, 24.0, 29.97, 30.0]))
def test_frames_encode_to_h264_and_decode_back(colours, h, w, fps):
    """Differential: decode(encode(frames)) has the frames' count, the size rounded up to even, the
    frame rate, and each frame's mean colour close to the input's (H.264 is lossy per pixel)."""
    n = len(colours)
    frames = smooth_frames(colours, h, w)
    data = codec.encode_to_bytes(frames, Fraction(round(fps * 1000), 1000))
    info = codec.probe(data)
    assert (info.width, info.height) == (w + w % 2, h + h % 2)
    assert info.frame_count == n and info.video_codec == "h264"
    assert abs(float(info.fps) - fps) < 1e-3
    images, audio, rate = codec.decode(data)
    assert images.shape == (n, h + h % 2, w + w % 2, 3) and audio is None
    assert (images[:, :h, :w].mean(dim=(1, 2)) - frames.mean(dim=(1, 2))).abs().max() < 0.05


def test_encoded_video_is_remuxed_not_reencoded_and_carries_metadata(tmp_path):
    source = codec.encode_to_bytes(gradient_frames(5, 24, 32), 12)
    video = Video.from_bytes(source)
    target = tmp_path / "out.mp4"
    video.save(target, metadata={"prompt": {"1": {"class_type": "X"}}, "workflow": {"nodes": []}})
    assert packets(target.read_bytes()) == packets(source)  # the same compressed packets, byte for byte
    with av.open(str(target)) as c:
        assert json.loads(c.metadata["prompt"]) == {"1": {"class_type": "X"}}
        assert json.loads(c.metadata["workflow"]) == {"nodes": []}
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"


def test_components_with_audio_round_trip(tmp_path):
    frames = gradient_frames(10, 16, 16)
    video = Video.from_components(frames, 10, tone(1.0))
    target = tmp_path / "a.mp4"
    video.save(target)
    loaded = Video.from_file(target)
    assert loaded.info.has_audio and loaded.info.audio_codec == "aac"
    parts = loaded.components()
    assert parts.images.shape == (10, 16, 16, 3)
    assert parts.audio["sample_rate"] == 16000
    assert abs(parts.audio["waveform"].shape[-1] - 16000) < 2048  # AAC priming/padding only


def test_bytes_that_are_not_a_video_are_refused():
    with pytest.raises(VideoFormatError):
        Video.from_bytes(b"<html>403 Forbidden</html>")
    truncated = codec.encode_to_bytes(gradient_frames(8, 32, 32), 8)[:300]
    with pytest.raises(VideoFormatError):
        codec.verify_playable(truncated)


# -- the nodes, through the runtime -----------------------------------------------------------------

@pytest.fixture
def runtime(base_dir):
    rt = Runtime(base_dir, registry=build_registry(packs=["nodes.primitives", "nodes.image", "nodes.video.nodes"]))
    rt.start()
    yield rt
    rt.stop()


def run(rt: Runtime, prompt: dict, **kw) -> dict:
    result = rt.submit(prompt, **kw)
    assert result.ok, result.error or result.node_errors
    assert rt.wait_idle(60)
    entry = rt.store.get(result.prompt_id).history_entry()
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"]
    return entry


def test_create_then_save_video_previews_like_comfyui(runtime, base_dir):
    prompt = {"img": {"class_type": "EmptyImage", "inputs": {"width": 33, "height": 17, "batch_size": 4, "color": 0x336699}},
              "vid": {"class_type": "CreateVideo", "inputs": {"images": ["img", 0], "fps": 24.0}},
              "save": {"class_type": "SaveVideo", "inputs": {"video": ["vid", 0], "filename_prefix": "video/test",
                                                            "format": "auto", "codec": "auto"}}}
    entry = run(runtime, prompt, extra_data={"extra_pnginfo": {"workflow": {"nodes": [], "links": []}}})
    ui = entry["outputs"]["save"]
    assert ui == {"images": [{"filename": "test_00001_.mp4", "subfolder": "video", "type": "output"}],
                  "animated": [True]}
    path = base_dir.output_dir / "video" / "test_00001_.mp4"
    info = codec.verify_playable(path)
    assert (info.width, info.height, info.frame_count, float(info.fps)) == (34, 18, 4, 24.0)
    with av.open(str(path)) as c:
        assert json.loads(c.metadata["prompt"])["vid"]["class_type"] == "CreateVideo"
        assert "workflow" in c.metadata
    # Run again with a new colour: the counter moves on, nothing is overwritten.
    prompt["img"]["inputs"]["color"] = 0x112233
    entry = run(runtime, prompt)
    assert entry["outputs"]["save"]["images"][0]["filename"] == "test_00002_.mp4"
    assert path.exists()


def test_load_video_and_get_components(runtime, base_dir):
    source = codec.encode_to_bytes(gradient_frames(6, 20, 28), 6, audio=tone(1.0, channels=2))
    (base_dir.input_dir / "clip.mp4").write_bytes(source)
    (base_dir.input_dir / "still.png").write_bytes(b"not listed")
    info = node_info(runtime.registry.get("LoadVideo"), base_dir)
    options = info["input"]["required"]["file"]
    assert options[0] == ["clip.mp4"] and options[1]["video_upload"] is True
    prompt = {"load": {"class_type": "LoadVideo", "inputs": {"file": "clip.mp4"}},
              "parts": {"class_type": "GetVideoComponents", "inputs": {"video": ["load", 0]}},
              "again": {"class_type": "CreateVideo", "inputs": {"images": ["parts", 0], "fps": ["parts", 2],
                                                               "audio": ["parts", 1]}},
              "save": {"class_type": "SaveVideo", "inputs": {"video": ["again", 0], "filename_prefix": "rt",
                                                            "format": "mp4", "codec": "h264"}}}
    entry = run(runtime, prompt)
    out = base_dir.output_dir / entry["outputs"]["save"]["images"][0]["filename"]
    info = codec.verify_playable(out)
    assert (info.width, info.height, info.frame_count, float(info.fps)) == (28, 20, 6, 6.0)
    assert info.audio_codec == "aac"
    # A saved LoadVideo → SaveVideo keeps the uploaded packets as they were.
    entry = run(runtime, {"load": {"class_type": "LoadVideo", "inputs": {"file": "clip.mp4"}},
                          "save": {"class_type": "SaveVideo", "inputs": {"video": ["load", 0], "filename_prefix": "copy",
                                                                        "format": "auto", "codec": "auto"}}})
    copy = base_dir.output_dir / entry["outputs"]["save"]["images"][0]["filename"]
    assert packets(copy.read_bytes()) == packets(source)


def test_load_video_of_a_missing_file_is_a_validation_error(runtime):
    result = runtime.submit({"load": {"class_type": "LoadVideo", "inputs": {"file": "nope.mp4"}},
                             "save": {"class_type": "SaveVideo", "inputs": {"video": ["load", 0]}}})
    assert not result.ok
    assert "load" in result.node_errors
