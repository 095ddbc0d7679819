"""Video API prompts next to GPU prompts: does waiting on a provider hold the queue?

    python bench/video_api.py                      # 50 videos (2 s fake render) + 50 tiny SD1.5 images
    python bench/video_api.py --videos 20 --images 20 --render 1.0

A fake Runway (tests/fake_providers, real HTTP on 127.0.0.1) renders each video in ``--render``
seconds.  Phase A runs the image prompts alone (tiny SD1.5, 4 steps, 64×64).  Phase B queues
video and image prompts interleaved (video, image, video, …) into a fresh runtime and waits for all.
Printed: total wall time of phase B against max(image work, video work / concurrency), the longest
single video prompt, the submits the fake saw (must equal the number of videos), and the network
lane's CPU time per poll: all lane work divided by the polls (submits and downloads included), and
the marginal cost of one poll (8 videos rendering 2× longer than 8 others differ only in polls).
Targets: total ≤ 1.2 × max(…), no duplicate submit, < 1 ms CPU per poll.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from graph_runtime.context import RuntimeOptions  # noqa: E402
from graph_runtime.paths import FolderPaths  # noqa: E402
from graph_runtime.service import Runtime  # noqa: E402
from server import default_registry  # noqa: E402
from tests.fake_providers import FakeRunway, settings_for  # noqa: E402

CKPT = "tiny-sd15.safetensors"


def image_prompt(i: int, size: int = 64, steps: int = 4) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": f"a red fox number {i}", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 1000 + i, "steps": steps, "cfg": 7.0,
                                                 "sampler_name": "euler", "scheduler": "normal",
                                                 "positive": ["2", 0], "negative": ["3", 0],
                                                 "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": f"bench/img{i}"}},
    }


def video_prompt(i: int) -> dict:
    return {
        "img": {"class_type": "EmptyImage", "inputs": {"width": 128, "height": 72, "batch_size": 1, "color": i}},
        "gen": {"class_type": "RunwayImageToVideoNodeGen4", "inputs": {
            "prompt": f"shot {i}", "start_frame": ["img", 0], "duration": 5, "ratio": "1280:720", "seed": i}},
        "save": {"class_type": "SaveVideo", "inputs": {"video": ["gen", 0], "filename_prefix": f"video/bench{i}",
                                                      "format": "auto", "codec": "auto"}},
    }


def make_base(root: Path, fake: FakeRunway, models: Path, poll: float) -> FolderPaths:
    paths = FolderPaths(root)
    paths.ensure_dirs()
    shutil.rmtree(paths.models_dir, ignore_errors=True)
    paths.models_dir.symlink_to(models, target_is_directory=True)
    (paths.user_dir / "secrets.yaml").write_text(yaml.safe_dump(
        {**settings_for(fake), "GENESIS_VIDEO_POLL_INTERVAL": poll}))
    return paths


def run_all(rt: Runtime, prompts: list[tuple[str, dict]], timeout: float) -> tuple[float, dict[str, str]]:
    started = time.perf_counter()
    ids: dict[str, str] = {}
    for kind, prompt in prompts:
        result = rt.submit(prompt)
        assert result.ok, (result.error, result.node_errors)
        ids[result.prompt_id] = kind
    assert rt.wait_idle(timeout), "prompts did not finish"
    wall = time.perf_counter() - started
    for pid in ids:
        entry = rt.store.get(pid).history_entry()
        assert entry["status"]["status_str"] == "success", entry["status"]["messages"][-1]
    return wall, ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=50)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--render", type=float, default=2.0, help="fake render time per video (s)")
    parser.add_argument("--concurrency", type=int, default=4, help="remote jobs in flight per provider")
    parser.add_argument("--poll", type=float, default=0.2, help="poll interval (s)")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="genesis-video-bench-"))
    from models.tools.tiny_models import write_tiny_models

    models = tmp / "models"
    write_tiny_models(models)
    options = RuntimeOptions(device="cpu", network_concurrency=args.concurrency)
    fake = FakeRunway(queued_s=0.0, running_s=args.render).start()
    try:
        # Phase A: the image prompts alone (after one warm-up prompt that loads the model).
        base_a = make_base(tmp / "a", fake, models, args.poll)
        rt = Runtime(base_a, options, registry=default_registry(base_a))
        rt.start()
        run_all(rt, [("image", image_prompt(-1))], 600)
        image_work, _ = run_all(rt, [("image", image_prompt(i)) for i in range(args.images)], 3600)
        rt.stop()

        # Phase B: interleaved, in a fresh runtime (same warm-up).
        base_b = make_base(tmp / "b", fake, models, args.poll)
        rt = Runtime(base_b, options, registry=default_registry(base_b))
        rt.start()
        run_all(rt, [("image", image_prompt(-1))], 600)
        submits_before = fake.submit_count
        cpu_before = rt.lanes.network.cpu_seconds()
        mixed: list[tuple[str, dict]] = []
        for i in range(max(args.videos, args.images)):
            if i < args.videos:
                mixed.append(("video", video_prompt(i)))
            if i < args.images:
                mixed.append(("image", image_prompt(10_000 + i)))
        total, ids = run_all(rt, mixed, 3600)
        lane_cpu = rt.lanes.network.cpu_seconds() - cpu_before
        polls = 0
        longest = 0.0
        for pid, kind in ids.items():
            job = rt.store.get(pid)
            if kind == "video":
                polls += int(job.history_entry()["meta"]["gen"]["execution"]["polls"])
                longest = max(longest, job.finished_at - job.started_at)
        submits = fake.submit_count - submits_before
        remote_longest = max(float(rt.store.get(pid).history_entry()["meta"]["gen"]["execution"]["remote_seconds"])
                             for pid, kind in ids.items() if kind == "video")
        # Marginal cost of a poll: the same videos rendering twice as long differ only in polls.
        marginal = []
        for render in (args.render, 2 * args.render):
            fake.running_s = render
            cpu = rt.lanes.network.cpu_seconds()
            _, vids = run_all(rt, [("video", video_prompt(20_000 + int(render * 100) + i)) for i in range(8)], 600)
            n = sum(int(rt.store.get(p).history_entry()["meta"]["gen"]["execution"]["polls"]) for p in vids)
            marginal.append((rt.lanes.network.cpu_seconds() - cpu, n))
        fake.running_s = args.render
        per_poll_marginal = (marginal[1][0] - marginal[0][0]) / max(1, marginal[1][1] - marginal[0][1])
        rt.stop()
    finally:
        fake.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    video_work = args.videos * args.render
    bound = max(image_work, video_work / args.concurrency)
    rows = [
        ("video prompts / image prompts", f"{args.videos} / {args.images}"),
        ("fake render per video, concurrency", f"{args.render:.1f} s, {args.concurrency}"),
        ("image prompts alone (phase A)", f"{image_work:.1f} s"),
        ("video work / concurrency", f"{video_work / args.concurrency:.1f} s"),
        ("longest single video prompt (incl. waiting for a slot)", f"{longest:.1f} s"),
        ("longest single remote job (submit to download)", f"{remote_longest:.1f} s"),
        ("interleaved total (phase B)", f"{total:.1f} s"),
        ("total / max(image, video/concurrency)", f"{total / bound:.2f}  (target ≤ 1.20)"),
        ("submits seen by the fake", f"{submits}  (must be {args.videos})"),
        ("polls; lane CPU / polls (all lane work)", f"{polls}; {lane_cpu / max(polls, 1) * 1e3:.3f} ms"),
        ("marginal lane CPU per poll (engine's poll cost)", f"{per_poll_marginal * 1e3:.3f} ms  (target < 1 ms)"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"{'measure':<{width}}  value")
    print(f"{'-' * width}  {'-' * 30}")
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    ok = total <= 1.2 * bound and submits == args.videos and per_poll_marginal < 1e-3
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
