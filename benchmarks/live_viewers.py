"""akd-serve's frame rate with 1 and 4 viewers against akd-explain on the same clip, side by side in one run.

akd-explain (the CLI, writing its overlay video) sets the reference; then the live pipeline serves the clip on
127.0.0.1 while N viewers (separate ``curl`` processes, as browsers would be) read its MJPEG stream to the end.
Rate = frames explained / seconds from the first frame to the source's end. Goal (issue 30): >= 0.9x akd-explain
with 4 viewers.

    python benchmarks/live_viewers.py [--model runs/live-bench/lite0.onnx] [--clip examples/bottles.mp4]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def explain_rate(model: Path, clip: Path, work: Path) -> float:
    done = subprocess.run([sys.executable, "-m", "akd.cli", "explain", str(clip), "--model", str(model), "--out",
                           str(work / "explain"), "--no-progress"], capture_output=True, text=True, check=True)
    return float(re.search(r"([0-9.]+) fps", done.stdout).group(1))


def serve_rate(model: Path, clip: Path, viewers: int) -> tuple[float, int, int]:
    """(frames/s, frames, model calls) of the live pipeline while ``viewers`` clients stream it."""
    import uvicorn

    from akd.runtime import SaliencyEngine
    from akd.runtime.live import LivePipeline, create_app

    with SaliencyEngine.load(str(model)) as engine:
        pipeline = LivePipeline(engine, str(clip))
        server = uvicorn.Server(uvicorn.Config(create_app(pipeline), host="127.0.0.1", port=0, log_level="warning",
                                               timeout_graceful_shutdown=1))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        clients = [subprocess.Popen(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/stream.mjpg"])
                   for _ in range(viewers)]
        time.sleep(0.5)  # the viewers are connected before the first frame
        pipeline.start()
        while pipeline.latest.sequence == 0:
            time.sleep(0.001)
        started = time.perf_counter()
        while pipeline.latest.state not in ("ended", "failed"):
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        frames = pipeline.latest.sequence
        for client in clients:
            client.wait(timeout=30)
        server.should_exit = True
        thread.join(timeout=15)
        pipeline.stop()
    return (frames - 1) / seconds, frames, pipeline.model_calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an exported graph (default: the shipped surrogate, exported here)")
    parser.add_argument("--clip", default=str(HERE.parent / "examples" / "bottles.mp4"))
    parser.add_argument("--work", default="runs/live-bench")
    args = parser.parse_args()
    work = Path(args.work)
    model = Path(args.model) if args.model else work / "lite0.onnx"
    if not model.is_file():
        subprocess.run([sys.executable, "-m", "akd.cli", "export", "--out", str(model), "--force"], check=True)
    reference = explain_rate(model, Path(args.clip), work)
    print(f"akd-explain: {reference:.1f} fps")
    for viewers in (1, 4):
        rate, frames, calls = serve_rate(model, Path(args.clip), viewers)
        print(f"akd-serve, {viewers} viewer(s): {rate:.1f} fps over {frames} frames, {calls} model calls "
              f"= {rate / reference:.2f}x akd-explain")
    return 0


if __name__ == "__main__":
    sys.exit(main())
