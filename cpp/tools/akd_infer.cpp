// akd-infer: image or video in, saliency overlay out, fps printed.
//   akd-infer --model surrogate.onnx INPUT [--out OVERLAY] [--saliency-npy MAP.npy]
// Errors are one line on stderr and exit code 2, like the Python CLIs.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/videoio.hpp>

#include "akd/runtime.hpp"

namespace {

const char* kUsage = "usage: akd-infer --model MODEL.onnx|MODEL.engine INPUT [--out OVERLAY] [--saliency-npy FILE]";

// A float32 (H, W) array in numpy's .npy format (version 1.0), so Python can compare maps bit for bit.
void write_npy(const std::string& path, const cv::Mat& map) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(map.rows) + ", " +
                       std::to_string(map.cols) + "), }";
  header.append(64 - (10 + header.size() + 1) % 64, ' ').push_back('\n');
  const std::string temporary = path + ".tmp";
  {
    std::ofstream file(temporary, std::ios::binary);
    if (!file) throw akd::Error(path + ": cannot write");
    file.write("\x93NUMPY\x01\x00", 8);
    const auto length = static_cast<uint16_t>(header.size());
    file.put(static_cast<char>(length & 0xff)).put(static_cast<char>(length >> 8));
    file << header;
    const cv::Mat contiguous = map.isContinuous() ? map : map.clone();
    file.write(reinterpret_cast<const char*>(contiguous.data), static_cast<std::streamsize>(contiguous.total() * 4));
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) throw akd::Error(path + ": cannot write");
}

bool is_image(const std::string& path) {
  const auto dot = path.find_last_of('.');
  if (dot == std::string::npos) return false;
  std::string ext = path.substr(dot);
  for (auto& ch : ext) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  for (const char* known : {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}) {
    if (ext == known) return true;
  }
  return false;
}

int run(int argc, char** argv) {
  std::string model, input, out, npy;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw akd::Error(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--model") model = value();
    else if (arg == "--out") out = value();
    else if (arg == "--saliency-npy") npy = value();
    else if (arg == "-h" || arg == "--help") { std::cout << kUsage << "\n"; return 0; }
    else if (!arg.empty() && arg[0] == '-') throw akd::Error("unknown option " + arg);
    else if (input.empty()) input = arg;
    else throw akd::Error("one INPUT at a time");
  }
  if (model.empty() || input.empty()) throw akd::Error(std::string("--model and INPUT are required; ") + kUsage);
  const akd::SaliencyEngine engine(model);
  using clock = std::chrono::steady_clock;
  if (is_image(input)) {
    const cv::Mat frame = cv::imread(input, cv::IMREAD_COLOR);
    if (frame.empty()) throw akd::Error(input + ": cannot read image");
    const auto started = clock::now();
    const akd::Result result = engine.explain(frame);
    const double seconds = std::chrono::duration<double>(clock::now() - started).count();
    if (!npy.empty()) write_npy(npy, result.saliency);
    if (!out.empty() && !cv::imwrite(out, akd::overlay(frame, result))) throw akd::Error(out + ": cannot write");
    std::printf("%s: class %d (%s) score %.4f, mean saliency %.4f, %.1f ms (%s)\n", input.c_str(), result.class_id,
                result.label.c_str(), result.score, cv::mean(result.saliency)[0], seconds * 1e3,
                engine.backend_name().c_str());
    return 0;
  }
  cv::VideoCapture capture(input);
  if (!capture.isOpened()) throw akd::Error(input + ": cannot read image or video");
  cv::VideoWriter writer;
  cv::Mat frame;
  int frames = 0;
  double busy = 0.0;
  while (capture.read(frame)) {
    const auto started = clock::now();
    const akd::Result result = engine.explain(frame);
    busy += std::chrono::duration<double>(clock::now() - started).count();
    if (!out.empty()) {
      if (!writer.isOpened()) {
        const double fps = capture.get(cv::CAP_PROP_FPS);
        writer.open(out, cv::VideoWriter::fourcc('M', 'J', 'P', 'G'), fps > 0 ? fps : 30.0, frame.size());
        if (!writer.isOpened()) throw akd::Error(out + ": cannot write video");
      }
      writer.write(akd::overlay(frame, result));
    }
    ++frames;
  }
  if (frames == 0) throw akd::Error(input + ": no decodable frames");
  std::printf("%s: %d frames, %.1f fps (%s)\n", input.c_str(), frames, frames / busy, engine.backend_name().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const akd::Error& error) {
    std::cerr << "akd-infer: error: " << error.what() << "\n";
    return 2;
  } catch (const cv::Exception& error) {
    std::cerr << "akd-infer: error: OpenCV: " << error.err << "\n";
    return 2;
  }
}
