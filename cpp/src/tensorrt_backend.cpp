// TensorRT backend (compiled when CMake finds TensorRT: desktop GPUs, Jetson): deserialises an engine built by
// akd-export --format engine and runs it with enqueueV3 on one CUDA stream. The config comes from the engine's
// .engine.json sidecar, so preprocessing matches the Python runtime.
#include <fstream>
#include <iostream>
#include <iterator>

#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include "akd/runtime.hpp"

namespace akd {
namespace {

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw Error(std::string("CUDA: ") + what + ": " + cudaGetErrorString(status));
}

class Logger : public nvinfer1::ILogger {
  void log(Severity severity, const char* message) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "TensorRT: " << message << "\n";
  }
};

class TensorRtBackend : public Backend {
 public:
  TensorRtBackend(const std::string& path, const ModelConfig& config) : config_(config) {
    std::ifstream file(path, std::ios::binary);
    const std::string plan((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    engine_.reset(runtime_ ? runtime_->deserializeCudaEngine(plan.data(), plan.size()) : nullptr);
    if (!engine_) throw Error(path + ": TensorRT could not deserialise this engine (built for another version/GPU?)");
    context_.reset(engine_->createExecutionContext());
    uint8_ = config.input_format == "uint8-nhwc";
    const auto input_dims = uint8_ ? nvinfer1::Dims4{1, config.height, config.width, 3}
                                   : nvinfer1::Dims4{1, 3, config.height, config.width};
    if (!context_->setInputShape("images", input_dims)) throw Error(path + ": engine profile does not accept batch 1");
    pixels_ = static_cast<size_t>(config.height) * config.width;
    const size_t input_bytes = pixels_ * 3 * (uint8_ ? 1 : sizeof(float));
    const size_t sizes[] = {input_bytes, pixels_ * sizeof(float), config.classes.size() * sizeof(float),
                            sizeof(int32_t), sizeof(float)};
    const char* names[] = {"images", "saliency", "logits", "class_id", "score"};
    for (int i = 0; i < 5; ++i) {
      check(cudaMalloc(&device_[i], sizes[i]), "cudaMalloc");
      if (!context_->setTensorAddress(names[i], device_[i])) throw Error(path + ": engine has no tensor " + names[i]);
    }
    check(cudaStreamCreate(&stream_), "cudaStreamCreate");
  }

  ~TensorRtBackend() override {
    cudaStreamDestroy(stream_);
    for (void* buffer : device_) cudaFree(buffer);
  }

  void infer(const cv::Mat& rgb, cv::Mat& saliency, std::vector<float>& logits) override {
    std::vector<float> blob;
    const void* host = rgb.data;
    size_t bytes = pixels_ * 3;
    if (!uint8_) {  // NCHW float, normalised like the Python runtime
      blob.resize(pixels_ * 3);
      for (int y = 0; y < rgb.rows; ++y) {
        const auto* row = rgb.ptr<cv::Vec3b>(y);
        for (int x = 0; x < rgb.cols; ++x) {
          for (int c = 0; c < 3; ++c) {
            blob[c * pixels_ + y * rgb.cols + x] = row[x][c] * config_.scale[c] - config_.offset[c];
          }
        }
      }
      host = blob.data();
      bytes *= sizeof(float);
    }
    saliency.create(rgb.rows, rgb.cols, CV_32F);
    logits.resize(config_.classes.size());
    check(cudaMemcpyAsync(device_[0], host, bytes, cudaMemcpyHostToDevice, stream_), "copy in");
    if (!context_->enqueueV3(stream_)) throw Error("TensorRT: enqueueV3 failed");
    check(cudaMemcpyAsync(saliency.data, device_[1], pixels_ * sizeof(float), cudaMemcpyDeviceToHost, stream_),
          "copy saliency");
    check(cudaMemcpyAsync(logits.data(), device_[2], logits.size() * sizeof(float), cudaMemcpyDeviceToHost,
                          stream_), "copy logits");
    check(cudaStreamSynchronize(stream_), "synchronize");
  }

  std::string name() const override { return "tensorrt"; }

 private:
  ModelConfig config_;
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  void* device_[5] = {};
  cudaStream_t stream_ = nullptr;
  size_t pixels_ = 0;
  bool uint8_ = false;
};

}  // namespace

std::unique_ptr<Backend> open_tensorrt_backend(const std::string& engine_path, const ModelConfig& config) {
  return std::make_unique<TensorRtBackend>(engine_path, config);
}

}  // namespace akd
