// akd C++ runtime: the fused akd graph (saliency + logits) behind one small interface, with the preprocessing
// read from the model's own metadata so C++ and Python agree without copied constants.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

namespace akd {

// A problem the user can fix (missing model, unreadable input); akd-infer prints it as one line, exit 2.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What akd-export records in the graph (metadata_props: akd_config, akd_input_format, akd_precision).
struct ModelConfig {
  int height = 0;
  int width = 0;
  cv::Vec3f mean;  // RGB, in [0, 1]
  cv::Vec3f std;   // RGB, in [0, 1]
  cv::Vec3f scale;   // normalised = pixel * scale - offset, as akd's Python runtime computes it
  cv::Vec3f offset;
  std::vector<std::string> classes;
  std::string input_format;  // float-nchw | uint8-nhwc
  std::string precision;
  bool gradient_map = false;  // the map reads LayerCAM's gradient (config layercam_weight > 0)
};

// metadata_props of an ONNX file, read straight from its protobuf encoding (no onnx/protobuf dependency).
std::vector<std::pair<std::string, std::string>> read_onnx_metadata(const std::string& path);
// The graph's bytes with opset-11+ Clip nodes (constant bound inputs) rewritten to attribute form for OpenCV DNN.
std::string opencv_compatible(const std::string& path);
// The parsed akd_config of a graph, or of a TensorRT engine's .engine.json sidecar.
ModelConfig parse_config(const std::string& config_json, const std::string& input_format,
                         const std::string& precision);
ModelConfig load_onnx_config(const std::string& path);

struct Result {
  cv::Mat saliency;  // CV_32F in [0, 1], at the frame's size
  int class_id = -1;
  std::string label;
  float score = 0.f;
};

// One model behind one interface: a model-size RGB uint8 image in, saliency (model size) + logits out.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual void infer(const cv::Mat& rgb, cv::Mat& saliency, std::vector<float>& logits) = 0;
  virtual std::string name() const = 0;
};

std::unique_ptr<Backend> open_opencv_backend(const std::string& onnx_path, const ModelConfig& config);
#ifdef AKD_WITH_TENSORRT
std::unique_ptr<Backend> open_tensorrt_backend(const std::string& engine_path, const ModelConfig& config);
#endif

// Letterbox placement (aspect kept, mean-colour padding), exactly as akd.runtime.geometry does it.
struct Placement {
  int resized_h, resized_w, offset_y, offset_x;
};
Placement letterbox(int frame_h, int frame_w, int model_h, int model_w);
cv::Mat to_model(const cv::Mat& rgb_frame, const Placement& placement, int model_h, int model_w,
                 const cv::Scalar& pad);
cv::Mat to_frame(const cv::Mat& saliency, const Placement& placement, int frame_h, int frame_w);

class SaliencyEngine {
 public:
  // .onnx -> OpenCV DNN; .engine/.plan -> TensorRT (when compiled in).
  explicit SaliencyEngine(const std::string& model_path);
  Result explain(const cv::Mat& bgr_frame) const;
  const ModelConfig& config() const { return config_; }
  std::string backend_name() const { return backend_->name(); }

 private:
  ModelConfig config_;
  std::unique_ptr<Backend> backend_;
};

cv::Mat overlay(const cv::Mat& bgr_frame, const Result& result, double alpha = 0.45);

}  // namespace akd
