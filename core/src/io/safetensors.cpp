// Purpose: see nnkit/io/safetensors.h. Reading is parse-then-validate: the JSON header is parsed
// with nlohmann::json (a callback rejects duplicate keys, which the DOM would silently merge, and
// caps nesting), then every entry is checked field by field, then the offsets are sorted and must
// tile the data section exactly.
#include "nnkit/io/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>
#include <utility>

#include "io/mapped_file.h"
#include "io/quote.h"
#include "nnkit/backend.h"
#include "nnkit/error.h"
#include "nnkit/io/atomic_file.h"
#include "nnkit/io/half.h"

namespace nnkit {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; a big-endian host needs byte swapping here");

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

constexpr const char* kSupportedDtypes = "F32, F16, BF16, I32, I64, U8";
constexpr size_t kMaxJsonDepth = 16;  // real headers nest 3 deep

const char* safetensors_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kI32:
      return "I32";
    case DType::kI64:
      return "I64";
    case DType::kU8:
      return "U8";
  }
  return "?";
}

bool parse_dtype(const std::string& s, DType* out) {
  static const std::pair<const char*, DType> kTable[] = {
      {"F32", DType::kF32}, {"F16", DType::kF16}, {"BF16", DType::kBF16},
      {"I32", DType::kI32}, {"I64", DType::kI64}, {"U8", DType::kU8}};
  for (const auto& [name, dtype] : kTable) {
    if (s == name) {
      *out = dtype;
      return true;
    }
  }
  return false;
}

// "looks like X" for the foreign files people most often pass by mistake; "" otherwise.
std::string foreign_format_hint(std::span<const std::byte> b) {
  auto at = [&](size_t i) { return i < b.size() ? static_cast<unsigned>(b[i]) : 256u; };
  if (at(0) == 0x80 && at(1) >= 2 && at(1) <= 5) {
    return "; it looks like a Python pickle (a PyTorch .bin/.pt checkpoint), not safetensors: "
           "convert it in Python with safetensors.torch.save_file(torch.load(FILE), OUT)";
  }
  if (at(0) == 'P' && at(1) == 'K' && at(2) == 3 && at(3) == 4) {
    return "; it looks like a zip archive (a PyTorch .pt checkpoint), not safetensors: convert it "
           "in Python with safetensors.torch.save_file(torch.load(FILE), OUT)";
  }
  if (at(0) == 'G' && at(1) == 'G' && at(2) == 'U' && at(3) == 'F') {
    return "; it looks like a GGUF file, not safetensors";
  }
  return "; the file is corrupt or not a safetensors file";
}

std::string offsets_text(const TensorInfo& t) {
  std::string out = "[";  // appended piecewise: see io/quote.h on GCC 12's -Wrestrict
  out.append(std::to_string(t.begin)).append(", ").append(std::to_string(t.end)).append("]");
  return out;
}

}  // namespace

// ---- reader -------------------------------------------------------------------------------------

struct SafetensorsFile::Impl {
  io_detail::MappedFile file;
  std::string label;
  std::vector<std::string> names;
  std::unordered_map<std::string, TensorInfo> infos;
  std::map<std::string, std::string> metadata;
  const std::byte* data = nullptr;  // start of the data section
  uint64_t data_size = 0;

  [[noreturn]] void fail(const std::string& message) const {
    throw IoError("io", io_detail::quoted(label) + ": " + message);
  }
  [[noreturn]] void fail_tensor(const std::string& name, const std::string& message) const {
    fail("tensor '" + name + "': " + message);
  }

  void parse();
  json parse_header(const char* begin, const char* end) const;
  TensorInfo parse_entry(const std::string& name, const json& entry) const;
  void parse_metadata(const json& value);
  void check_tiling(std::vector<std::pair<std::string, TensorInfo>>& entries) const;
};

