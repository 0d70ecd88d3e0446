"""Read akd's saliency tensor inside a DeepStream pipeline and draw it onto the frame.

    akd-export surrogate.safetensors --format deepstream --out ds/       # ds/surrogate.onnx + .nvinfer.txt
    python examples/deepstream_probe.py file:///path/video.mp4 ds/surrogate.nvinfer.txt

Pipeline: uridecodebin -> nvstreammux -> nvinfer (network-type=100, output-tensor-meta=1) -> nvvideoconvert
(RGBA) -> [probe] -> nvdsosd -> fakesink/display. The probe finds the NvDsInferTensorMeta that nvinfer attached
to each frame, copies the ``saliency`` output (1 x H x W float32 in [0, 1]) and blends it as a heat map into the
RGBA frame through pyds.get_nvds_buf_surface. Needs DeepStream 6.x/7.x with its Python bindings (pyds).
"""

from __future__ import annotations

import ctypes
import sys

import cv2
import numpy as np


def saliency_from_tensor_meta(pyds, tensor_meta) -> tuple[np.ndarray | None, int | None]:
    """The saliency map and class id from one NvDsInferTensorMeta (layer order follows output-blob-names)."""
    saliency, class_id = None, None
    for index in range(tensor_meta.num_output_layers):
        layer = pyds.get_nvds_LayerInfo(tensor_meta, index)
        dims = [layer.inferDims.d[i] for i in range(layer.inferDims.numDims)]
        if layer.layerName == "saliency":
            pointer = ctypes.cast(pyds.get_ptr(layer.buffer), ctypes.POINTER(ctypes.c_float))
            saliency = np.ctypeslib.as_array(pointer, shape=tuple(dims)).reshape(dims[-2], dims[-1]).copy()
        elif layer.layerName == "class_id":
            pointer = ctypes.cast(pyds.get_ptr(layer.buffer), ctypes.POINTER(ctypes.c_int32))
            class_id = int(pointer[0])
    return saliency, class_id


def blend(frame_rgba: np.ndarray, saliency: np.ndarray, alpha: float = 0.45) -> None:
    """In place: the map resized to the frame, JET colours, alpha-blended into the RGB channels."""
    height, width = frame_rgba.shape[:2]
    heat = cv2.applyColorMap((cv2.resize(saliency, (width, height)) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    rgb = frame_rgba[:, :, :3]
    rgb[:] = cv2.addWeighted(rgb, 1 - alpha, cv2.cvtColor(heat, cv2.COLOR_BGR2RGB), alpha, 0)


def overlay_probe(pad, info, pyds, Gst):
    buffer = info.get_buffer()
    batch_meta = pyds.gst_buffer_get_nvds_batch_meta(hash(buffer))
    frames = batch_meta.frame_meta_list
    while frames is not None:
        frame_meta = pyds.NvDsFrameMeta.cast(frames.data)
        user = frame_meta.frame_user_meta_list
        while user is not None:
            user_meta = pyds.NvDsUserMeta.cast(user.data)
            if user_meta.base_meta.meta_type == pyds.NvDsMetaType.NVDSINFER_TENSOR_OUTPUT_META:
                saliency, class_id = saliency_from_tensor_meta(pyds, pyds.NvDsInferTensorMeta.cast(
                    user_meta.user_meta_data))
                if saliency is not None:
                    frame = pyds.get_nvds_buf_surface(hash(buffer), frame_meta.batch_id)
                    blend(frame, saliency)
                    print(f"frame {frame_meta.frame_num}: class {class_id}, mean saliency {saliency.mean():.3f}")
            user = user.next
        frames = frames.next
    return Gst.PadProbeReturn.OK


def main(uri: str, config: str) -> None:
    import gi

    gi.require_version("Gst", "1.0")
    import pyds
    from gi.repository import GLib, Gst

    Gst.init(None)
    pipeline = Gst.parse_launch(
        f"uridecodebin uri={uri} ! m.sink_0 nvstreammux name=m batch-size=1 width=1280 height=720 ! "
        f"nvinfer config-file-path={config} ! nvvideoconvert ! video/x-raw(memory:NVMM),format=RGBA ! "
        "identity name=probe ! nvdsosd ! fakesink sync=false")
    pad = pipeline.get_by_name("probe").get_static_pad("src")
    pad.add_probe(Gst.PadProbeType.BUFFER, lambda p, i: overlay_probe(p, i, pyds, Gst))
    loop = GLib.MainLoop()
    bus = pipeline.get_bus()
    bus.add_signal_watch()
    bus.connect("message::eos", lambda *_: loop.quit())
    bus.connect("message::error", lambda _bus, message: (print(message.parse_error()), loop.quit()))
    pipeline.set_state(Gst.State.PLAYING)
    try:
        loop.run()
    finally:
        pipeline.set_state(Gst.State.NULL)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
