"""``server.py serve --ray``: flags, the optional extra, and no Ray without ``--ray``; deploy/ files."""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import yaml

import server

REPO = Path(__file__).resolve().parent.parent


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_serving_and_running_a_prompt_without_ray_never_imports_it(tmp_path):
    code = f"""
import sys
import server
args = server.build_parser().parse_args(["serve", "--base-directory", {str(tmp_path)!r}])
assert server.build_runner(args) is None
from graph_runtime.service import Runtime
from web.app import create_app
from tests.web_harness import make_registry
runtime = Runtime(server.build_paths(args), server.build_options(args), registry=make_registry())
create_app(runtime, probe_torch=False)
runtime.start()
result = runtime.submit({{"1": {{"class_type": "StubConst", "inputs": {{"value": 2}}}},
                          "2": {{"class_type": "StubOutput", "inputs": {{"value": ["1", 0]}}}}}})
assert result.ok and runtime.wait_idle(60)
entry = runtime.store.get(result.prompt_id).history_entry()
assert entry["status"]["completed"] and entry["worker"]["name"] == "server", entry
runtime.stop()
print("ray imported:", "ray" in sys.modules)
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert "ray imported: False" in done.stdout


def test_ray_flags_give_clear_errors():
    done = run_python("import sys; sys.modules['ray'] = None\nimport server; server.main(['serve', '--ray', 'local'])")
    assert done.returncode != 0 and 'pip install -e ".[ray]"' in done.stderr
    done = run_python("import server; server.main(['serve', '--ray-workers', '2'])")
    assert done.returncode != 0 and "--ray-workers needs --ray" in done.stderr
    args = server.build_parser().parse_args(["serve", "--ray", "local", "--ray-workers", "2",
                                             "--ray-affinity-wait", "0.5", "--ray-hang-timeout", "30"])
    assert (args.ray, args.ray_workers, args.ray_affinity_wait, args.ray_hang_timeout) == ("local", 2, 0.5, 30.0)


def test_the_kuberay_manifest_runs_a_server_command_we_accept():
    docs = list(yaml.safe_load_all((REPO / "deploy" / "kuberay" / "raycluster.yaml").read_text()))
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    assert cluster["spec"]["rayVersion"] == "2.60.0"
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    command = head["args"][0].split("exec python server.py ", 1)[1]
    args = server.build_parser().parse_args(shlex.split(command))
    assert args.command == "serve" and args.ray == "auto" and args.listen == "0.0.0.0"
    workers = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert workers["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {e["name"] for e in workers["env"]} >= {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
    readme = (REPO / "deploy" / "README.md").read_text()
    for needed in ("ray start --head", "RAY_AUTH_TOKEN", "6379", "--ray auto", "--ray-workers"):
        assert needed in readme


def test_the_reaper_ends_listed_processes_when_its_pipe_closes():
    import psutil

    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        reaper = subprocess.Popen([sys.executable, "-m", "graph_runtime.cluster.reaper"], cwd=REPO,
                                  stdin=subprocess.PIPE, text=True)
        created = psutil.Process(victim.pid).create_time()
        # the bystander is listed with another start time: a reused process id is never touched
        reaper.stdin.write(f"{victim.pid} {created}\n{bystander.pid} {created - 100}\nnot a line\n")
        reaper.stdin.close()  # as when the server dies
        assert reaper.wait(30) == 0
        assert victim.wait(10) is not None
        assert bystander.poll() is None
    finally:
        for process in (victim, bystander):
            process.kill()
            process.wait()