json SafetensorsFile::Impl::parse_header(const char* begin, const char* end) const {
  // One key set per open object; arrays push an empty set so the stack also measures depth.
  std::vector<std::set<std::string>> open;
  auto callback = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        open.emplace_back();
        if (open.size() > kMaxJsonDepth) {
          fail("header JSON nests deeper than " + std::to_string(kMaxJsonDepth) +
               " levels; the file is corrupt or not a safetensors file");
        }
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        if (!open.empty()) open.pop_back();
        break;
      case json::parse_event_t::key:
        if (!open.empty() && !open.back().insert(parsed.get<std::string>()).second) {
          fail("header JSON has the key '" + parsed.get<std::string>() + "' twice" +
               (open.size() == 1 ? " (duplicate tensor name)" : ""));
        }
        break;
      case json::parse_event_t::value:
        break;
    }
    return true;
  };
  try {
    return json::parse(begin, end, callback);
  } catch (const json::exception& e) {
    fail(std::string("header is not valid JSON (") + e.what() + ")" +
         foreign_format_hint(file.bytes()));
  }
}

TensorInfo SafetensorsFile::Impl::parse_entry(const std::string& name, const json& entry) const {
  if (name.empty()) fail("a tensor has an empty name");
  if (!entry.is_object()) {
    fail_tensor(name, "entry must be an object with dtype, shape and data_offsets, found " +
                          std::string(entry.type_name()));
  }
  for (const auto& [key, value] : entry.items()) {
    (void)value;
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      fail_tensor(name, "unknown field '" + key + "' (expected dtype, shape and data_offsets)");
    }
  }
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(field)) fail_tensor(name, std::string("missing field '") + field + "'");
  }
  TensorInfo info;

  const json& dtype = entry.at("dtype");
  if (!dtype.is_string()) fail_tensor(name, "dtype must be a string such as \"F32\"");
  const auto& dtype_text = dtype.get_ref<const std::string&>();
  if (!parse_dtype(dtype_text, &info.dtype)) {
    fail_tensor(name, "dtype '" + dtype_text + "' is not supported (nnkit reads " +
                          kSupportedDtypes + "); convert the tensor before loading");
  }

  const json& shape = entry.at("shape");
  if (!shape.is_array()) fail_tensor(name, "shape must be an array of non-negative integers");
  for (const json& d : shape) {
    if (d.is_number_integer() && !d.is_number_unsigned()) {
      fail_tensor(name, "shape has a negative dimension " + d.dump());
    }
    if (!d.is_number_unsigned()) {
      fail_tensor(name, "shape dimension " + d.dump() + " is not a non-negative integer");
    }
    const auto v = d.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail_tensor(name, "shape dimension " + d.dump() + " is too large");
    }
    info.shape.push_back(static_cast<int64_t>(v));
  }

  const json& offsets = entry.at("data_offsets");
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned()) {
    fail_tensor(name, "data_offsets must be [begin, end] with non-negative integers, found " +
                          offsets.dump());
  }
  info.begin = offsets[0].get<uint64_t>();
  info.end = offsets[1].get<uint64_t>();
  if (info.begin > info.end) {
    fail_tensor(name, "data_offsets " + offsets_text(info) + " end before they begin");
  }

  // Overflow-safe byte size: a hostile shape like [2^40, 2^40] must not wrap to a small number.
  uint64_t nbytes = dtype_size(info.dtype);
  for (int64_t d : info.shape) {
    if (__builtin_mul_overflow(nbytes, static_cast<uint64_t>(d), &nbytes)) {
      fail_tensor(name, "shape " + to_string(info.shape) + " of " + dtype_text +
                            " overflows 64-bit byte counts; the file is corrupt");
    }
  }
  if (nbytes != info.end - info.begin) {
    fail_tensor(name, "shape " + to_string(info.shape) + " of " + dtype_text + " needs " +
                          std::to_string(nbytes) + " bytes but data_offsets " + offsets_text(info) +
                          " span " + std::to_string(info.end - info.begin) +
                          "; the file is corrupt");
  }
  if (info.end > data_size) {
    fail_tensor(name, "data_offsets " + offsets_text(info) + " run past the end of the data (" +
                          std::to_string(data_size) + " bytes); the file is truncated or corrupt");
  }
  return info;
}

void SafetensorsFile::Impl::parse_metadata(const json& value) {
  if (!value.is_object()) fail("__metadata__ must be an object of strings");
  for (const auto& [key, v] : value.items()) {
    if (!v.is_string()) {
      fail("__metadata__ value for '" + key + "' must be a string, found " + v.type_name());
    }
    metadata.emplace(key, v.get<std::string>());
  }
}

