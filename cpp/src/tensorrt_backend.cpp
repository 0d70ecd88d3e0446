// TensorRT backend (compiled when CMake finds TensorRT: desktop GPUs, Jetson): deserialises an engine built by
// akd-export --format engine and runs it with enqueueV3 on its own non-blocking CUDA stream: pinned host buffers,
// asynchronous copies in and out, one synchronisation per frame. The config comes from the engine's .engine.json
// sidecar, so preprocessing matches the Python runtime; every I/O tensor is checked against the akd contract
// (name, direction, dtype, per-sample shape) before anything runs. Every CUDA resource is owned by RAII members,
// so a constructor that throws half-way leaks nothing.
#include <cstring>
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

struct DeviceFree {
  void operator()(void* pointer) const noexcept { cudaFree(pointer); }
};
struct HostFree {
  void operator()(void* pointer) const noexcept { cudaFreeHost(pointer); }
};
struct StreamDestroy {
  void operator()(CUstream_st* stream) const noexcept { cudaStreamDestroy(stream); }
};
using DeviceBuffer = std::unique_ptr<void, DeviceFree>;
using PinnedBuffer = std::unique_ptr<void, HostFree>;
using Stream = std::unique_ptr<CUstream_st, StreamDestroy>;

class Logger : public nvinfer1::ILogger {
  void log(Severity severity, const char* message) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "TensorRT: " << message << "\n";
  }
};

// One I/O tensor of the contract: what the runtime's buffers hold per sample.
struct TensorSpec {
  const char* name;
  bool input;
  nvinfer1::DataType type;
  std::vector<int64_t> shape;  // without the batch dimension
  size_t bytes;
};

const char* type_name(nvinfer1::DataType type) {
  switch (type) {
    case nvinfer1::DataType::kFLOAT: return "float32";
    case nvinfer1::DataType::kHALF: return "float16";
    case nvinfer1::DataType::kINT32: return "int32";
    case nvinfer1::DataType::kUINT8: return "uint8";
    case nvinfer1::DataType::kINT8: return "int8";
    default: return "another type";
  }
}

