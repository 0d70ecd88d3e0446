"""Command line: ``akd <command>`` and the ``akd-<command>`` shortcuts share one parser per command.

Every user error ends as one line on stderr and exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable

from akd.util import AkdError, check_writable, separate_python_stderr


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; users asked for one line that names the problem."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three values (R,G,B), got '{text}'")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def _non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got '{text}'")
    return int(text)


def _add_teacher_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, metavar="NAME_OR_PATH",
                        help="efficientnet_lite0 (built-in), torchvision:NAME, timm:NAME, a TorchScript file or an "
                             "ONNX file (black box)")
    parser.add_argument("--teacher-weights", metavar="FILE", help="state dict (.safetensors or .pth) for NAME targets")
    parser.add_argument("--mean", type=_floats, help="R,G,B mean in [0,1] for file targets (default: ImageNet)")
    parser.add_argument("--std", type=_floats, help="R,G,B std in [0,1] for file targets (default: ImageNet)")
    parser.add_argument("--teacher-skip-classes", type=int, default=0, metavar="K",
                        help="drop the first K outputs of an ONNX target (e.g. 1 for a 'background' class)")


def _teacher_preprocessing(args: argparse.Namespace):
    from akd.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

    return Preprocessing(mean=args.mean or IMAGENET_MEAN, std=args.std or IMAGENET_STD)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    _add_teacher_arguments(parser)
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="ImageFolder, flat folder, video, ImageNet-sample, CUB/Cars/Aircraft root, "
                             "or 'sample-photos' (scikit-image's photos)")
    parser.add_argument("--val", metavar="DIR", help="held-out data, evaluated after every epoch")
    parser.add_argument("--student", default="resnet50_cbam",
                        help="resnet18_cbam | resnet34_cbam | resnet50_cbam | timm:NAME | same-as-teacher")
    parser.add_argument("--stages", default="student,explainer",
                        help="comma-separated, run in order: student, explainer, joint (default: student,explainer)")
    parser.add_argument("--recipe", help="built-in recipe name or YAML/TOML file (default: paper-imagenet)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set sparsity=0.5 --set stages.student.lr=0.01")
    parser.add_argument("--epochs", type=_positive_int, help="epochs of every selected stage")
    parser.add_argument("--batch-size", type=_positive_int, help="global batch size (split across processes)")
    parser.add_argument("--image-size", type=_positive_int, help="training resolution (default: the target's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--aircraft-level", default="variant", choices=["variant", "family", "manufacturer"])
    parser.add_argument("--video-stride", type=_positive_int, default=10, help="use every Nth video frame")
    parser.add_argument("--resume", action="store_true", help="continue the run checkpointed at --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs still print)")
    parser.add_argument("--out", required=True, metavar="FILE.safetensors")


def run_train(args: argparse.Namespace) -> int:
    from akd.train.recipes import apply_overrides, load_recipe
    from akd.train.trainer import TrainOptions, train

    if not args.out.endswith(".safetensors"):
        raise AkdError(f"--out {args.out}: the surrogate checkpoint must be a .safetensors file")
    check_writable(args.out)
    recipe = apply_overrides(load_recipe(args.recipe), args.set, args.epochs, args.batch_size)
    preprocessing = _teacher_preprocessing(args)
    options = TrainOptions(
        teacher=args.teacher, data=args.data, out=args.out, recipe=recipe, val=args.val, student=args.student,
        stages=[s.strip() for s in args.stages.split(",") if s.strip()], teacher_weights=args.teacher_weights,
        teacher_preprocessing=preprocessing, teacher_skip_classes=args.teacher_skip_classes,
        image_size=args.image_size, resume=args.resume, seed=args.seed, workers=args.workers, device=args.device,
        aircraft_level=args.aircraft_level, video_stride=args.video_stride, progress=not args.no_progress,
        command=shlex.join([*args.prog.split(), *args.argv]),  # as typed: akd-train ... or akd train ...
    )
    metrics = train(options)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float) and k != "seconds")
    print(f"akd-train: wrote {args.out} ({shown})")
    return 0


def _batch_profile(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,OPT,MAX batch sizes, got '{text}'") from None
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise argparse.ArgumentTypeError(f"expected MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got '{text}'")
    return values  # type: ignore[return-value]


def _add_int8_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--int8-target", choices=["cpu", "tensorrt"],
                        help="Q/DQ flavour: tensorrt = symmetric signed activations (default for engines), "
                             "cpu = unsigned activations, fast in onnxruntime on CPU (default for onnx)")
    parser.add_argument("--calibration-method", default="entropy", choices=["minmax", "entropy", "percentile"],
                        help="entropy (default): least drift on the shipped lite0 surrogate; minmax is fastest")
    parser.add_argument("--num-images", type=_positive_int, default=512, help="calibration images (default 512)")
    from akd.export.calibration import DEFAULT_MAX_DRIFT

    parser.add_argument("--max-drift", type=float, default=DEFAULT_MAX_DRIFT,
                        help="refuse an INT8 model whose drift, max(1 - saliency Pearson, 1 - class agreement) on "
                             "held-out images, exceeds this (default 0.03)")
    parser.add_argument("--cache-dir", help="calibration cache folder (default ~/.cache/akd/calibration)")
    parser.add_argument("--force", action="store_true", help="overwrite existing artifacts")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="SURROGATE.safetensors", nargs="?",
                        help="default: the surrogate shipped with akd (then --out is required)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"],
                        help="fp32 (default: exact parity), fp16 (GPU), int8 (--calib-data, or the shipped "
                             "surrogate's own ranges)")
    parser.add_argument("--format", default="onnx", choices=["onnx", "engine", "all", "triton", "deepstream"],
                        help="onnx graph, TensorRT engine (+ .engine.json), or both (engine implies the graph); "
                             "triton: a model repository at --out; deepstream: the graph + an nvinfer config")
    parser.add_argument("--out", help="output .onnx path or folder (default: beside the checkpoint)")
    parser.add_argument("--input-format", default="float-nchw", choices=["float-nchw", "uint8-nhwc"],
                        help="uint8-nhwc fuses scaling and normalisation into the graph")
    parser.add_argument("--include-target", action="store_true",
                        help="fuse the target network too: class_id and score come from the target")
    parser.add_argument("--no-verify", action="store_true", help="skip the parity check against PyTorch")
    parser.add_argument("--parity-data", metavar="DIR", help="real images for the parity check (default: bundled)")
    parser.add_argument("--calib-data", metavar="DIR", help="calibration images/videos for int8 (optional for the "
                        "shipped surrogate, whose ranges ship with it)")
    _add_int8_arguments(parser)
    parser.add_argument("--batch", type=_batch_profile, default=(1, 8, 32), metavar="MIN,OPT,MAX",
                        help="TensorRT optimisation profile (default 1,8,32)")
    parser.add_argument("--workspace", type=_positive_int, default=2048, metavar="MB")
    parser.add_argument("--timing-cache", metavar="FILE", help="TensorRT timing cache to load and update")
    parser.add_argument("--dla-core", type=int, help="build for this DLA core (Jetson), falling back to the GPU")
    parser.add_argument("--version-compatible", action="store_true", help="TensorRT version-compatible engine")
    parser.add_argument("--hardware-compatibility", default="none",
                        choices=["none", "ampere-plus", "same-compute-capability"])
    triton = parser.add_argument_group("Triton (--format triton; max_batch_size = the --batch profile's MAX)")
    triton.add_argument("--triton-name", default="akd_surrogate", help="model name in the repository")
    triton.add_argument("--triton-platform", default="onnxruntime_onnx",
                        choices=["onnxruntime_onnx", "tensorrt_plan", "python"],
                        help="python: model.py runs the graph with onnxruntime in Triton's Python backend (servers "
                             "without the onnxruntime backend, e.g. nvidia-pytriton's)")
    triton.add_argument("--triton-instances", type=_positive_int, default=1, help="instance_group count")
    triton.add_argument("--triton-kind", default="gpu", choices=["gpu", "cpu"], help="instance_group kind")
    triton.add_argument("--triton-queue-delay-us", type=int, default=500, help="dynamic batching queue delay")
    triton.add_argument("--triton-ort-tensorrt", choices=["FP32", "FP16", "INT8"],
                        help="enable onnxruntime's TensorRT accelerator at this precision")


def run_export(args: argparse.Namespace) -> int:
    from akd.export.exporter import ExportOptions, export, ignored_options, summarize
    from akd.export.serving import TritonOptions
    from akd.export.tensorrt import EngineOptions
    from akd.runtime.engine import default_model

    if args.checkpoint is None and args.out is None:
        raise AkdError("--out is required when exporting the shipped surrogate (it lives inside the package)")
    ignored = ignored_options(args.given, args.format, args.precision, args.triton_platform, not args.no_verify)
    if ignored:
        flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
        raise AkdError(f"{flags}: not used by --format {args.format} --precision {args.precision}"
                       f"{' --no-verify' if args.no_verify else ''}; drop it or pick the format that takes it")
    written = export(ExportOptions(
        checkpoint=args.checkpoint or default_model(), out=args.out, precision=args.precision, format=args.format,
        input_format=args.input_format, include_target=args.include_target, verify=not args.no_verify,
        parity_data=args.parity_data, calib_data=args.calib_data, num_images=args.num_images,
        calibration_method=args.calibration_method, int8_target=args.int8_target, max_drift=args.max_drift,
        cache_dir=args.cache_dir, force=args.force,
        engine=EngineOptions(batch=args.batch, workspace_mb=args.workspace, timing_cache=args.timing_cache,
                             dla_core=args.dla_core, version_compatible=args.version_compatible,
                             hardware_compatibility=args.hardware_compatibility),
        triton=TritonOptions(name=args.triton_name, platform=args.triton_platform, max_batch=args.batch[2],
                             preferred_batches=(args.batch[1], args.batch[2]),
                             queue_delay_us=args.triton_queue_delay_us, instances=args.triton_instances,
                             kind=f"KIND_{args.triton_kind.upper()}",
                             ort_tensorrt=args.triton_ort_tensorrt)))
    print(f"akd-export: wrote {summarize(written)}")
    return 0


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL.onnx", help="an fp32 graph written by akd-export")
    parser.add_argument("--data", metavar="DIR", help="calibration images/videos (default for a graph of the "
                        "shipped surrogate: the INT8 ranges shipped with it, computed on the ImageNet sample)")
    parser.add_argument("--out", required=True, metavar="MODEL.int8.onnx")
    _add_int8_arguments(parser)


def run_calibrate(args: argparse.Namespace) -> int:
    from akd.export.exporter import calibrate_file

    info = calibrate_file(args.model, args.data, args.out, args.int8_target or "cpu", args.calibration_method,
                          args.num_images, args.max_drift, args.cache_dir, args.force)
    cache = "reused" if info["cache_hit"] else "written"
    source = ("the shipped ranges" if info["ranges"] == "shipped" else
              f"{info['images']} images, calibration cache {cache}: {info['cache']}")
    print(f"akd-calibrate: wrote {args.out} ({info['flavour']} flavour, {info['method']}, {source})")
    return 0


def _add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "tensorrt", "torch", "triton"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--fit", default="letterbox", choices=["letterbox", "crop", "stretch"],
                        help="how frames meet the model input (default letterbox: whole frame, aspect kept)")


def _open_engine(args: argparse.Namespace):
    from akd.runtime import SaliencyEngine

    remote = args.backend == "triton" or (args.model or "").startswith("grpc://")  # the server picks its device
    options = {} if args.device == "auto" or args.backend == "tensorrt" or remote else {"device": args.device}
    engine = SaliencyEngine.load(args.model, backend=args.backend, fit=args.fit, **options)
    print(f"{args.prog}: {engine.info.source} ({engine.info.precision}) on {engine.info.execution_path}",
          file=sys.stderr)
    return engine


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders and videos")
    parser.add_argument("--model", help=".onnx, .engine, .safetensors or grpc://HOST:PORT/MODEL on a Triton server "
                                        "(default: the shipped surrogate)")
    parser.add_argument("--out", default="akd-explain-out", help="output folder (default: akd-explain-out)")
    parser.add_argument("--maps", choices=["npy", "png", "both"], help="also save raw saliency maps")
    parser.add_argument("--smoothing", type=float, default=0.0, help="EMA weight of the previous map for videos")
    parser.add_argument("--batch-size", type=_positive_int, default=1, help="frames per inference for videos")
    parser.add_argument("--shard", type=_shard, default=(0, 1), metavar="K/N",
                        help="explain every N-th input file starting at the K-th (split work across processes)")
    parser.add_argument("--no-progress", action="store_true")
    _add_engine_arguments(parser)


def _shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not int(index) < int(count):
        raise argparse.ArgumentTypeError(f"expected K/N with 0 <= K < N, got '{text}'")
    return int(index), int(count)


def run_explain(args: argparse.Namespace) -> int:
    from akd.runtime.explain import explain_inputs

    check_writable(args.out, "dir")
    with _open_engine(args) as engine:
        summary = explain_inputs(engine, args.inputs, args.out, args.maps, args.smoothing, args.batch_size,
                                 progress=not args.no_progress, shard=args.shard)
    outputs = {path for path in summary.written if path.exists()}
    print(f"akd-explain: {summary.line()}; wrote {len(outputs)} outputs to {args.out}")
    return 0


def _batch_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes, got '{text}'") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive, got '{text}'")
    return values


def _frame_size(text: str) -> tuple[int, int]:
    match = text.lower().split("x")
    if len(match) != 2 or not all(v.isdigit() and int(v) > 0 for v in match):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got '{text}'")
    return int(match[1]), int(match[0])


def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help=".onnx, .engine or .safetensors")
    parser.add_argument("--batch", type=_batch_list, default=[1, 8, 32], metavar="1,8,32")
    parser.add_argument("--warmup", type=_non_negative_int, default=5)
    parser.add_argument("--iters", type=_positive_int, default=30)
    parser.add_argument("--frame-size", type=_frame_size, default=(480, 640), metavar="WxH",
                        help="size of the synthetic uint8 frames (default 640x480)")
    parser.add_argument("--json", metavar="OUT", help="write the full report as JSON")
    _add_engine_arguments(parser)


def run_profile(args: argparse.Namespace) -> int:
    from akd.profile import format_report, profile, write_json

    if args.json:
        check_writable(args.json)
    with _open_engine(args) as engine:
        report = profile(engine, args.batch, args.warmup, args.iters, args.frame_size)
    print(format_report(report))
    if args.json:
        write_json(report, args.json)
    return 0


def _subset(text: str) -> tuple[str, int]:
    method, sep, count = text.partition("=")
    if not sep or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"expected METHOD=N (e.g. rise=8), got '{text}'")
    return method, int(count)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from akd.evaluate.methods import METHODS

    parser.add_argument("--model", action="append", default=[], metavar="MODEL",
                        help="surrogate for the 'akd' method (.onnx, .engine, .safetensors; repeat to compare "
                             "e.g. fp32 and int8; default: the shipped surrogate)")
    _add_teacher_arguments(parser)
    parser.add_argument("--data", required=True, metavar="DIR", help="images to explain (any layout akd-train reads)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated from {', '.join(METHODS)}")
    parser.add_argument("--limit", type=_positive_int, help="evaluate a seeded random subset of N images")
    parser.add_argument("--subset", type=_subset, action="append", default=[], metavar="METHOD=N",
                        help="run a slow method on the first N images only, e.g. --subset rise=8")
    parser.add_argument("--masks", metavar="DIR", help="object masks named like the images: adds the pointing games")
    parser.add_argument("--step", type=_positive_int, help="pixels moved per point (default: width * 8 = 1792)")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="perturbed images per forward pass")
    parser.add_argument("--threads", type=_positive_int, default=1, help="CPU threads for every method (pinned)")
    parser.add_argument("--rise-masks", type=_positive_int, default=4000)
    parser.add_argument("--lime-samples", type=_positive_int, default=1000)
    parser.add_argument("--gradcam-layer", metavar="NAME", action="append", default=[],
                        help="target layer; repeat to compare layers (default: end of the last conv stage)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", required=True, metavar="DIR", help="report folder (report.md/.json, *.png)")


def run_evaluate(args: argparse.Namespace) -> int:
    from akd.evaluate.report import EvalOptions, evaluate, markdown
    from akd.models.teachers import load_teacher
    from akd.runtime.engine import default_model

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    check_writable(args.out, "dir")
    options = EvalOptions(models=args.model, data=args.data, out=args.out, methods=methods, limit=args.limit,
                          subsets=dict(args.subset), masks=args.masks, step=args.step, batch_size=args.batch_size,
                          threads=args.threads, rise_masks=args.rise_masks, lime_samples=args.lime_samples,
                          gradcam_layers=args.gradcam_layer, seed=args.seed)
    if "akd" in methods and not options.models:
        options.models = [default_model()]
    teacher = load_teacher(args.teacher, args.teacher_weights, _teacher_preprocessing(args),
                           args.teacher_skip_classes)
    report = evaluate(options, teacher, progress=not args.no_progress)
    print(markdown(report))
    print(f"akd-evaluate: wrote report.md, report.json, curves.png and overlays.png to {args.out}")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "train": ("distil a target classifier into an attentive surrogate", add_train_arguments, run_train),
    "export": ("write the fused ONNX graph (fp32/fp16/int8) and TensorRT engines", add_export_arguments, run_export),
    "calibrate": ("quantize an fp32 akd graph to INT8 Q/DQ with a drift gate", add_calibrate_arguments,
                  run_calibrate),
    "explain": ("saliency overlays for images, folders and videos", add_explain_arguments, run_explain),
    "profile": ("fps, latency percentiles and per-stage times of a model", add_profile_arguments, run_profile),
    "evaluate": ("insertion/deletion, intensity and speed of akd against Grad-CAM, RISE and LIME",
                 add_evaluate_arguments, run_evaluate),
}


def _run(prog: str, command: str, argv: list[str] | None) -> int:
    description, add_arguments, handler = COMMANDS[command]
    parser = OneLineParser(prog=prog, description=description)
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help or a usage error: report the code instead of leaving the interpreter
        return int(exit_.code or 0)
    args.prog, args.argv = prog, list(sys.argv[1:] if argv is None else argv)
    args.given = {name for name, value in vars(args).items() if value != parser.get_default(name)}
    return _guarded(prog, handler, args)


def _guarded(prog: str, handler, args) -> int:
    separate_python_stderr()  # before logging holds sys.stderr: decoder messages get their file's name
    logging.basicConfig(level=logging.WARNING, format=f"{prog}: warning: %(message)s")
    try:
        return handler(args)
    except AkdError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        names = ", ".join(COMMANDS)
        if argv and argv[0] in ("-h", "--help"):
            print(f"usage: akd <command> [options]\ncommands: {names}\nrun 'akd <command> --help' for its options")
            return 0
        print(f"akd: error: expected a command ({names})", file=sys.stderr)
        return 2
    return _run(f"akd {argv[0]}", argv[0], argv[1:])


def train_main(argv: list[str] | None = None) -> int:
    return _run("akd-train", "train", argv)


def export_main(argv: list[str] | None = None) -> int:
    return _run("akd-export", "export", argv)


def calibrate_main(argv: list[str] | None = None) -> int:
    return _run("akd-calibrate", "calibrate", argv)


def explain_main(argv: list[str] | None = None) -> int:
    return _run("akd-explain", "explain", argv)


def profile_main(argv: list[str] | None = None) -> int:
    return _run("akd-profile", "profile", argv)


def evaluate_main(argv: list[str] | None = None) -> int:
    return _run("akd-evaluate", "evaluate", argv)


if __name__ == "__main__":
    sys.exit(main())