void SafetensorsFile::Impl::check_tiling(
    std::vector<std::pair<std::string, TensorInfo>>& entries) const {
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
    return std::tie(a.second.begin, a.second.end, a.first) <
           std::tie(b.second.begin, b.second.end, b.first);
  });
  uint64_t cursor = 0;
  const std::string* previous = nullptr;
  for (const auto& [name, info] : entries) {
    if (info.begin < cursor) {
      fail_tensor(name, "data_offsets " + offsets_text(info) + " overlap tensor '" + *previous +
                            "' (which ends at " + std::to_string(cursor) +
                            "); the file is corrupt");
    }
    if (info.begin > cursor) {
      fail_tensor(name, "data_offsets " + offsets_text(info) + " leave a gap of " +
                            std::to_string(info.begin - cursor) + " bytes after " +
                            (previous ? "tensor " + io_detail::quoted(*previous)
                                      : std::string("the header")) +
                            "; the file is corrupt");
    }
    cursor = info.end;
    previous = &name;
  }
  if (cursor != data_size) {
    fail("has " + std::to_string(data_size - cursor) +
         " trailing bytes after the last tensor (data section is " + std::to_string(data_size) +
         " bytes, tensors cover " + std::to_string(cursor) + "); the file is corrupt");
  }
}

void SafetensorsFile::Impl::parse() {
  const std::span<const std::byte> b = file.bytes();
  if (b.size() < 8) {
    fail("file is " + std::to_string(b.size()) +
         " bytes; a safetensors file starts with an 8-byte header length" + foreign_format_hint(b));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = header_len << 8 | static_cast<uint8_t>(b[i]);
  if (header_len > kSafetensorsMaxHeaderBytes) {
    fail("header length " + std::to_string(header_len) + " exceeds the limit of " +
         std::to_string(kSafetensorsMaxHeaderBytes) + " bytes" + foreign_format_hint(b));
  }
  if (header_len > b.size() - 8) {
    fail("header length " + std::to_string(header_len) + " runs past the end of the file (" +
         std::to_string(b.size()) + " bytes)" + foreign_format_hint(b));
  }
  const char* header = reinterpret_cast<const char*>(b.data()) + 8;
  const json root = parse_header(header, header + header_len);
  if (!root.is_object()) {
    fail("header must be a JSON object, found " + std::string(root.type_name()) +
         foreign_format_hint(b));
  }
  data = b.data() + 8 + header_len;
  data_size = b.size() - 8 - header_len;

  std::vector<std::pair<std::string, TensorInfo>> entries;
  entries.reserve(root.size());
  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      parse_metadata(value);
    } else {
      entries.emplace_back(key, parse_entry(key, value));
    }
  }
  check_tiling(entries);
  names.reserve(entries.size());
  for (auto& [name, info] : entries) {
    names.push_back(name);
    infos.emplace(std::move(name), std::move(info));
  }
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path) : impl_(new Impl) {
  impl_->label = path.string();
  impl_->file = io_detail::MappedFile(path);
  impl_->parse();
}

SafetensorsFile::SafetensorsFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

SafetensorsFile SafetensorsFile::from_bytes(std::string_view bytes, const std::string& label) {
  auto impl = std::make_unique<Impl>();
  impl->label = label;
  impl->file = io_detail::MappedFile::from_bytes(std::string(bytes));
  impl->parse();
  return SafetensorsFile(std::move(impl));
}

SafetensorsFile::~SafetensorsFile() = default;
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;

const std::string& SafetensorsFile::label() const {
  return impl_->label;
}
const std::vector<std::string>& SafetensorsFile::names() const {
  return impl_->names;
}
bool SafetensorsFile::has(const std::string& name) const {
  return impl_->infos.count(name) > 0;
}
const std::map<std::string, std::string>& SafetensorsFile::metadata() const {
  return impl_->metadata;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = impl_->infos.find(name);
  if (it == impl_->infos.end()) {
    std::string some;
    for (size_t i = 0; i < impl_->names.size() && i < 3; ++i) {
      some += (i ? ", '" : " (e.g. '") + impl_->names[i] + "'";
    }
    if (!some.empty()) some += impl_->names.size() > 3 ? ", ...)" : ")";
    impl_->fail("has no tensor '" + name + "'; it holds " + std::to_string(impl_->names.size()) +
                " tensors" + some);
  }
  return it->second;
}

std::span<const std::byte> SafetensorsFile::bytes(const std::string& name) const {
  const TensorInfo& t = info(name);
  return {impl_->data + t.begin, static_cast<size_t>(t.nbytes())};
}

