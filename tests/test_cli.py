import subprocess
import sys

import pytest

from akd.cli import main, train_main

from conftest import SIZE


def _check_one_line_error(capsys, code, fragment):
    assert code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert fragment in errors[0], errors[0]


def _base(target, data, out):
    return ["--teacher", str(target), "--data", str(data), "--out", str(out), "--image-size", str(SIZE),
            "--student", "resnet18_cbam", "--epochs", "1", "--no-progress"]


def test_missing_data_folder(torchscript_target, tmp_path, capsys):
    code = train_main(_base(torchscript_target, tmp_path / "nope", tmp_path / "o.safetensors"))
    _check_one_line_error(capsys, code, "data folder not found")


def test_empty_data_folder(torchscript_target, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = train_main(_base(torchscript_target, tmp_path / "empty", tmp_path / "o.safetensors"))
    _check_one_line_error(capsys, code, "no readable images")


def test_class_count_mismatch(torchscript_target, tmp_path, capsys):
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "data" / name / "x.png")
    code = train_main(_base(torchscript_target, tmp_path / "data", tmp_path / "o.safetensors"))
    _check_one_line_error(capsys, code, "2 classes (imagefolder) but the target predicts 4")


@pytest.mark.parametrize("extra,fragment", [
    (["--epochs", "zero"], "expected a positive integer"),
    (["--stages", "student,teacher"], "unknown stage"),
    (["--student", "vgg_cbam"], "unknown student"),
    (["--recipe", "nope.yaml"], "recipe not found"),
    (["--set", "no_such_key=1"], "unknown recipe key"),
    (["--mean", "0.5,0.5"], "three values"),
])
def test_bad_arguments(torchscript_target, imagefolder, tmp_path, capsys, extra, fragment):
    code = train_main(_base(torchscript_target, imagefolder, tmp_path / "o.safetensors") + extra)
    _check_one_line_error(capsys, code, fragment)


def test_missing_required_argument_and_bad_output(torchscript_target, imagefolder, tmp_path, capsys):
    code = train_main(["--data", str(imagefolder), "--out", "x.safetensors"])
    _check_one_line_error(capsys, code, "the following arguments are required: --target/--teacher")
    code = train_main(_base(torchscript_target, imagefolder, tmp_path / "o.pt"))
    _check_one_line_error(capsys, code, "must be a .safetensors file")


def test_unknown_target_and_resume_mismatch(torchscript_target, imagefolder, tmp_path, capsys):
    code = train_main(_base("no_such_model_xyz", imagefolder, tmp_path / "o.safetensors"))
    _check_one_line_error(capsys, code, "unknown target")
    out = tmp_path / "r.safetensors"
    assert train_main(_base(torchscript_target, imagefolder, out)) == 0
    capsys.readouterr()
    code = train_main(_base(torchscript_target, imagefolder, out) + ["--stages", "joint", "--resume"])
    _check_one_line_error(capsys, code, "cannot resume")
    assert train_main(_base(torchscript_target, imagefolder, out) + ["--resume"]) == 0
    assert "nothing to do" in capsys.readouterr().err


