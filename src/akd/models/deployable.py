"""The surrogate behind the graph contract (``akd.contract``: outputs, dtypes, input formats and normalisation):
the module that export traces and the torch runtime backend runs, so both compute exactly the same thing."""

from __future__ import annotations

import torch
from torch import nn

from akd import contract
from akd.contract import INPUT_FORMATS
from akd.util import AkdError


class DeployableSurrogate(nn.Module):
    """Wraps the surrogate with the graph contract; ``target`` (a torch module) decides class_id/score if given."""

    def __init__(self, surrogate: nn.Module, input_format: str = "float-nchw", target: nn.Module | None = None):
        super().__init__()
        if input_format not in INPUT_FORMATS:
            raise AkdError(f"--input-format must be one of {', '.join(INPUT_FORMATS)}, not '{input_format}'")
        preprocessing = surrogate.config["preprocessing"]
        self.surrogate, self.target, self.input_format = surrogate, target, input_format
        scale, offset = contract.normalisation(preprocessing["mean"], preprocessing["std"])
        self.register_buffer("scale", torch.from_numpy(scale))
        self.register_buffer("offset", torch.from_numpy(offset))

    def forward(self, images: torch.Tensor):
        if self.input_format == "uint8-nhwc":
            images = images.permute(0, 3, 1, 2).float() * self.scale - self.offset
        saliency, logits = self.surrogate(images)
        deciding = self.target(images) if self.target is not None else logits
        score, class_id = torch.softmax(deciding.float(), dim=1).max(dim=1)
        return saliency.float(), logits.float(), class_id.to(torch.int32), score
