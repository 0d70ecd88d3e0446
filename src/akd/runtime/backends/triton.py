"""Triton backend: ``SaliencyEngine.load("grpc://host:8001/akd_surrogate")`` sends batches to a Triton server
serving a repository made by ``akd-export --format triton``. The surrogate config travels in the model config's
``akd_config`` parameter, so preprocessing here matches the served graph. Many akd-explain processes (``--shard
K/N``) can share one server; its dynamic batcher merges their requests."""

from __future__ import annotations

import time
from urllib.parse import urlparse

import numpy as np

from akd import contract
from akd.contract import OUTPUTS
from akd.runtime.backends import ModelInfo, Runner
from akd.util import AkdError


def parse_url(url: str) -> tuple[str, str]:
    """grpc://host:port/model -> ("host:port", "model")."""
    parsed = urlparse(url)
    model = parsed.path.strip("/")
    if parsed.scheme != "grpc" or not parsed.netloc or not model or "/" in model:
        raise AkdError(f"{url}: a Triton model is grpc://HOST:PORT/MODEL")
    return parsed.netloc, model


class TritonRunner(Runner):
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
        if contract.CONFIG_KEY not in parameters:
            raise AkdError(f"{url}: not an akd model (no akd_config parameter); export it with akd-export "
                           "--format triton")
        values = {key: value["string_value"] for key, value in parameters.items()}
        self.info = ModelInfo(contract.config_of(values), values[contract.INPUT_FORMAT_KEY],
                              int(config["max_batch_size"]), values.get(contract.PRECISION_KEY, "unknown"), url,
                              {"platform": config.get("platform") or config.get("backend")})
        self.url = url

    def _infer(self, batch: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        import tritonclient.grpc as grpcclient

        started = time.perf_counter()
        dtype = "UINT8" if batch.dtype == np.uint8 else "FP32"
        images = grpcclient.InferInput(contract.INPUT, list(batch.shape), dtype)
        images.set_data_from_numpy(np.ascontiguousarray(batch))
        try:
            result = self.client.infer(self.model, [images], client_timeout=120.0,
                                       outputs=[grpcclient.InferRequestedOutput(name) for name in OUTPUTS])
        except Exception as exc:  # noqa: BLE001 - a stopped server, a timeout: one line, not a gRPC traceback
            raise AkdError(f"{self.url}: Triton request failed ({str(exc).splitlines()[0]})") from None
        outputs = {name: result.as_numpy(name) for name in OUTPUTS}
        for scalar in (contract.CLASS_ID, contract.SCORE):  # Triton's reshape: [] per sample
            outputs[scalar] = outputs[scalar].reshape(-1)
        return outputs, {"compute": (time.perf_counter() - started) * 1e3}

    def _release(self) -> None:
        self.client.close()
