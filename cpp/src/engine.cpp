// SaliencyEngine: BGR frames of any size in, saliency at frame size + class, label and score out.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>
#include <opencv2/imgproc.hpp>

#include "akd/runtime.hpp"

namespace akd {
namespace {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

#ifdef AKD_WITH_TENSORRT
// The .engine.json sidecar akd-export writes beside every engine holds the surrogate config.
ModelConfig load_sidecar_config(const std::string& engine_path) {
  const std::string sidecar = std::filesystem::path(engine_path).replace_extension(".engine.json").string();
  std::ifstream file(sidecar);
  if (!file) throw Error(sidecar + ": engine sidecar not found; rebuild with akd-export --format engine");
  try {
    const auto data = nlohmann::json::parse(file);
    return parse_config(data.at("config").dump(), data.value("input_format", "float-nchw"),
                        data.value("precision", "fp32"));
  } catch (const nlohmann::json::exception& error) {
    throw Error(sidecar + ": malformed engine sidecar (" + error.what() + ")");
  }
}
#endif

}  // namespace

SaliencyEngine::SaliencyEngine(const std::string& model_path) {
  if (!std::filesystem::is_regular_file(model_path)) throw Error(model_path + ": model not found");
  if (ends_with(model_path, ".onnx")) {
    config_ = load_onnx_config(model_path);
    backend_ = open_opencv_backend(model_path, config_);
  } else if (ends_with(model_path, ".engine") || ends_with(model_path, ".plan")) {
#ifdef AKD_WITH_TENSORRT
    config_ = load_sidecar_config(model_path);
    backend_ = open_tensorrt_backend(model_path, config_);
#else
    throw Error(model_path + ": this akd-infer was built without TensorRT; rebuild where CMake finds TensorRT");
#endif
  } else {
    throw Error(model_path + ": unknown model type (expected .onnx or .engine)");
  }
}

Result SaliencyEngine::explain(const cv::Mat& bgr_frame) const {
  if (bgr_frame.empty() || bgr_frame.type() != CV_8UC3) throw Error("expected a non-empty 8-bit BGR frame");
  const Placement placement = letterbox(bgr_frame.rows, bgr_frame.cols, config_.height, config_.width);
  cv::Mat rgb;
  cv::cvtColor(bgr_frame, rgb, cv::COLOR_BGR2RGB);
  cv::Scalar pad;
  for (int c = 0; c < 3; ++c) pad[c] = std::nearbyint(config_.mean[c] * 255.0);
  const cv::Mat model_input = to_model(rgb, placement, config_.height, config_.width, pad);
  cv::Mat saliency;
  std::vector<float> logits;
  backend_->infer(model_input, saliency, logits);
  Result result;
  result.saliency = to_frame(saliency, placement, bgr_frame.rows, bgr_frame.cols);
  const auto best = std::max_element(logits.begin(), logits.end());
  result.class_id = static_cast<int>(best - logits.begin());
  double total = 0.0;
  for (const float logit : logits) total += std::exp(static_cast<double>(logit - *best));
  result.score = static_cast<float>(1.0 / total);
  result.label = result.class_id < static_cast<int>(config_.classes.size()) ? config_.classes[result.class_id]
                                                                              : std::to_string(result.class_id);
  return result;
}

cv::Mat overlay(const cv::Mat& bgr_frame, const Result& result, double alpha) {
  cv::Mat heat, blended;
  result.saliency.convertTo(heat, CV_8U, 255.0);
  cv::applyColorMap(heat, heat, cv::COLORMAP_JET);
  cv::addWeighted(bgr_frame, 1.0 - alpha, heat, alpha, 0.0, blended);
  const std::string caption = result.label + " " + std::to_string(static_cast<int>(result.score * 100)) + "%";
  cv::putText(blended, caption, {8, 24}, cv::FONT_HERSHEY_SIMPLEX, 0.7, {0, 0, 0}, 3, cv::LINE_AA);
  cv::putText(blended, caption, {8, 24}, cv::FONT_HERSHEY_SIMPLEX, 0.7, {255, 255, 255}, 1, cv::LINE_AA);
  return blended;
}

}  // namespace akd