void SafetensorsFile::read_into(const std::string& name, Backend& backend,
                                const Tensor& dst) const {
  const TensorInfo& t = info(name);
  const char* stored = safetensors_dtype_name(t.dtype);
  if (!dst.defined()) impl_->fail_tensor(name, "destination tensor is undefined");
  if (dst.shape() != t.shape) {
    impl_->fail_tensor(name, "file has shape " + to_string(t.shape) + " (" + stored +
                                 ") but the destination is " + to_string(dst.shape()) +
                                 "; does the model configuration match this checkpoint?");
  }
  const void* src = impl_->data + t.begin;
  const size_t n = static_cast<size_t>(dst.numel());
  if (t.dtype == dst.dtype()) {
    backend.copy_from_host(dst, src);
    return;
  }
  if (dst.dtype() == DType::kF32 && (t.dtype == DType::kBF16 || t.dtype == DType::kF16)) {
    std::vector<float> tmp(n);
    if (t.dtype == DType::kBF16) {
      bf16_to_f32(src, tmp.data(), n);
    } else {
      f16_to_f32(src, tmp.data(), n);
    }
    backend.copy_from_host(dst, tmp.data());
    return;
  }
  if (t.dtype == DType::kF32 && (dst.dtype() == DType::kBF16 || dst.dtype() == DType::kF16)) {
    std::vector<uint16_t> tmp(n);
    if (dst.dtype() == DType::kBF16) {
      f32_to_bf16(src, tmp.data(), n);
    } else {
      f32_to_f16(src, tmp.data(), n);
    }
    backend.copy_from_host(dst, tmp.data());
    return;
  }
  impl_->fail_tensor(name, std::string("stored as ") + stored + " but the destination is " +
                               dtype_name(dst.dtype()) +
                               "; only bf16/f16 <-> f32 are converted on load");
}

// ---- writer -------------------------------------------------------------------------------------

void write_safetensors(const std::filesystem::path& path,
                       const std::vector<NamedHostTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string file = io_detail::quoted(path);
  auto fail_tensor = [&](const std::string& name, const std::string& message) {
    throw IoError("io", "cannot write " + file + ": tensor '" + name + "': " + message);
  };
  ordered_json header = ordered_json::object();
  if (!metadata.empty()) {
    ordered_json m = ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  std::vector<uint64_t> sizes;
  sizes.reserve(tensors.size());
  uint64_t offset = 0;
  for (const NamedHostTensor& t : tensors) {
    if (t.name.empty()) fail_tensor(t.name, "tensor names must not be empty");
    if (t.name == "__metadata__") fail_tensor(t.name, "the name is reserved by the format");
    if (header.contains(t.name)) fail_tensor(t.name, "the name is used twice");
    uint64_t nbytes = dtype_size(t.dtype);
    for (int64_t d : t.shape) {
      if (d < 0) fail_tensor(t.name, "negative dimension in shape " + to_string(t.shape));
      if (__builtin_mul_overflow(nbytes, static_cast<uint64_t>(d), &nbytes)) {
        fail_tensor(t.name, "shape " + to_string(t.shape) + " overflows 64-bit byte counts");
      }
    }
    if (nbytes > 0 && t.data == nullptr) fail_tensor(t.name, "data pointer is null");
    if (__builtin_add_overflow(offset, nbytes, &offset)) {
      fail_tensor(t.name, "total size overflows 64-bit byte counts");
    }
    header[t.name] = {{"dtype", safetensors_dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset - nbytes, offset}}};
    sizes.push_back(nbytes);
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const ordered_json::exception& e) {
    throw IoError("io", "cannot write " + file +
                            ": a tensor name or metadata entry is not valid "
                            "UTF-8 (" +
                            e.what() + ")");
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // keep the data 8-byte aligned

  unsigned char len[8];
  uint64_t n = text.size();
  for (unsigned char& c : len) {
    c = static_cast<unsigned char>(n & 0xFF);
    n >>= 8;
  }
  AtomicFileWriter writer(path);
  writer.write(len, sizeof(len));
  writer.write(text.data(), text.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (sizes[i] > 0) writer.write(tensors[i].data, static_cast<size_t>(sizes[i]));
  }
  writer.commit();
}

}  // namespace nnkit
