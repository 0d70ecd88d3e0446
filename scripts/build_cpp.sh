#!/usr/bin/env bash
# Build the C++ runtime (akd_runtime, akd-infer) into build/cpp and run its ctest entries. Needs CMake, a C++17
# compiler, OpenCV 4 with dnn (Debian: libopencv-dev) and nlohmann-json (nlohmann-json3-dev); --install-deps
# installs the two packages with apt-get when they are missing and we are root. Without them it says so and
# exits 0, and the C++ parity tests skip - except under CI=true, where a missing C++ build fails.
set -euo pipefail
cd "$(dirname "$0")/.."
have_deps() { pkg-config --exists opencv4 && [[ -f /usr/include/nlohmann/json.hpp ]]; }
if [[ ${1:-} == --install-deps ]] && ! have_deps && [[ $(id -u) == 0 ]] && command -v apt-get > /dev/null; then
    echo "build_cpp: installing libopencv-dev nlohmann-json3-dev" >&2
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        libopencv-dev nlohmann-json3-dev) > build-deps.log 2>&1 || echo "build_cpp: apt-get failed (build-deps.log)" >&2
fi
if ! command -v cmake > /dev/null || ! have_deps; then
    echo "build_cpp: CMake, OpenCV 4 or nlohmann-json missing - C++ runtime not built" >&2
    [[ ${CI:-} == true ]] && { echo "build_cpp: CI=true: the C++ runtime must build here" >&2; exit 1; }
    exit 0
fi
cmake -S . -B build/cpp -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build/cpp -j "$(nproc)"
ctest --test-dir build/cpp --output-on-failure
# The TensorRT backend cannot link here (no TensorRT), but it must compile against both API versions users have:
# the real TensorRT 10.13 and 11.1 headers in ../shared and the CUDA toolkit's headers. Under CI=true a missing
# header set or a compile error fails the build.
headers=../shared/third_party/tensorrt-headers
# the CUDA toolkit's headers: CUDA_HOME, /usr/local/cuda(-*), or the CUDA runtime wheel torch installs in .venv
cuda_include=
for candidate in "${CUDA_HOME:-/nonexistent}/include" /usr/local/cuda/include /usr/local/cuda-*/include \
        .venv/lib/python3*/site-packages/nvidia/cu*/include; do
    [[ -f $candidate/cuda_runtime_api.h ]] && { cuda_include=$candidate; break; }
done
if [[ -d $headers && -n $cuda_include ]]; then
    for version in 10.13 11.1; do
        g++ -std=c++17 -fsyntax-only -Wall -Wextra -Wpedantic -Werror -DAKD_WITH_TENSORRT -I cpp/include \
            -isystem "$headers/$version/include" -isystem "$cuda_include" $(pkg-config --cflags opencv4) \
            cpp/src/tensorrt_backend.cpp
        echo "build_cpp: cpp/src/tensorrt_backend.cpp compiles against TensorRT $version"
    done
else
    echo "build_cpp: TensorRT headers ($headers) or CUDA headers missing - TensorRT backend not compile-checked" >&2
    [[ ${CI:-} == true ]] && { echo "build_cpp: CI=true: the TensorRT backend must compile-check here" >&2; exit 1; }
fi
