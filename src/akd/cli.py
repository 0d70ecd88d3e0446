"""Command line: ``akd <command>`` and the ``akd-<command>`` shortcuts share one parser per command.

Every user error ends as one line on stderr and exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable

from akd.util import AkdError


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


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, metavar="NAME_OR_PATH",
                        help="efficientnet_lite0 (built-in), torchvision:NAME, timm:NAME, a TorchScript file or an "
                             "ONNX file (black box)")
    parser.add_argument("--teacher-weights", metavar="FILE", help="state dict (.safetensors or .pth) for NAME targets")
    parser.add_argument("--mean", type=_floats, help="R,G,B mean in [0,1] for file targets (default: ImageNet)")
    parser.add_argument("--std", type=_floats, help="R,G,B std in [0,1] for file targets (default: ImageNet)")
    parser.add_argument("--teacher-skip-classes", type=int, default=0, metavar="K",
                        help="drop the first K outputs of an ONNX target (e.g. 1 for a 'background' class)")
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
    from akd.models.teachers import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
    from akd.train.recipes import apply_overrides, load_recipe
    from akd.train.trainer import TrainOptions, train

    if not args.out.endswith(".safetensors"):
        raise AkdError(f"--out {args.out}: the surrogate checkpoint must be a .safetensors file")
    recipe = apply_overrides(load_recipe(args.recipe), args.set, args.epochs, args.batch_size)
    preprocessing = Preprocessing(mean=args.mean or IMAGENET_MEAN, std=args.std or IMAGENET_STD)
    options = TrainOptions(
        teacher=args.teacher, data=args.data, out=args.out, recipe=recipe, val=args.val, student=args.student,
        stages=[s.strip() for s in args.stages.split(",") if s.strip()], teacher_weights=args.teacher_weights,
        teacher_preprocessing=preprocessing, teacher_skip_classes=args.teacher_skip_classes,
        image_size=args.image_size, resume=args.resume, seed=args.seed, workers=args.workers, device=args.device,
        aircraft_level=args.aircraft_level, video_stride=args.video_stride, progress=not args.no_progress,
        command=shlex.join(["akd-train", *sys.argv[1:]]),
    )
    metrics = train(options)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float) and k != "seconds")
    print(f"akd-train: wrote {args.out} ({shown})")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "train": ("distil a target classifier into an attentive surrogate", add_train_arguments, run_train),
}


def _run(prog: str, command: str, argv: list[str] | None) -> int:
    description, add_arguments, handler = COMMANDS[command]
    parser = OneLineParser(prog=prog, description=description)
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help or a usage error: report the code instead of leaving the interpreter
        return int(exit_.code or 0)
    return _guarded(prog, handler, args)


def _guarded(prog: str, handler, args) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
