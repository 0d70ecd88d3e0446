"""Training recipes: YAML (or TOML) files shipped in ``akd/train/recipes`` or given by path; flags override."""

from __future__ import annotations

import copy
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from akd.models.explainer import EXPLANATION_HEADS
from akd.models.surrogate import CAM_SCORES
from akd.util import AkdError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STAGES = ("student", "explainer", "joint")
REQUIRED = ("alpha", "temperature", "sparsity", "rank_prior", "rank_prior_power", "destruction",
            "substrate", "momentum", "nesterov", "weight_decay",
            "batch_size", "freeze_bn", "pretrained_lr_scale", "stages")
DEFAULT_RECIPE = "paper-imagenet"
# optional keys: the paper's objective unless a recipe asks for more (see akd.train.losses)
DEFAULTS: dict[str, Any] = {"explanation": 1.0, "insertion": 0.0, "deletion": 0.0, "topk_areas": [0.05, 0.1, 0.2, 0.4],
                            "topk_samples": 2, "topk_temperature": 0.05, "explainer_head": "decoder",
                            "explainer_cam": False,
                            "cam_score": "logit", "explainer_params": "all", "layercam_weight": 0.0,
                            "layercam8_weight": 0.0, "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "mix_prob": 1.0}


def builtin_recipes() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("akd.train").joinpath("recipes").iterdir()
                  if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str | None) -> dict[str, Any]:
    """A built-in recipe by name, or a .yaml/.yml/.toml file; validated so typos fail before training."""
    name_or_path = name_or_path or DEFAULT_RECIPE
    if name_or_path in builtin_recipes():
        text = resources.files("akd.train").joinpath(f"recipes/{name_or_path}.yaml").read_text()
        recipe = yaml.safe_load(text)
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise AkdError(f"{name_or_path}: recipe not found (built-in recipes: {', '.join(builtin_recipes())})")
        try:
            recipe = tomllib.loads(path.read_text()) if path.suffix == ".toml" else yaml.safe_load(path.read_text())
        except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
            raise AkdError(f"{path}: malformed recipe ({exc})") from None
    return validate_recipe(recipe, str(name_or_path))


def validate_recipe(recipe: Any, source: str) -> dict[str, Any]:
    if not isinstance(recipe, dict):
        raise AkdError(f"{source}: a recipe must be a mapping")
    missing = [key for key in REQUIRED if key not in recipe]
    if missing:
        raise AkdError(f"{source}: recipe misses {', '.join(missing)}")
    recipe = {**DEFAULTS, **recipe}
    areas = recipe["topk_areas"]
    if not (isinstance(areas, list) and areas and all(isinstance(a, (int, float)) and 0 < a < 1 for a in areas)):
        raise AkdError(f"{source}: topk_areas must be a non-empty list of fractions between 0 and 1")
    if not (isinstance(recipe["topk_samples"], int) and 1 <= recipe["topk_samples"] <= len(areas)):
        raise AkdError(f"{source}: topk_samples must be an integer from 1 to the number of topk_areas")
    if not recipe["topk_temperature"] > 0:
        raise AkdError(f"{source}: topk_temperature must be positive")
    if recipe["cam_score"] not in CAM_SCORES:
        raise AkdError(f"{source}: cam_score must be one of {', '.join(CAM_SCORES)}, not '{recipe['cam_score']}'")
    if recipe["explainer_head"] not in EXPLANATION_HEADS:
        raise AkdError(f"{source}: explainer_head must be one of {', '.join(EXPLANATION_HEADS)}, "
                       f"not '{recipe['explainer_head']}'")
    reads_cam = recipe["explainer_cam"] or EXPLANATION_HEADS[recipe["explainer_head"]].reads_cam
    if recipe["explainer_params"] not in ("all", "calibration"):
        raise AkdError(f"{source}: explainer_params must be 'all' or 'calibration', not '{recipe['explainer_params']}'")
    if recipe["explainer_params"] == "calibration" and not reads_cam:
        raise AkdError(f"{source}: explainer_params 'calibration' trains the CAM gain and bias: it needs explainer_cam")
    for key in ("layercam_weight", "layercam8_weight", "mixup_alpha", "cutmix_alpha", "mix_prob"):
        if not (isinstance(recipe[key], (int, float)) and not isinstance(recipe[key], bool) and recipe[key] >= 0):
            raise AkdError(f"{source}: {key} must be a number >= 0")
    for key in ("layercam_weight", "layercam8_weight"):
        if recipe[key] and not reads_cam:
            raise AkdError(f"{source}: {key} adds LayerCAM to the class activation map: it needs explainer_cam")
    if recipe["mix_prob"] > 1:
        raise AkdError(f"{source}: mix_prob is a probability: at most 1")
    if recipe["substrate"] not in ("zeros", "blur"):
        raise AkdError(f"{source}: substrate must be 'zeros' or 'blur', not '{recipe['substrate']}'")
    if not recipe["rank_prior_power"] > 0:
        raise AkdError(f"{source}: rank_prior_power must be positive (the map's mean is 1 / (power + 1))")
    for stage, spec in recipe["stages"].items():
        if stage not in STAGES:
            raise AkdError(f"{source}: unknown stage '{stage}' (stages: {', '.join(STAGES)})")
        for key in ("epochs", "lr"):
            if key not in spec:
                raise AkdError(f"{source}: stage '{stage}' needs '{key}'")
    return recipe


def head_config(recipe: dict[str, Any]) -> dict[str, Any]:
    """The surrogate config's explanation-head entries for a recipe (the decoder's width only where it has one)."""
    head = recipe["explainer_head"]
    decoder = {"explainer_width": 128, "explainer_cam": bool(recipe["explainer_cam"])} if head == "decoder" else {}
    return {"explainer_head": head, **decoder}


def apply_overrides(recipe: dict[str, Any], overrides: list[str], epochs: int | None = None,
                    batch_size: int | None = None) -> dict[str, Any]:
    """``key=value`` overrides (dotted keys reach into stages, values parsed as YAML), then the flags."""
    recipe = copy.deepcopy(recipe)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise AkdError(f"--set expects KEY=VALUE, got '{item}'")
        target, parts = recipe, key.split(".")
        for part in parts[:-1]:
            if not isinstance(target.get(part), dict):
                raise AkdError(f"--set {key}: '{part}' is not a section of the recipe")
            target = target[part]
        if parts[-1] not in target:
            raise AkdError(f"--set {key}: unknown recipe key")
        target[parts[-1]] = yaml.safe_load(raw)
    if epochs is not None:
        for spec in recipe["stages"].values():
            spec["epochs"] = epochs
    if batch_size is not None:  # the flag sets every stage's batch
        recipe["batch_size"] = batch_size
        for spec in recipe["stages"].values():
            spec.pop("batch_size", None)
    return validate_recipe(recipe, "overridden recipe")


def learning_rate(stage_spec: dict[str, Any], epoch: int) -> float:
    """Step schedule: lr * gamma ** (number of milestones already passed)."""
    passed = sum(1 for milestone in stage_spec.get("milestones", []) if epoch >= milestone)
    return stage_spec["lr"] * stage_spec.get("gamma", 0.1) ** passed
