"""Triton backend: ``SaliencyEngine.load("grpc://host:8001/akd_surrogate")`` sends batches to a Triton server
serving a repository made by ``akd-export --format triton``. The surrogate config travels in the model config's
``akd_config`` parameter, so preprocessing here matches the served graph. Many akd-explain processes (``--shard
K/N``) can share one server; its dynamic batcher merges their requests."""

from __future__ import annotations

import json
import time
from urllib.parse import urlparse

import numpy as np

from akd.runtime.backends import ModelInfo
from akd.util import AkdError

OUTPUTS = ("saliency", "logits", "class_id", "score")


def parse_url(url: str) -> tuple[str, str]:
    """grpc://host:port/model -> ("host:port", "model")."""
    parsed = urlparse(url)
    model = parsed.path.strip("/")
    if parsed.scheme != "grpc" or not parsed.netloc or not model or "/" in model:
        raise AkdError(f"{url}: a Triton model is grpc://HOST:PORT/MODEL")
    return parsed.netloc, model


class TritonRunner:
    def __init__(self, url: str, client=None):
        address, self.model = parse_url(url)
        if client is None:
            try:
                import tritonclient.grpc as grpcclient
            except ImportError:
                raise AkdError("the Triton backend needs tritonclient: pip install 'akd[serve]'") from None
            client = grpcclient.InferenceServerClient(address)
        self.client = client
        try:
            config = client.get_model_config(self.model, as_json=True)["config"]
        except Exception as exc:  # noqa: BLE001 - tritonclient raises InferenceServerException and gRPC errors
            raise AkdError(f"{url}: Triton did not return the model's config ({str(exc).splitlines()[0]})") from None
        parameters = config.get("parameters", {})
        if "akd_config" not in parameters:
            raise AkdError(f"{url}: not an akd model (no akd_config parameter); export it with akd-export "
                           "--format triton")
        self.info = ModelInfo(json.loads(parameters["akd_config"]["string_value"]),
                              parameters["akd_input_format"]["string_value"], int(config["max_batch_size"]),
                              parameters.get("akd_precision", {}).get("string_value", "unknown"), url,
                              {"platform": config.get("platform") or config.get("backend")})
        self.url = url
        self.last_stage_ms: dict[str, float] = {}

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import tritonclient.grpc as grpcclient

        started = time.perf_counter()
        images = grpcclient.InferInput("images", list(batch.shape), "UINT8" if batch.dtype == np.uint8 else "FP32")
        images.set_data_from_numpy(np.ascontiguousarray(batch))
        try:
            result = self.client.infer(self.model, [images], client_timeout=120.0,
                                       outputs=[grpcclient.InferRequestedOutput(name) for name in OUTPUTS])
        except Exception as exc:  # noqa: BLE001 - a stopped server, a timeout: one line, not a gRPC traceback
            raise AkdError(f"{self.url}: Triton request failed ({str(exc).splitlines()[0]})") from None
        outputs = {name: result.as_numpy(name) for name in OUTPUTS}
        outputs["class_id"] = outputs["class_id"].reshape(-1)
        outputs["score"] = outputs["score"].reshape(-1)
        self.last_stage_ms = {"compute": (time.perf_counter() - started) * 1e3}
        return outputs

    def close(self) -> None:
        self.client.close()
