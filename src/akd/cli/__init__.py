"""Command line: ``akd <command>`` and the ``akd-<command>`` shortcuts, a thin layer over ``akd.api`` and the
runtime (arguments: ``akd.cli.arguments``).

Every user error ends as one line on stderr and exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable

from akd.cli.arguments import (
    OneLineParser,
    add_calibrate_arguments,
    add_evaluate_arguments,
    add_explain_arguments,
    add_export_arguments,
    add_profile_arguments,
    add_serve_arguments,
    add_train_arguments,
)
from akd.util import AkdError, check_writable, separate_python_stderr


def _teacher_preprocessing(args: argparse.Namespace):
    from akd.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

    return Preprocessing(mean=args.mean or IMAGENET_MEAN, std=args.std or IMAGENET_STD)


def run_train(args: argparse.Namespace) -> int:
    from akd import api

    result = api.distill(
        args.teacher, args.data, args.out, student=args.student, student_weights=args.student_weights,
        preprocessing=_teacher_preprocessing(args),
        recipe=args.recipe, overrides=tuple(args.set), epochs=args.epochs, batch_size=args.batch_size,
        stages=tuple(s.strip() for s in args.stages.split(",") if s.strip()), val=args.val,
        weights=args.teacher_weights, skip_classes=args.teacher_skip_classes,
        command=shlex.join([*args.prog.split(), *args.argv]),  # as typed: akd-train ... or akd train ...
        image_size=args.image_size, resume=args.resume, seed=args.seed, workers=args.workers, device=args.device,
        aircraft_level=args.aircraft_level, video_stride=args.video_stride, progress=not args.no_progress)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if isinstance(v, float) and k != "seconds")
    print(f"akd-train: wrote {args.out} ({shown})")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from akd import api
    from akd.deploy.exporter import ExportOptions, summarize
    from akd.deploy.formats import ignored_options
    from akd.deploy.serving import TritonOptions

    chosen = ExportOptions("", format=args.format, precision=args.precision, verify=not args.no_verify,
                           triton=TritonOptions(platform=args.triton_platform))
    ignored = ignored_options(args.given, chosen)
    if ignored:
        flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
        raise AkdError(f"{flags}: not used by --format {args.format} --precision {args.precision}"
                       f"{' --no-verify' if args.no_verify else ''}; drop it or pick the format that takes it")
    if args.teacher and args.checkpoint:
        raise AkdError("give a surrogate checkpoint or --target, not both")
    target = {"target": args.teacher, "target_weights": args.teacher_weights, "opaque": args.opaque,
              "preprocessing": _teacher_preprocessing(args), "skip_classes": args.teacher_skip_classes}
    written = api.export(
        args.checkpoint, args.out, **(target if args.teacher else {}),
        precision=args.precision, format=args.format, batch=tuple(args.batch),
        engine={"workspace_mb": args.workspace, "timing_cache": args.timing_cache, "dla_core": args.dla_core,
                "version_compatible": args.version_compatible,
                "hardware_compatibility": args.hardware_compatibility},
        triton={"name": args.triton_name, "platform": args.triton_platform,
                "queue_delay_us": args.triton_queue_delay_us, "instances": args.triton_instances,
                "kind": f"KIND_{args.triton_kind.upper()}", "ort_tensorrt": args.triton_ort_tensorrt},
        input_format=args.input_format, include_target=args.include_target, layercam=not args.no_layercam,
        verify=not args.no_verify,
        parity_data=args.parity_data, calib_data=args.calib_data, num_images=args.num_images,
        calibration_method=args.calibration_method, int8_target=args.int8_target, max_drift=args.max_drift,
        cache_dir=args.cache_dir, force=args.force, on_report=lambda checks: _print_checks(checks, args.prog))
    print(f"akd-export: wrote {summarize(written)}")
    return 0


def _print_checks(checks: dict, prog: str) -> None:
    """One line per precision checked: the parity numbers (fp32/fp16) or the int8 drift report."""
    for precision, metrics in checks.items():
        if precision == "white-box target":
            print(f"{prog}: ONNX target converted to torch by {metrics['converter']} (softmax cut: "
                  f"{metrics['softmax_cut']}, {metrics['fake_quantized']} fake-quantized activations; max logit "
                  f"difference to onnxruntime {metrics['max_difference']:.3g}, onnxruntime's own spread "
                  f"{metrics['onnxruntime_spread']:.3g})", file=sys.stderr)
            continue
        shown = metrics.get("drift", metrics) if precision == "int8" else metrics
        if isinstance(shown, dict):
            values = ", ".join(f"{k} {v:.6f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
            print(f"{prog}: {precision} check: {values}", file=sys.stderr)


def run_calibrate(args: argparse.Namespace) -> int:
    from akd import api

    info = api.calibrate(args.model, args.out, data=args.data, flavour=args.int8_target or "cpu",
                         method=args.calibration_method, num_images=args.num_images, max_drift=args.max_drift,
                         cache_dir=args.cache_dir, force=args.force)
    _print_checks({"int8": info}, "akd-calibrate")
    cache = "reused" if info["cache_hit"] else "written"
    source = ("the shipped ranges" if info["ranges"] == "shipped" else
              f"{info['images']} images, calibration cache {cache}: {info['cache']}")
    print(f"akd-calibrate: wrote {args.out} ({info['flavour']} flavour, {info['method']}, {source})")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise AkdError("akd-serve needs Starlette and uvicorn: pip install 'akd[live]'") from None
    from akd.runtime.live import LivePipeline, create_app

    if not 0.0 <= args.opacity <= 1.0:
        raise AkdError(f"--opacity must be in [0, 1], not {args.opacity}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"{args.prog}: warning: binding {args.host}: anyone who can reach port {args.port} sees the stream",
              file=sys.stderr)
    from akd.runtime.video import open_source

    open_source(args.source).frames.close()  # a source that cannot open fails here, in one line, before the model
    with _open_engine(args) as engine:
        pipeline = LivePipeline(engine, args.source, args.opacity).start()
        print(f"{args.prog}: http://{args.host}:{args.port}/ ({args.source})", file=sys.stderr)
        try:
            uvicorn.run(create_app(pipeline, args.max_viewers), host=args.host, port=args.port, log_level="warning")
        finally:
            pipeline.stop()
    return 0


def _open_engine(args: argparse.Namespace):
    from akd.runtime import SaliencyEngine

    engine = SaliencyEngine.load(args.model, backend=args.backend, device=args.device, fit=args.fit)
    print(f"{args.prog}: {engine.info.source} ({engine.info.precision}) on {engine.info.execution_path}",
          file=sys.stderr)
    return engine


def run_explain(args: argparse.Namespace) -> int:
    from akd.runtime.explain import explain_inputs

    check_writable(args.out, "dir")
    with _open_engine(args) as engine:
        summary = explain_inputs(engine, args.inputs, args.out, args.maps, args.smoothing, args.batch_size,
                                 progress=not args.no_progress, shard=args.shard)
    outputs = {path for path in summary.written if path.exists()}
    print(f"akd-explain: {summary.line()}; wrote {len(outputs)} outputs to {args.out}")
    return 0


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


def run_evaluate(args: argparse.Namespace) -> int:
    from akd import api
    from akd.evaluation.report import markdown

    report = api.evaluate(
        args.model, args.data, args.out, target=args.teacher, preprocessing=_teacher_preprocessing(args),
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), weights=args.teacher_weights,
        skip_classes=args.teacher_skip_classes, progress=not args.no_progress, limit=args.limit,
        subsets=dict(args.subset), masks=args.masks, step=args.step, batch_size=args.batch_size,
        threads=args.threads, rise_masks=args.rise_masks, lime_samples=args.lime_samples,
        gradcam_layers=args.gradcam_layer, saved_maps=dict(args.maps), seed=args.seed)
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
    "serve": ("live saliency of a video, camera, stream or image folder in the browser", add_serve_arguments,
              run_serve),
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


def _entry(command: str) -> Callable[[list[str] | None], int]:
    """The ``akd-<command>`` console script: the same parser and handler as ``akd <command>``."""
    def entry(argv: list[str] | None = None) -> int:
        return _run(f"akd-{command}", command, argv)
    entry.__name__ = f"{command}_main"
    return entry


train_main, export_main, calibrate_main, explain_main, profile_main, evaluate_main, serve_main = (
    _entry(command) for command in ("train", "export", "calibrate", "explain", "profile", "evaluate", "serve"))
