// Frame <-> model geometry, the letterbox policy of akd.runtime.geometry: scale to fit with the aspect kept,
// anti-aliased shrink (Gaussian pyramid while over twice the target, then bilinear), mean-colour padding; the
// saliency returns through the inverse of the same placement.
#include <algorithm>
#include <cmath>

#include <opencv2/imgproc.hpp>

#include "akd/runtime.hpp"

namespace akd {

Placement letterbox(int frame_h, int frame_w, int model_h, int model_w) {
  const double scale = std::min(static_cast<double>(model_h) / frame_h, static_cast<double>(model_w) / frame_w);
  // Python's round() rounds half to even; std::nearbyint does the same in the default rounding mode.
  const int resized_h = std::max(1, static_cast<int>(std::nearbyint(frame_h * scale)));
  const int resized_w = std::max(1, static_cast<int>(std::nearbyint(frame_w * scale)));
  return {resized_h, resized_w, (model_h - resized_h) / 2, (model_w - resized_w) / 2};
}

cv::Mat to_model(const cv::Mat& rgb_frame, const Placement& placement, int model_h, int model_w,
                 const cv::Scalar& pad) {
  cv::Mat shrunk = rgb_frame;
  while (shrunk.cols >= 2 * placement.resized_w && shrunk.rows >= 2 * placement.resized_h) {
    cv::Mat half;
    cv::pyrDown(shrunk, half);
    shrunk = half;
  }
  cv::Mat resized;
  cv::resize(shrunk, resized, cv::Size(placement.resized_w, placement.resized_h), 0, 0, cv::INTER_LINEAR);
  cv::Mat canvas(model_h, model_w, CV_8UC3, pad);
  resized.copyTo(canvas(cv::Rect(placement.offset_x, placement.offset_y, placement.resized_w, placement.resized_h)));
  return canvas;
}

cv::Mat to_frame(const cv::Mat& saliency, const Placement& placement, int frame_h, int frame_w) {
  cv::Mat window = saliency(cv::Rect(placement.offset_x, placement.offset_y, placement.resized_w,
                                     placement.resized_h));
  cv::Mat frame;
  cv::resize(window, frame, cv::Size(frame_w, frame_h), 0, 0, cv::INTER_LINEAR);
  return frame;
}

}  // namespace akd
