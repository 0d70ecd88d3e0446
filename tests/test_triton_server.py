"""A real Triton server on 127.0.0.1 (the `tritonserver` bundled in nvidia-pytriton, made ready by
scripts/triton_env.sh) serving a repository written by `akd-export --format triton --triton-platform python`.
The server validates config.pbtxt itself; the runtime talks to it over gRPC exactly as a deployment would."""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from akd.util import AkdError

ROOT = Path(__file__).resolve().parents[1]
ENV = ROOT / ".venv-triton"
SERVERS = glob.glob(str(ENV / "lib" / "python*" / "site-packages" / "pytriton" / "tritonserver"))
READY = (ENV / ".akd-triton-ready").is_file() and bool(SERVERS)

if not READY and os.environ.get("CI") == "true":  # CI runs scripts/triton_env.sh: a missing server is a failure
    raise RuntimeError(f"CI=true but no Triton server in {ENV} (bash scripts/triton_env.sh)")
pytestmark = pytest.mark.skipif(not READY, reason="no Triton server (bash scripts/triton_env.sh)")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


class Server:
    """tritonserver bound to loopback on free ports; started and stopped by the test, never left running."""

    def __init__(self, repository: Path, log: Path):
        home = Path(SERVERS[0])
        self.grpc, self.http, metrics = _free_ports(3)
        env = {**os.environ, "PATH": f"{ENV / 'bin'}{os.pathsep}{os.environ['PATH']}"}
        self.log = log
        self.process = subprocess.Popen(
            [str(home / "bin" / "tritonserver"), "--model-repository", str(repository),
             "--backend-directory", str(home / "backends"), "--grpc-address", "127.0.0.1", "--http-address",
             "127.0.0.1", "--grpc-port", str(self.grpc), "--http-port", str(self.http), "--metrics-port",
             str(metrics), "--allow-metrics", "false"], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/v2/health/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"tritonserver not ready after {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def served(tiny_checkpoint, tmp_path_factory):
    from akd.deploy.exporter import ExportOptions, export
    from akd.deploy.serving import TritonOptions

    folder = tmp_path_factory.mktemp("triton")
    export(ExportOptions(str(tiny_checkpoint), str(folder / "repo"), format="triton", verify=False,
                         triton=TritonOptions(platform="python", kind="KIND_CPU", max_batch=8,
                                              preferred_batches=(4, 8))))
    server = Server(folder / "repo", folder / "server.log")
    try:
        server.wait_ready()
        yield server, folder / "repo" / "akd_surrogate" / "1" / "model.onnx"
    finally:
        server.stop()


def _frames(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [np.clip(cv2.GaussianBlur(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8), (0, 0), 3) * 0.5
                    + rng.integers(0, 255, 3) * 0.5, 0, 255).astype(np.uint8) for _ in range(count)]


def test_real_server_matches_the_local_graph(served):
    from akd.runtime import SaliencyEngine

    server, graph = served
    frames = _frames(11)  # more than the served max_batch_size (8): split into two requests
    with SaliencyEngine.load(f"grpc://127.0.0.1:{server.grpc}/akd_surrogate") as remote, \
            SaliencyEngine.load(str(graph)) as local:
        assert remote.info.max_batch == 8 and remote.info.execution_path == "Triton server (python)"
        assert remote.info.precision == local.info.precision == "fp32"
        served_results, local_results = remote.explain(frames), local.explain(frames)
        raw = remote.runner.infer(remote.preprocess(frames[:3])[0]).outputs
    assert raw["saliency"].shape == (3, 1, 64, 64) and raw["logits"].shape == (3, 10)
    assert raw["class_id"].shape == (3,) and raw["class_id"].dtype == np.int32 and raw["score"].shape == (3,)
    assert len({r.class_id for r in local_results}) >= 2  # class equality below is not vacuous
    for got, want in zip(served_results, local_results, strict=True):
        np.testing.assert_allclose(got.saliency, want.saliency, atol=1e-5)
        assert got.class_id == want.class_id and got.score == pytest.approx(want.score, abs=1e-5)


def test_akd_explain_against_the_real_server(served, tmp_path, capsys):
    from akd.cli import explain_main

    server, _ = served
    for index, frame in enumerate(_frames(3)):
        cv2.imwrite(str(tmp_path / f"f{index}.png"), frame)
    code = explain_main([str(tmp_path), "--model", f"grpc://127.0.0.1:{server.grpc}/akd_surrogate",
                         "--out", str(tmp_path / "out"), "--maps", "npy", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "on Triton server (python)" in captured.err and "3 frames (3 images" in captured.out
    assert sorted(p.name for p in (tmp_path / "out").glob("*.overlay.png")) == ["f0.overlay.png", "f1.overlay.png",
                                                                               "f2.overlay.png"]


def test_a_stopped_server_is_a_clear_error_not_a_hang(tiny_checkpoint, tmp_path):
    from akd.deploy.exporter import ExportOptions, export
    from akd.deploy.serving import TritonOptions
    from akd.runtime import SaliencyEngine

    export(ExportOptions(str(tiny_checkpoint), str(tmp_path / "repo"), format="triton", verify=False,
                         triton=TritonOptions(platform="python", kind="KIND_CPU", max_batch=4, preferred_batches=(4,))))
    server = Server(tmp_path / "repo", tmp_path / "server.log")
    try:
        server.wait_ready()
        engine = SaliencyEngine.load(f"grpc://127.0.0.1:{server.grpc}/akd_surrogate")
        engine.explain(_frames(1)[0])
    finally:
        server.stop()
    started = time.monotonic()
    with pytest.raises(AkdError, match="Triton request failed"):
        engine.explain(_frames(1)[0])
    assert time.monotonic() - started < 30
    engine.close()