def test_akd_train_and_akd_train_subcommand_are_the_same(capsys):
    assert main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    assert main(["bogus"]) == 2
    result = subprocess.run([sys.executable, "-m", "akd.cli", "train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--teacher" in result.stdout and "--stages" in result.stdout


def test_same_as_teacher_student_with_a_validation_folder(flat_folder, tmp_path, capsys):
    """--student same-as-teacher starts from the target's own weights (a timm CNN here); --val is evaluated."""
    import json

    from akd.models.surrogate import read_checkpoint

    out = tmp_path / "same.safetensors"
    code = train_main(["--teacher", "timm:resnet10t", "--student", "same-as-teacher", "--data", str(flat_folder),
                       "--val", str(flat_folder), "--image-size", str(SIZE), "--stages", "student", "--epochs", "1",
                       "--batch-size", "4", "--no-progress", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "validation: val_agreement" in captured.err and "val_images 8" in captured.err
    config = json.loads(read_checkpoint(out)[1]["config"])
    assert config["student"] == "timm:resnet10t" and config["student_init"] == "target"
    assert config["training"]["val"] == str(flat_folder)
    assert config["training"]["command"].startswith("akd-train --teacher timm:resnet10t")  # as typed


def test_every_package_ships_with_the_license():
    """setuptools' find_packages (what pyproject uses) sees every akd package - akd.models and akd.train were
    namespace packages it skipped - and the wheel carries LICENSE and the shipped weights' origin note."""
    from pathlib import Path

    from setuptools import find_packages

    from akd.train.recipes import tomllib  # tomli before Python 3.11

    root = Path(__file__).resolve().parents[1]
    packages = set(find_packages(str(root / "src")))
    folders = {".".join(p.relative_to(root / "src").parts) for p in (root / "src" / "akd").rglob("*.py")
               if p.parent.name != "__pycache__" for p in [p.parent]}
    assert folders <= packages, folders - packages
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0" and project["project"]["license-files"] == ["LICENSE"]
    assert "Apache License" in (root / "LICENSE").read_text()[:200]
    assert "assets/README.md" in project["tool"]["setuptools"]["package-data"]["akd"]


@pytest.mark.parametrize("extra, refused", [
    (["--dla-core", "0"], "--dla-core: not used by --format onnx --precision fp32"),
    (["--calib-data", "x", "--int8-target", "cpu"], "--calib-data, --int8-target: not used by --format onnx"),
    (["--format", "triton", "--triton-platform", "python", "--triton-ort-tensorrt", "FP16"], "--triton-ort-tensorrt"),
    (["--no-verify", "--parity-data", "x"], "--parity-data: not used by --format onnx --precision fp32 --no-verify"),
    (["--format", "deepstream", "--workspace", "512"], "--workspace: not used by --format deepstream"),
])
def test_export_refuses_options_its_format_ignores(tiny_checkpoint, tmp_path, capsys, extra, refused):
    from akd.cli import export_main

    code = export_main([str(tiny_checkpoint), "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and refused in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_export_options_a_format_takes_pass_the_check(tiny_checkpoint, tmp_path, capsys):
    from akd.cli import export_main

    assert export_main([str(tiny_checkpoint), "--out", str(tmp_path / "m.onnx"), "--format", "deepstream",
                        "--batch", "1,4,8", "--no-verify"]) == 0
    assert (tmp_path / "m.nvinfer.txt").read_text().count("batch-size=4") == 1
    code = export_main([str(tiny_checkpoint), "--out", str(tmp_path / "e"), "--format", "engine", "--dla-core", "0"])
    assert code == 2 and "not used by" not in capsys.readouterr().err  # refused later, for lacking TensorRT


def test_cli_choices_come_from_the_tables():
    """--format, --precision, --backend, ... list exactly what the tables and registries hold, so a new entry
    needs no second edit in the CLI."""
    import argparse

    from akd.cli.arguments import add_engine_arguments, add_export_arguments
    from akd.deploy.calibration import FLAVOURS, METHODS
    from akd.deploy.formats import FORMATS, PRECISIONS
    from akd.runtime.backends import BACKENDS
    from akd.runtime.geometry import FITS

    def choices(add) -> dict[str, list]:
        parser = argparse.ArgumentParser()
        add(parser)
        return {action.dest: list(action.choices) for action in parser._actions if action.choices}

    export = choices(add_export_arguments)
    assert export["format"] == list(FORMATS) and export["precision"] == list(PRECISIONS)
    assert export["int8_target"] == list(FLAVOURS) and export["calibration_method"] == list(METHODS)
    engine = choices(add_engine_arguments)
    assert engine["backend"] == list(BACKENDS) and engine["fit"] == list(FITS)


def test_serve_refuses_bad_input_in_one_line(tmp_path, capsys):
    from akd.cli import serve_main

    assert serve_main([str(tmp_path / "missing.mp4")]) == 2
    err = capsys.readouterr().err
    assert "missing.mp4: no such file, folder, camera or stream" in err and len(err.strip().splitlines()) == 1
    assert serve_main(["examples/bottles.mp4", "--opacity", "1.5"]) == 2
    assert "--opacity must be in [0, 1]" in capsys.readouterr().err
