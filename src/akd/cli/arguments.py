"""The commands' arguments: one parser per command, shared by ``akd <command>`` and ``akd-<command>``, with
argument types that name the problem in one line."""

from __future__ import annotations

import argparse

from akd.util import DEVICES


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; users asked for one line that names the problem."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three values (R,G,B), got '{text}'")
    return values


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got '{text}'")
    return int(text)


def add_teacher_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The target's arguments; ``--teacher*`` are the older names of the same options."""
    parser.add_argument("--target", "--teacher", dest="teacher", required=required, metavar="NAME_OR_PATH",
                        help="efficientnet_lite0 (built-in), torchvision:NAME, timm:NAME, a TorchScript file or an "
                             "ONNX file")
    parser.add_argument("--target-weights", "--teacher-weights", dest="teacher_weights", metavar="FILE",
                        help="state dict (.safetensors or .pth) for NAME targets")
    parser.add_argument("--mean", type=floats, help="R,G,B mean in [0,1] for file targets (default: ImageNet)")
    parser.add_argument("--std", type=floats, help="R,G,B std in [0,1] for file targets (default: ImageNet)")
    parser.add_argument("--target-skip-classes", "--teacher-skip-classes", dest="teacher_skip_classes", type=int,
                        default=0, metavar="K",
                        help="drop the first K outputs of an ONNX target (e.g. 1 for a 'background' class)")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_teacher_arguments(parser)
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="ImageFolder, flat folder, video, ImageNet-sample, CUB/Cars/Aircraft root, "
                             "or 'sample-photos' (scikit-image's photos)")
    parser.add_argument("--val", metavar="DIR", help="held-out data, evaluated after every epoch")
    from akd.models.pretrained import PRETRAINED_STUDENTS

    parser.add_argument("--student", default="resnet50_cbam",
                        help="resnet18_cbam | resnet34_cbam | resnet50_cbam | timm:NAME | same-as-teacher | "
                             f"pretrained:NAME (ImageNet weights from a package: {', '.join(PRETRAINED_STUDENTS)})")
    parser.add_argument("--student-weights", metavar="FILE",
                        help="initial weights of a --student timm:NAME (.safetensors or a tensors-only .pth); a head "
                             "for other classes than the target's is replaced and fitted to the target's logits")
    parser.add_argument("--stages", default="student,explainer",
                        help="comma-separated, run in order: student, explainer, joint (default: student,explainer)")
    parser.add_argument("--recipe", help="built-in recipe name or YAML/TOML file (default: paper-imagenet)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set sparsity=0.5 --set stages.student.lr=0.01")
    parser.add_argument("--epochs", type=positive_int, help="epochs of every selected stage")
    parser.add_argument("--batch-size", type=positive_int, help="global batch size (split across processes)")
    parser.add_argument("--image-size", type=positive_int, help="training resolution (default: the target's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    from akd.data.sources import AIRCRAFT_LEVELS

    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--aircraft-level", default="variant", choices=list(AIRCRAFT_LEVELS))
    parser.add_argument("--video-stride", type=positive_int, default=10, help="use every Nth video frame")
    parser.add_argument("--resume", action="store_true", help="continue the run checkpointed at --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs still print)")
    parser.add_argument("--out", required=True, metavar="FILE.safetensors")


def batch_profile(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,OPT,MAX batch sizes, got '{text}'") from None
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise argparse.ArgumentTypeError(f"expected MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got '{text}'")
    return values  # type: ignore[return-value]


def add_int8_arguments(parser: argparse.ArgumentParser) -> None:
    from akd.deploy.calibration import DEFAULT_MAX_DRIFT, FLAVOURS, METHODS

    parser.add_argument("--int8-target", choices=FLAVOURS,
                        help="Q/DQ flavour: tensorrt = symmetric signed activations (default for engines), "
                             "cpu = unsigned activations, fast in onnxruntime on CPU (default for onnx)")
    parser.add_argument("--calibration-method", default="entropy", choices=METHODS,
                        help="entropy (default): least drift on the shipped lite0 surrogate; minmax is fastest")
    parser.add_argument("--num-images", type=positive_int, default=512, help="calibration images (default 512)")
    parser.add_argument("--max-drift", type=float, default=DEFAULT_MAX_DRIFT,
                        help="refuse an INT8 model whose drift, max(1 - saliency Pearson, 1 - class agreement) on "
                             f"held-out images, exceeds this (default {DEFAULT_MAX_DRIFT})")
    parser.add_argument("--cache-dir", help="calibration cache folder (default ~/.cache/akd/calibration)")
    parser.add_argument("--force", action="store_true", help="overwrite existing artifacts")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from akd.contract import INPUT_FORMATS
    from akd.deploy.formats import FORMATS, PRECISIONS
    from akd.deploy.serving import ORT_TENSORRT_PRECISIONS, TRITON_KINDS, TRITON_PLATFORMS
    from akd.deploy.tensorrt import HARDWARE_LEVELS

    parser.add_argument("checkpoint", metavar="SURROGATE.safetensors", nargs="?",
                        help="default: the surrogate shipped with akd (then --out is required), or with --target "
                             "the target's own explanation")
    add_teacher_arguments(parser, required=False)
    parser.add_argument("--opaque", action="store_true",
                        help="treat an ONNX --target as a black box (no conversion to torch): it then has no "
                             "gradients to export, so this refuses with the reason")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="fp32 (default: exact parity), fp16 (GPU), int8 (--calib-data, or the shipped "
                             "surrogate's own ranges)")
    parser.add_argument("--format", default="onnx", choices=list(FORMATS),
                        help="; ".join(f"{entry.name}: {entry.writes}" for entry in FORMATS.values()))
    parser.add_argument("--out", help="output .onnx path or folder (default: beside the checkpoint)")
    parser.add_argument("--input-format", default="float-nchw", choices=INPUT_FORMATS,
                        help="uint8-nhwc fuses scaling and normalisation into the graph")
    parser.add_argument("--include-target", action="store_true",
                        help="fuse the target network too: class_id and score come from the target")
    parser.add_argument("--no-layercam", action="store_true",
                        help="export the map without its LayerCAM term (CAM's ranking alone): a forward-only graph, "
                             "faster, that OpenCV DNN (akd-infer's .onnx backend) can run")
    parser.add_argument("--no-verify", action="store_true", help="skip the parity check against PyTorch")
    parser.add_argument("--parity-data", metavar="DIR", help="real images for the parity check (default: bundled)")
    parser.add_argument("--calib-data", metavar="DIR", help="calibration images/videos for int8 (optional for the "
                        "shipped surrogate, whose ranges ship with it)")
    add_int8_arguments(parser)
    parser.add_argument("--batch", type=batch_profile, default=(1, 8, 32), metavar="MIN,OPT,MAX",
                        help="TensorRT optimisation profile (default 1,8,32)")
    parser.add_argument("--workspace", type=positive_int, default=2048, metavar="MB")
    parser.add_argument("--timing-cache", metavar="FILE", help="TensorRT timing cache to load and update")
    parser.add_argument("--dla-core", type=int, help="build for this DLA core (Jetson), falling back to the GPU")
    parser.add_argument("--version-compatible", action="store_true", help="TensorRT version-compatible engine")
    parser.add_argument("--hardware-compatibility", default="none",
                        choices=list(HARDWARE_LEVELS))
    triton = parser.add_argument_group("Triton (--format triton; max_batch_size = the --batch profile's MAX)")
    triton.add_argument("--triton-name", default="akd_surrogate", help="model name in the repository")
    triton.add_argument("--triton-platform", default="onnxruntime_onnx",
                        choices=TRITON_PLATFORMS,
                        help="python: model.py runs the graph with onnxruntime in Triton's Python backend (servers "
                             "without the onnxruntime backend, e.g. nvidia-pytriton's)")
    triton.add_argument("--triton-instances", type=positive_int, default=1, help="instance_group count")
    triton.add_argument("--triton-kind", default="gpu", choices=TRITON_KINDS, help="instance_group kind")
    triton.add_argument("--triton-queue-delay-us", type=int, default=500, help="dynamic batching queue delay")
    triton.add_argument("--triton-ort-tensorrt", choices=ORT_TENSORRT_PRECISIONS,
                        help="enable onnxruntime's TensorRT accelerator at this precision")


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL.onnx", help="an fp32 graph written by akd-export")
    parser.add_argument("--data", metavar="DIR", help="calibration images/videos (default for a graph of the "
                        "shipped surrogate: the INT8 ranges shipped with it, computed on the ImageNet sample)")
    parser.add_argument("--out", required=True, metavar="MODEL.int8.onnx")
    add_int8_arguments(parser)


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    from akd.runtime.backends import BACKENDS
    from akd.runtime.geometry import FITS

    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--fit", default="letterbox", choices=FITS,
                        help="how frames meet the model input (default letterbox: whole frame, aspect kept)")


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders and videos")
    parser.add_argument("--model", help=".onnx, .engine, .safetensors or grpc://HOST:PORT/MODEL on a Triton server "
                                        "(default: the shipped surrogate)")
    parser.add_argument("--out", default="akd-explain-out", help="output folder (default: akd-explain-out)")
    from akd.runtime.explain import MAP_FILES

    parser.add_argument("--maps", choices=MAP_FILES, help="also save raw saliency maps")
    parser.add_argument("--smoothing", type=float, default=0.0, help="EMA weight of the previous map for videos")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="frames per inference for videos")
    parser.add_argument("--shard", type=shard, default=(0, 1), metavar="K/N",
                        help="explain every N-th input file starting at the K-th (split work across processes)")
    parser.add_argument("--no-progress", action="store_true")
    add_engine_arguments(parser)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE",
                        help="a video file, a folder of images (played in a loop), a camera index or an RTSP/HTTP URL")
    parser.add_argument("--model", help=".onnx, .engine, .safetensors or grpc://HOST:PORT/MODEL (default: the "
                                        "shipped surrogate)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; any other lets whoever reaches it see the stream)")
    parser.add_argument("--port", type=positive_int, default=8000)
    parser.add_argument("--max-viewers", type=positive_int, default=8, help="concurrent streams (default 8)")
    parser.add_argument("--opacity", type=float, default=0.45, help="initial overlay opacity in [0, 1]")
    add_engine_arguments(parser)


def shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not int(index) < int(count):
        raise argparse.ArgumentTypeError(f"expected K/N with 0 <= K < N, got '{text}'")
    return int(index), int(count)


def batch_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes, got '{text}'") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive, got '{text}'")
    return values


def frame_size(text: str) -> tuple[int, int]:
    match = text.lower().split("x")
    if len(match) != 2 or not all(v.isdigit() and int(v) > 0 for v in match):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got '{text}'")
    return int(match[1]), int(match[0])


def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help=".onnx, .engine or .safetensors")
    parser.add_argument("--batch", type=batch_list, default=[1, 8, 32], metavar="1,8,32")
    parser.add_argument("--warmup", type=non_negative_int, default=5)
    parser.add_argument("--iters", type=positive_int, default=30)
    parser.add_argument("--frame-size", type=frame_size, default=(480, 640), metavar="WxH",
                        help="size of the synthetic uint8 frames (default 640x480)")
    parser.add_argument("--json", metavar="OUT", help="write the full report as JSON")
    add_engine_arguments(parser)


def subset(text: str) -> tuple[str, int]:
    method, sep, count = text.partition("=")
    if not sep or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"expected METHOD=N (e.g. rise=8), got '{text}'")
    return method, int(count)


def saved_maps(text: str) -> tuple[str, list[str]]:
    label, sep, files = text.partition("=")
    paths = [path for path in files.split(",") if path]
    if not sep or not label or not paths:
        raise argparse.ArgumentTypeError(f"expected LABEL=FILE.npz[,FILE.npz...], got '{text}'")
    return label, paths


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from akd.evaluation.methods import METHODS

    parser.add_argument("--model", action="append", default=[], metavar="MODEL",
                        help="surrogate for the 'akd' method (.onnx, .engine, .safetensors; repeat to compare "
                             "e.g. fp32 and int8; default: the shipped surrogate)")
    add_teacher_arguments(parser)
    parser.add_argument("--data", required=True, metavar="DIR", help="images to explain (any layout akd-train reads)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated from {', '.join(METHODS)}")
    parser.add_argument("--limit", type=positive_int, help="evaluate a seeded random subset of N images")
    parser.add_argument("--subset", type=subset, action="append", default=[], metavar="METHOD=N",
                        help="run a slow method on the first N images only, e.g. --subset rise=8")
    parser.add_argument("--maps", type=saved_maps, action="append", default=[], metavar="LABEL=FILE.npz[,...]",
                        help="score maps made elsewhere (e.g. RISE on a GPU: benchmarks/rise_targets.py) as a "
                             "method named LABEL; .npz with names, class_ids, maps (N,H,W) and optional seconds")
    parser.add_argument("--masks", metavar="DIR", help="object masks named like the images: adds the pointing games")
    parser.add_argument("--step", type=positive_int, help="pixels moved per point (default: width * 8 = 1792)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="perturbed images per forward pass")
    parser.add_argument("--threads", type=positive_int, default=1, help="CPU threads for every method (pinned)")
    parser.add_argument("--rise-masks", type=positive_int, default=4000)
    parser.add_argument("--lime-samples", type=positive_int, default=1000)
    parser.add_argument("--gradcam-layer", metavar="NAME", action="append", default=[],
                        help="target layer; repeat to compare layers (default: end of the last conv stage)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", required=True, metavar="DIR", help="report folder (report.md/.json, *.png)")

