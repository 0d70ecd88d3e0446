"""Pretrained students from weight packages, a new head fitted to the target, and target queries counted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from akd.data.preprocessing import Preprocessing
from akd.models.pretrained import PRETRAINED_STUDENTS, pretrained_student
from akd.models.students import build_student
from akd.models.surrogate import read_checkpoint
from akd.models.teachers import load_teacher
from akd.train.head import fit_head
from akd.train.recipes import apply_overrides, load_recipe
from akd.train.trainer import TrainOptions, train
from akd.util import AkdError

from conftest import NUM_CLASSES, SIZE


@pytest.mark.parametrize("name", list(PRETRAINED_STUDENTS))
def test_packaged_imagenet_weights_load_into_timm(name):
    student = pretrained_student(f"pretrained:{name}", None, 1000)
    assert not student.new_head and student.origin["pretrained"] == name and len(student.origin["sha256"]) == 64
    built = build_student(student.arch, 1000, student.state)  # the surrogate's student, CBAM near-identity
    assert all(torch.equal(built.network.state_dict()[key.replace("blocks.2.", "blocks.2.stage.")
                                                       .replace("blocks.4.", "blocks.4.stage.")
                                                       .replace("blocks.6.", "blocks.6.stage.")], value)
               for key, value in student.state.items())


def test_lite0_student_is_the_builtin_targets_network():
    teacher = load_teacher("efficientnet_lite0")
    student = pretrained_student("pretrained:efficientnet_lite0", None, 1000)
    target = teacher.module.state_dict()
    assert student.state.keys() == target.keys() and all(torch.equal(student.state[k], target[k]) for k in target)
    assert student.origin["sha256"] == teacher.identity["sha256"]


def test_student_weights_file_and_bad_combinations(tmp_path):
    import timm
    from safetensors.torch import save_file

    network = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    path = tmp_path / "r10.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path))
    student = pretrained_student("timm:resnet10t", str(path), 3)
    assert not student.new_head and torch.equal(student.state["fc.weight"], network.fc.weight)
    assert pretrained_student("timm:resnet10t", str(path), 5).new_head
    with pytest.raises(AkdError, match="does not fit timm model 'resnet18'"):
        pretrained_student("timm:resnet18", str(path), 3)
    with pytest.raises(AkdError, match="unknown pretrained student 'lite9'"):
        pretrained_student("pretrained:lite9", None, 3)
    with pytest.raises(AkdError, match="--student-weights needs --student timm:NAME"):
        pretrained_student("resnet18_cbam", str(path), 3)


def test_fitted_head_agrees_with_the_target_where_a_random_one_does_not(tiny_net, imagefolder):
    from akd.data.sources import discover
    from akd.models.teachers import teacher_from_module

    teacher = teacher_from_module(tiny_net, Preprocessing(input_size=SIZE))
    student_init = pretrained_student("pretrained:efficientnet_lite0", None, NUM_CLASSES)
    assert student_init.new_head
    student = build_student(student_init.arch, NUM_CLASSES, student_init.state).eval()
    samples = discover(str(imagefolder), "train").samples
    images = torch.stack([img for img in _images(samples, teacher)])
    with torch.no_grad():
        wanted = teacher.forward(images).argmax(1)
        before = (student(images).logits.argmax(1) == wanted).float().mean()
        used = fit_head(student, teacher, samples, torch.device("cpu"))
        after = (student(images).logits.argmax(1) == wanted).float().mean()
    assert used == len(samples) == 16 and teacher.queries == 16
    assert after == 1.0 and before < 1.0


def _images(samples, teacher):
    from akd.data.preprocessing import SampleDataset, transforms_for

    dataset = SampleDataset(samples, transforms_for(teacher.preprocessing, False))
    return [dataset[i][0] for i in range(len(dataset))]


def test_distillation_from_a_pretrained_student_counts_its_queries(tiny_net, imagefolder, tmp_path):
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(tiny_net, torch.zeros(1, 3, SIZE, SIZE), str(path), input_names=["images"], dynamo=False,
                      dynamic_axes={"images": {0: "batch"}})
    recipe = apply_overrides(load_recipe("imagenet-lite0"), [], epochs=1, batch_size=8)
    out = tmp_path / "s.safetensors"
    metrics = train(TrainOptions(teacher=str(path), data=str(imagefolder), out=str(out), recipe=recipe,
                                 student="pretrained:efficientnet_lite0", stages=["student"],
                                 teacher_preprocessing=Preprocessing(input_size=SIZE), progress=False))
    config = json.loads(read_checkpoint(out)[1]["config"])
    assert config["student"] == "timm:tf_efficientnet_lite0"
    assert config["student_init"]["pretrained"] == "efficientnet_lite0" and config["student_init"]["new_head"]
    assert metrics["target_queries"] == 16 + 16  # the head's fit, then one epoch of 16 images


def test_callable_targets_with_probabilities_or_top_k_answers(tiny_net):
    from akd.models.teachers import teacher_from_callable, top_k_logits

    def probabilities(images):
        with torch.no_grad():
            return torch.softmax(tiny_net(torch.from_numpy(images)), dim=1).numpy()

    teacher = teacher_from_callable(probabilities, Preprocessing(input_size=SIZE))
    images = torch.randn(5, 3, SIZE, SIZE)
    assert teacher.num_classes == NUM_CLASSES and not teacher.differentiable
    torch.testing.assert_close(torch.softmax(teacher(images), 1), torch.softmax(tiny_net(images), 1).detach())

    def top2(images):
        order = (-probabilities(images)).argsort(axis=1)[:, :2]
        return order, np.take_along_axis(probabilities(images), order, axis=1)

    answered = teacher_from_callable(top2, Preprocessing(input_size=SIZE), num_classes=NUM_CLASSES)
    probs = torch.softmax(answered(images), 1)
    full = torch.softmax(tiny_net(images), 1).detach()
    assert probs.argmax(1).tolist() == full.argmax(1).tolist()
    top = full.topk(2, dim=1)
    torch.testing.assert_close(probs.gather(1, top.indices), top.values, atol=1e-6, rtol=1e-5)
    rest = (1 - top.values.sum(1)) / (NUM_CLASSES - 2)  # what is left, spread over the classes not named
    others = probs.scatter(1, top.indices, 0).sum(1) / (NUM_CLASSES - 2)
    torch.testing.assert_close(others, rest, atol=1e-6, rtol=1e-5)
    with pytest.raises(AkdError, match="top-k answer needs"):
        top_k_logits(np.array([[0, 9]]), np.array([[0.5, 0.2]]), NUM_CLASSES)


def test_distil_a_function_behind_an_api(tiny_net, imagefolder, tmp_path):
    from akd import api

    def top1(images):  # an API that names one class and its score
        with torch.no_grad():
            best = torch.softmax(tiny_net(torch.from_numpy(images)), dim=1).max(dim=1)
        return best.indices.numpy()[:, None], best.values.numpy()[:, None]

    result = api.distill(top1, str(imagefolder), str(tmp_path / "api.safetensors"), student="resnet18_cbam",
                         recipe="paper-imagenet", epochs=1, batch_size=8, stages=("student",), num_classes=NUM_CLASSES,
                         preprocessing=Preprocessing(input_size=SIZE), progress=False)
    assert result.surrogate.config["target"]["kind"] == "callable"
    assert result.metrics["target_queries"] == 16