class TensorRtBackend : public Backend {
 public:
  TensorRtBackend(const std::string& path, const ModelConfig& config) : config_(config) {
    std::ifstream file(path, std::ios::binary);
    const std::string plan((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    engine_.reset(runtime_ ? runtime_->deserializeCudaEngine(plan.data(), plan.size()) : nullptr);
    if (!engine_) throw Error(path + ": TensorRT could not deserialise this engine (built for another version/GPU?)");
    uint8_ = config.input_format == "uint8-nhwc";
    pixels_ = static_cast<size_t>(config.height) * config.width;
    const int64_t h = config.height, w = config.width, classes = static_cast<int64_t>(config.classes.size());
    specs_ = {
        {"images", true, uint8_ ? nvinfer1::DataType::kUINT8 : nvinfer1::DataType::kFLOAT,
         uint8_ ? std::vector<int64_t>{h, w, 3} : std::vector<int64_t>{3, h, w}, pixels_ * 3 * (uint8_ ? 1 : 4)},
        {"saliency", false, nvinfer1::DataType::kFLOAT, {1, h, w}, pixels_ * sizeof(float)},
        {"logits", false, nvinfer1::DataType::kFLOAT, {classes}, config.classes.size() * sizeof(float)},
        {"class_id", false, nvinfer1::DataType::kINT32, {}, sizeof(int32_t)},
        {"score", false, nvinfer1::DataType::kFLOAT, {}, sizeof(float)},
    };
    check_io(path);
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw Error(path + ": TensorRT could not create an execution context");
    const auto input_dims = uint8_ ? nvinfer1::Dims4{1, config.height, config.width, 3}
                                   : nvinfer1::Dims4{1, 3, config.height, config.width};
    if (!context_->setInputShape("images", input_dims)) throw Error(path + ": engine profile does not accept batch 1");
    for (const auto& spec : specs_) {
      void* device = nullptr;
      void* host = nullptr;
      check(cudaMalloc(&device, spec.bytes), "cudaMalloc");
      device_.emplace_back(device);
      check(cudaMallocHost(&host, spec.bytes), "cudaMallocHost");
      host_.emplace_back(host);
      if (!context_->setTensorAddress(spec.name, device)) throw Error(path + ": engine refused tensor " + spec.name);
    }
    cudaStream_t stream = nullptr;
    check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    stream_.reset(stream);
  }

  void infer(const cv::Mat& rgb, cv::Mat& saliency, std::vector<float>& logits) override {
    if (uint8_) {
      std::memcpy(host_[0].get(), rgb.data, pixels_ * 3);
    } else {  // NCHW float, normalised like the Python runtime, straight into the pinned buffer
      auto* blob = static_cast<float*>(host_[0].get());
      for (int y = 0; y < rgb.rows; ++y) {
        const auto* row = rgb.ptr<cv::Vec3b>(y);
        for (int x = 0; x < rgb.cols; ++x) {
          for (int c = 0; c < 3; ++c) {
            blob[c * pixels_ + y * rgb.cols + x] = row[x][c] * config_.scale[c] - config_.offset[c];
          }
        }
      }
    }
    cudaStream_t stream = stream_.get();
    check(cudaMemcpyAsync(device_[0].get(), host_[0].get(), specs_[0].bytes, cudaMemcpyHostToDevice, stream),
          "copy in");
    if (!context_->enqueueV3(stream)) throw Error("TensorRT: enqueueV3 failed");
    for (size_t i = 1; i < 3; ++i) {  // saliency and logits; the graph's class_id/score are recomputed from them
      check(cudaMemcpyAsync(host_[i].get(), device_[i].get(), specs_[i].bytes, cudaMemcpyDeviceToHost, stream),
            "copy out");
    }
    check(cudaStreamSynchronize(stream), "synchronize");
    saliency.create(rgb.rows, rgb.cols, CV_32F);
    std::memcpy(saliency.data, host_[1].get(), specs_[1].bytes);
    logits.resize(config_.classes.size());
    std::memcpy(logits.data(), host_[2].get(), specs_[2].bytes);
  }

  std::string name() const override { return "tensorrt"; }

 private:
  // The engine's tensors must be the contract's: an engine with fp16 I/O would read and write garbage otherwise.
  void check_io(const std::string& path) const {
    if (engine_->getNbIOTensors() != static_cast<int32_t>(specs_.size())) {
      throw Error(path + ": the engine has " + std::to_string(engine_->getNbIOTensors()) +
                  " I/O tensors; the akd contract has 5 (rebuild it from an akd graph)");
    }
    for (const auto& spec : specs_) {
      const bool input = engine_->getTensorIOMode(spec.name) == nvinfer1::TensorIOMode::kINPUT;
      if (engine_->getTensorIOMode(spec.name) == nvinfer1::TensorIOMode::kNONE || input != spec.input) {
        throw Error(path + ": engine tensor " + spec.name + " is missing or has the wrong direction");
      }
      const nvinfer1::DataType type = engine_->getTensorDataType(spec.name);
      const nvinfer1::Dims dims = engine_->getTensorShape(spec.name);
      std::vector<int64_t> shape(dims.d + 1, dims.d + std::max<int32_t>(dims.nbDims, 1));
      if (type != spec.type || shape != spec.shape) {
        throw Error(path + ": engine tensor " + spec.name + " is " + type_name(type) + " with " +
                    std::to_string(dims.nbDims - 1) + " per-sample dims; the runtime's buffers hold " +
                    type_name(spec.type) + " (rebuild the engine from the graph akd exported)");
      }
    }
  }

  ModelConfig config_;
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  std::vector<TensorSpec> specs_;
  std::vector<DeviceBuffer> device_;
  std::vector<PinnedBuffer> host_;
  Stream stream_;
  size_t pixels_ = 0;
  bool uint8_ = false;
};

}  // namespace

std::unique_ptr<Backend> open_tensorrt_backend(const std::string& engine_path, const ModelConfig& config) {
  return std::make_unique<TensorRtBackend>(engine_path, config);
}

}  // namespace akd
