// Reading and adapting akd's ONNX graph without an onnx/protobuf dependency, by walking the protobuf wire format.
// * metadata_props (ModelProto field 14: StringStringEntryProto key = 1, value = 2) give the preprocessing and
//   class names, so C++ and Python agree without copied constants.
// * OpenCV DNN (<= 4.9) only reads Clip with its bounds as attributes (opset 6); opset >= 11 graphs pass them as
//   constant inputs (EfficientNet-Lite's ReLU6). opencv_compatible() rewrites those nodes in memory, leaving the
//   file on disk - the one graph every runtime uses - untouched.
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>

#include <nlohmann/json.hpp>

#include "akd/runtime.hpp"

namespace akd {
namespace {

struct Field {
  uint32_t number;
  uint32_t wire;
  size_t begin;    // first byte of the tag
  size_t end;      // one past the last byte of the field
  size_t payload;  // first byte of a length-delimited payload (or of the value)
  uint64_t value;  // varint value, or payload length for wire type 2
};

uint64_t read_varint(const std::string& data, size_t& pos, size_t end) {
  uint64_t value = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (pos >= end) throw Error("truncated varint");
    const auto byte = static_cast<uint8_t>(data[pos++]);
    value |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if (!(byte & 0x80)) return value;
  }
  throw Error("malformed varint");
}

std::vector<Field> fields(const std::string& data, size_t begin, size_t end) {
  std::vector<Field> found;
  size_t pos = begin;
  while (pos < end) {
    Field field{};
    field.begin = pos;
    const uint64_t key = read_varint(data, pos, end);
    field.number = static_cast<uint32_t>(key >> 3);
    field.wire = static_cast<uint32_t>(key & 7);
    size_t skip = 0;
    switch (field.wire) {
      case 0: field.payload = pos; field.value = read_varint(data, pos, end); break;
      case 1: skip = 8; break;
      case 5: skip = 4; break;
      case 2: field.value = read_varint(data, pos, end); skip = static_cast<size_t>(field.value); break;
      default: throw Error("unsupported protobuf wire type");
    }
    if (field.wire != 0) field.payload = pos;
    if (skip > end - pos) throw Error("truncated field");
    pos += skip;
    field.end = pos;
    found.push_back(field);
  }
  return found;
}

std::string text(const std::string& data, const Field& field) { return data.substr(field.payload, field.value); }

void put_varint(std::string& out, uint64_t value) {
  while (value >= 0x80) {
    out.push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
}

void put_bytes(std::string& out, uint32_t number, const std::string& payload) {
  put_varint(out, (static_cast<uint64_t>(number) << 3) | 2);
  put_varint(out, payload.size());
  out += payload;
}

// A scalar float TensorProto (data_type 1 = FLOAT; raw_data = 9 or float_data = 4).
std::optional<float> scalar_float(const std::string& data, size_t begin, size_t end) {
  std::optional<float> value;
  bool is_float = false;
  for (const Field& field : fields(data, begin, end)) {
    if (field.number == 2 && field.wire == 0) is_float = field.value == 1;
    const bool raw = field.number == 9 && field.wire == 2 && field.value == 4;
    const bool packed = field.number == 4 && field.wire == 2 && field.value == 4;
    if (raw || packed || (field.number == 4 && field.wire == 5)) {
      float number;
      std::memcpy(&number, data.data() + field.payload, 4);
      value = number;
    }
  }
  return is_float ? value : std::nullopt;
}

std::string string_field(const std::string& data, size_t begin, size_t end, uint32_t number) {
  for (const Field& field : fields(data, begin, end)) {
    if (field.number == number && field.wire == 2) return text(data, field);
  }
  return {};
}

// Clip(x, min, max) with constant bounds -> Clip(x) with float attributes min and max (AttributeProto: name = 1,
// f = 2, type = 20 with FLOAT = 1).
std::string patch_graph(const std::string& data, size_t begin, size_t end) {
  std::map<std::string, float> constants;
  const auto graph = fields(data, begin, end);
  for (const Field& field : graph) {
    if (field.number == 5 && field.wire == 2) {  // initializer (TensorProto, name = 8)
      const auto value = scalar_float(data, field.payload, field.end);
      if (value) constants[string_field(data, field.payload, field.end, 8)] = *value;
    } else if (field.number == 1 && field.wire == 2 &&
               string_field(data, field.payload, field.end, 4) == "Constant") {
      for (const Field& attribute : fields(data, field.payload, field.end)) {
        if (attribute.number != 5 || attribute.wire != 2) continue;
        for (const Field& inner : fields(data, attribute.payload, attribute.end)) {
          if (inner.number != 5 || inner.wire != 2) continue;  // AttributeProto.t
          const auto value = scalar_float(data, inner.payload, inner.end);
          if (value) constants[string_field(data, field.payload, field.end, 2)] = *value;
        }
      }
    }
  }
  std::string out;
  for (const Field& field : graph) {
    std::vector<std::string> inputs;
    if (field.number == 1 && field.wire == 2 && string_field(data, field.payload, field.end, 4) == "Clip") {
      for (const Field& inner : fields(data, field.payload, field.end)) {
        if (inner.number == 1 && inner.wire == 2) inputs.push_back(text(data, inner));
      }
    }
    const bool patch = inputs.size() == 3 && constants.count(inputs[1]) && constants.count(inputs[2]);
    if (!patch) {
      out.append(data, field.begin, field.end - field.begin);
      continue;
    }
    std::string node;
    put_bytes(node, 1, inputs[0]);
    for (const Field& inner : fields(data, field.payload, field.end)) {
      if (inner.number != 1) node.append(data, inner.begin, inner.end - inner.begin);
    }
    for (const auto& [name, value] : {std::pair<const char*, float>{"min", constants[inputs[1]]},
                                      std::pair<const char*, float>{"max", constants[inputs[2]]}}) {
      std::string attribute;
      put_bytes(attribute, 1, name);
      put_varint(attribute, (2 << 3) | 5);
      char bytes[4];
      std::memcpy(bytes, &value, 4);
      attribute.append(bytes, 4);
      put_varint(attribute, 20 << 3);
      put_varint(attribute, 1);
      put_bytes(node, 5, attribute);
    }
    put_bytes(out, 1, node);
  }
  return out;
}

std::string read_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw Error(path + ": model not found");
  return std::string((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
}

}  // namespace

std::vector<std::pair<std::string, std::string>> read_onnx_metadata(const std::string& path) {
  const std::string data = read_file(path);
  std::vector<std::pair<std::string, std::string>> entries;
  try {
    for (const Field& field : fields(data, 0, data.size())) {
      if (field.number != 14 || field.wire != 2) continue;
      entries.emplace_back(string_field(data, field.payload, field.end, 1),
                           string_field(data, field.payload, field.end, 2));
    }
  } catch (const Error& error) {
    throw Error(path + ": not a readable ONNX model (" + error.what() + ")");
  }
  return entries;
}

std::string opencv_compatible(const std::string& path) {
  const std::string data = read_file(path);
  std::string out;
  try {
    for (const Field& field : fields(data, 0, data.size())) {
      if (field.number == 7 && field.wire == 2) {
        put_bytes(out, 7, patch_graph(data, field.payload, field.end));
      } else {
        out.append(data, field.begin, field.end - field.begin);
      }
    }
  } catch (const Error& error) {
    throw Error(path + ": not a readable ONNX model (" + error.what() + ")");
  }
  return out;
}

ModelConfig parse_config(const std::string& config_json, const std::string& input_format,
                         const std::string& precision) {
  const auto config = nlohmann::json::parse(config_json);
  ModelConfig parsed;
  parsed.height = config.at("input_size").at(0).get<int>();
  parsed.width = config.at("input_size").at(1).get<int>();
  const auto& pre = config.at("preprocessing");
  for (int c = 0; c < 3; ++c) {
    parsed.mean[c] = pre.at("mean").at(c).get<float>();
    parsed.std[c] = pre.at("std").at(c).get<float>();
    parsed.scale[c] = 1.f / (255.f * parsed.std[c]);
    parsed.offset[c] = parsed.mean[c] / parsed.std[c];
  }
  parsed.classes = config.at("classes").get<std::vector<std::string>>();
  parsed.input_format = input_format;
  parsed.precision = precision;
  parsed.gradient_map = config.value("layercam_weight", 0.0) > 0.0;
  return parsed;
}

ModelConfig load_onnx_config(const std::string& path) {
  std::string config, input_format = "float-nchw", precision = "fp32";
  for (const auto& [key, value] : read_onnx_metadata(path)) {
    if (key == "akd_config") config = value;
    if (key == "akd_input_format") input_format = value;
    if (key == "akd_precision") precision = value;
  }
  if (config.empty()) {
    throw Error(path + ": not an akd graph (no akd_config in its metadata); export it with akd-export");
  }
  try {
    return parse_config(config, input_format, precision);
  } catch (const nlohmann::json::exception& error) {
    throw Error(path + ": malformed akd_config (" + error.what() + ")");
  }
}

}  // namespace akd
