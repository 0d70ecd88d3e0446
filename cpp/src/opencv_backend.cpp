// OpenCV DNN running the fused akd graph on the CPU: a normalised NCHW blob in, saliency and logits out.
#include <opencv2/dnn.hpp>

#include "akd/runtime.hpp"

namespace akd {
namespace {

class OpenCvBackend : public Backend {
 public:
  OpenCvBackend(const std::string& path, const ModelConfig& config) : config_(config) {
    if (config.input_format != "float-nchw") {
      throw Error(path + ": the OpenCV backend runs float-nchw graphs; export with --input-format float-nchw");
    }
    if (config.gradient_map) {  // its backward pass as forward operations is beyond OpenCV 4's ONNX importer
      throw Error(path + ": this graph's map reads a gradient (LayerCAM), which OpenCV DNN cannot run; export it "
                  "with akd-export --no-layercam for this backend, or build a TensorRT engine (--format engine)");
    }
    try {
      const std::string graph = opencv_compatible(path);
      net_ = cv::dnn::readNetFromONNX(graph.data(), graph.size());
    } catch (const cv::Exception& error) {
      throw Error(path + ": OpenCV DNN cannot load this graph (" + error.err + ")");
    }
    net_.setPreferableBackend(cv::dnn::DNN_BACKEND_OPENCV);
    net_.setPreferableTarget(cv::dnn::DNN_TARGET_CPU);
  }

  void infer(const cv::Mat& rgb, cv::Mat& saliency, std::vector<float>& logits) override {
    const int size[] = {1, 3, rgb.rows, rgb.cols};
    cv::Mat blob(4, size, CV_32F);
    std::vector<cv::Mat> planes;
    cv::split(rgb, planes);
    for (int c = 0; c < 3; ++c) {
      cv::Mat plane(rgb.rows, rgb.cols, CV_32F, blob.ptr<float>(0, c));
      planes[c].convertTo(plane, CV_32F, config_.scale[c], -config_.offset[c]);
    }
    net_.setInput(blob, "images");
    std::vector<cv::Mat> outputs;
    net_.forward(outputs, std::vector<cv::String>{"saliency", "logits"});
    saliency = cv::Mat(rgb.rows, rgb.cols, CV_32F, outputs[0].ptr<float>()).clone();
    const float* values = outputs[1].ptr<float>();
    logits.assign(values, values + outputs[1].total());
  }

  std::string name() const override { return "opencv-dnn"; }

 private:
  ModelConfig config_;
  cv::dnn::Net net_;
};

}  // namespace

std::unique_ptr<Backend> open_opencv_backend(const std::string& onnx_path, const ModelConfig& config) {
  return std::make_unique<OpenCvBackend>(onnx_path, config);
}

}  // namespace akd
