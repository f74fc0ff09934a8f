#include "nnkit/io/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <limits>

#include "io_test_util.h"
#include "nnkit/io/atomic_file.h"
#include "nnkit/io/half.h"

namespace nnkit {
namespace {

using test::expect_io_error;
using test::safetensors_bytes;
using test::TempDir;

template <typename T>
std::vector<T> as_vector(std::span<const std::byte> bytes) {
  std::vector<T> out(bytes.size() / sizeof(T));
  std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

TEST(Safetensors, RoundTripF32Bf16I32AndMetadata) {
  TempDir dir;
  const std::vector<float> w = {1.0f, -2.0f, 3.5f, 0.25f, 5.0f, 6.0f};
  std::vector<uint16_t> h = {f32_to_bf16(1.0f), f32_to_bf16(-0.5f), f32_to_bf16(8.0f)};
  const std::vector<int32_t> ids = {7, -3, 2147483647, 0};
  const std::vector<NamedHostTensor> tensors = {
      {"model.layers.0.mlp.w1.weight", DType::kF32, {2, 3}, w.data()},
      {"model.norm.weight", DType::kBF16, {3}, h.data()},
      {"ids", DType::kI32, {2, 2}, ids.data()},
      {"empty", DType::kF32, {0, 4}, nullptr},
      {"scalar", DType::kF32, {}, w.data()},
  };
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"nnkit.step", "120"}};
  const auto path = dir / "m.safetensors";
  write_safetensors(path, tensors, meta);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.safetensors"});

  // Header length is a multiple of 8, so the data is 8-byte aligned.
  const std::string raw = read_file(path);
  uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u);

  SafetensorsFile f(path);
  EXPECT_EQ(f.label(), path.string());
  // File order of offsets (the zero-sized tensor sorts at its offset, before "scalar").
  EXPECT_EQ(f.names(), (std::vector<std::string>{"model.layers.0.mlp.w1.weight",
                                                 "model.norm.weight", "ids", "empty", "scalar"}));
  EXPECT_TRUE(f.has("ids"));
  EXPECT_FALSE(f.has("nope"));
  EXPECT_EQ(f.metadata(), meta);

  const TensorInfo& a = f.info("model.layers.0.mlp.w1.weight");
  EXPECT_EQ(a.dtype, DType::kF32);
  EXPECT_EQ(a.shape, (Shape{2, 3}));
  EXPECT_EQ(a.begin, 0u);
  EXPECT_EQ(a.end, 24u);
  EXPECT_EQ(as_vector<float>(f.bytes("model.layers.0.mlp.w1.weight")), w);
  EXPECT_EQ(f.info("model.norm.weight").dtype, DType::kBF16);
  EXPECT_EQ(as_vector<uint16_t>(f.bytes("model.norm.weight")), h);
  EXPECT_EQ(as_vector<int32_t>(f.bytes("ids")), ids);
  EXPECT_EQ(f.info("empty").nbytes(), 0u);
  EXPECT_EQ(f.info("scalar").shape, Shape{});
  EXPECT_EQ(as_vector<float>(f.bytes("scalar")), std::vector<float>{1.0f});

  // The same bytes parse from memory too.
  SafetensorsFile m = SafetensorsFile::from_bytes(raw, "mem");
  EXPECT_EQ(m.names(), f.names());
  SafetensorsFile moved = std::move(m);
  EXPECT_EQ(as_vector<int32_t>(moved.bytes("ids")), ids);
}

TEST(Safetensors, EmptyFileWithNoTensors) {
  TempDir dir;
  write_safetensors(dir / "e.safetensors", {});
  SafetensorsFile f(dir / "e.safetensors");
  EXPECT_TRUE(f.names().empty());
  EXPECT_TRUE(f.metadata().empty());
}

TEST(Safetensors, ReadsHeadersWrittenByOtherTools) {
  // As the Python library writes it: metadata first, keys unsorted, little trailing padding.
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"F16","shape":[1],"data_offsets":[4,6]},)"
      R"("a":{"dtype":"I64","shape":[],"data_offsets":[6,14]},)"
      R"("c":{"shape":[4],"dtype":"U8","data_offsets":[0,4]}}  )";
  const std::string data =
      std::string("\x01\x02\x03\x04", 4) + std::string("\x00\x3C", 2) + std::string(8, '\0');
  SafetensorsFile f = SafetensorsFile::from_bytes(safetensors_bytes(header, data));
  EXPECT_EQ(f.names(), (std::vector<std::string>{"c", "b", "a"}));
  EXPECT_EQ(f.info("a").dtype, DType::kI64);
  EXPECT_EQ(f16_to_f32(as_vector<uint16_t>(f.bytes("b"))[0]), 1.0f);
}

TEST(Safetensors, MissingTensorListsSomeNames) {
  SafetensorsFile f = SafetensorsFile::from_bytes(
      safetensors_bytes(R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "a"), "f.st");
  expect_io_error([&] { f.info("y"); }, {"'f.st'", "has no tensor 'y'", "1 tensors", "'x'"});
  expect_io_error([&] { f.bytes("y"); }, {"has no tensor 'y'"});
}

// ---- malformed files: every case names the file and says what is wrong ------------------------

void expect_rejected(const std::string& bytes, std::initializer_list<std::string> fragments) {
  TempDir dir;
  const auto path = dir / "bad.safetensors";
  test::write_raw(path, bytes);
  std::vector<std::string> all(fragments);
  all.push_back("bad.safetensors");
  try {
    SafetensorsFile f(path);
    ADD_FAILURE() << "expected an IoError";
  } catch (const IoError& e) {
    for (const auto& s : all) {
      EXPECT_NE(std::string(e.what()).find(s), std::string::npos)
          << "message lacks '" << s << "':\n  " << e.what();
    }
  }
  // The in-memory parser agrees.
  expect_io_error([&] { SafetensorsFile::from_bytes(bytes); }, fragments);
}

const std::string kOne = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

TEST(SafetensorsMalformed, TooShort) {
  expect_rejected("", {"file is 0 bytes", "8-byte header length"});
  expect_rejected("abc", {"file is 3 bytes"});
}

TEST(SafetensorsMalformed, HeaderLengthU64Max) {
  expect_rejected(test::u64_le(std::numeric_limits<uint64_t>::max()) + "{}",
                  {"header length 18446744073709551615", "exceeds the limit of 100000000 bytes",
                   "corrupt or not a safetensors file"});
}

TEST(SafetensorsMalformed, HeaderLengthPastEof) {
  expect_rejected(test::u64_le(100) + "{}",
                  {"header length 100", "runs past the end of the file", "(10 bytes)"});
}

TEST(SafetensorsMalformed, HeaderJustOverTheCap) {
  expect_rejected(test::u64_le(100'000'001) + std::string(16, ' '), {"exceeds the limit"});
}

TEST(SafetensorsMalformed, PickleRenamed) {
  // What torch.save writes with protocol 2: PROTO 2, then a pickled dict.
  const std::string pickle("\x80\x02\x7d\x71\x00\x28\x58\x01\x00\x00\x00\x77\x71\x01", 14);
  expect_rejected(pickle, {"Python pickle", "safetensors.torch.save_file"});
}

TEST(SafetensorsMalformed, ZipRenamed) {
  expect_rejected(std::string("PK\x03\x04\x14\x00\x00\x00\x08\x00", 10), {"zip archive"});
}

TEST(SafetensorsMalformed, InvalidJson) {
  expect_rejected(safetensors_bytes("{\"t\": [1, 2", ""), {"header is not valid JSON", "parse"});
  expect_rejected(safetensors_bytes("", ""), {"header is not valid JSON"});
}

TEST(SafetensorsMalformed, HeaderNotAnObject) {
  expect_rejected(safetensors_bytes("[1, 2, 3]", ""), {"header must be a JSON object", "array"});
}

TEST(SafetensorsMalformed, DeepNesting) {
  expect_rejected(safetensors_bytes(std::string(200, '[') + std::string(200, ']'), ""),
                  {"nests deeper"});
}

TEST(SafetensorsMalformed, EntryNotAnObject) {
  expect_rejected(safetensors_bytes(R"({"t": 5})", ""), {"tensor 't'", "must be an object"});
}

TEST(SafetensorsMalformed, MissingAndUnknownFields) {
  expect_rejected(safetensors_bytes(R"({"t":{"dtype":"F32","shape":[0]}})", ""),
                  {"tensor 't'", "missing field 'data_offsets'"});
  expect_rejected(safetensors_bytes(R"({"t":{"shape":[0],"data_offsets":[0,0]}})", ""),
                  {"missing field 'dtype'"});
  expect_rejected(
      safetensors_bytes(R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[0,0],"x":1}})", ""),
      {"unknown field 'x'"});
}

TEST(SafetensorsMalformed, WrongFieldTypes) {
  expect_rejected(safetensors_bytes(R"({"t":{"dtype":3,"shape":[0],"data_offsets":[0,0]}})", ""),
                  {"dtype must be a string"});
  expect_rejected(safetensors_bytes(R"({"t":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", ""),
                  {"shape must be an array"});
  expect_rejected(
      safetensors_bytes(R"({"t":{"dtype":"F32","shape":[1.5],"data_offsets":[0,8]}})", ""),
      {"shape dimension 1.5 is not a non-negative integer"});
  expect_rejected(
      safetensors_bytes(R"({"t":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", ""),
      {"is not a non-negative integer"});
  expect_rejected(
      safetensors_bytes(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", ""),
      {"negative dimension -2"});
  expect_rejected(safetensors_bytes(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", ""),
                  {"data_offsets must be [begin, end]"});
  expect_rejected(
      safetensors_bytes(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", ""),
      {"data_offsets must be [begin, end]"});
  expect_rejected(safetensors_bytes(R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})",
                                    std::string(8, '\0')),
                  {"end before they begin"});
}

TEST(SafetensorsMalformed, UnknownDtype) {
  expect_rejected(safetensors_bytes(R"({"t":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})",
                                    std::string(8, '\0')),
                  {"tensor 't'", "dtype 'F64' is not supported", "F32, F16, BF16, I32, I64, U8"});
  expect_rejected(safetensors_bytes(R"({"t":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}})",
                                    std::string(1, '\0')),
                  {"dtype 'Q4'"});
}

TEST(SafetensorsMalformed, ShapeByteSpanMismatch) {
  expect_rejected(
      safetensors_bytes(R"({"t":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})",
                        std::string(20, '\0')),
      {"tensor 't'", "shape [2, 3] of F32 needs 24 bytes", "data_offsets [0, 20] span 20"});
}

TEST(SafetensorsMalformed, ShapeProductOverflow) {
  // 2^32 * 2^32 * 4 bytes wraps to 0 in 64 bits, which would match data_offsets [0, 0].
  expect_rejected(
      safetensors_bytes(
          R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", ""),
      {"tensor 't'", "overflows"});
  expect_rejected(
      safetensors_bytes(
          R"({"t":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,0]}})", ""),
      {"too large"});
}

TEST(SafetensorsMalformed, OverlappingOffsets) {
  const std::string h = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  expect_rejected(safetensors_bytes(h, std::string(12, '\0')),
                  {"tensor 'b'", "data_offsets [4, 12] overlap tensor 'a'"});
}

TEST(SafetensorsMalformed, IdenticalOffsetsOverlap) {
  const std::string h = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  expect_rejected(safetensors_bytes(h, std::string(8, '\0')), {"overlap tensor 'a'"});
}

TEST(SafetensorsMalformed, GappedOffsets) {
  const std::string h = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                        R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})";
  expect_rejected(safetensors_bytes(h, std::string(12, '\0')),
                  {"tensor 'b'", "leave a gap of 4 bytes after tensor 'a'"});
  expect_rejected(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                    std::string(8, '\0')),
                  {"gap of 4 bytes after the header"});
}

TEST(SafetensorsMalformed, OffsetsPastEof) {
  expect_rejected(safetensors_bytes(kOne, std::string(4, '\0')),
                  {"tensor 't'", "data_offsets [0, 8] run past the end of the data (4 bytes)"});
}

TEST(SafetensorsMalformed, TrailingBytes) {
  expect_rejected(safetensors_bytes(kOne, std::string(9, '\0')),
                  {"1 trailing bytes after the last tensor"});
  expect_rejected(safetensors_bytes("{}", "x"), {"1 trailing bytes"});
}

TEST(SafetensorsMalformed, DuplicateNames) {
  const std::string h = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                        R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";
  expect_rejected(safetensors_bytes(h, std::string(8, '\0')),
                  {"key 'a' twice", "duplicate tensor name"});
  expect_rejected(
      safetensors_bytes(R"({"t":{"dtype":"F32","dtype":"F32","shape":[0],"data_offsets":[0,0]}})",
                        ""),
      {"key 'dtype' twice"});
}

TEST(SafetensorsMalformed, BadMetadata) {
  expect_rejected(safetensors_bytes(R"({"__metadata__":[1]})", ""), {"__metadata__ must be"});
  expect_rejected(safetensors_bytes(R"({"__metadata__":{"step":3}})", ""),
                  {"__metadata__ value for 'step' must be a string"});
}

TEST(SafetensorsMalformed, EmptyName) {
  expect_rejected(safetensors_bytes(R"({"":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}})", ""),
                  {"empty name"});
}

TEST(SafetensorsMalformed, MissingFileAndDirectory) {
  TempDir dir;
  expect_io_error([&] { SafetensorsFile f(dir / "none.safetensors"); },
                  {"none.safetensors", "no such file"});
  expect_io_error([&] { SafetensorsFile f(dir.path()); }, {"is a directory"});
}

TEST(SafetensorsWriter, RejectsBadInput) {
  TempDir dir;
  const float x[2] = {1, 2};
  expect_io_error(
      [&] {
        write_safetensors(dir / "w", {{"", DType::kF32, {2}, x}});
      },
      {"must not be empty"});
  expect_io_error(
      [&] {
        write_safetensors(dir / "w", {{"a", DType::kF32, {2}, x}, {"a", DType::kF32, {2}, x}});
      },
      {"tensor 'a'", "used twice"});
  expect_io_error(
      [&] {
        write_safetensors(dir / "w", {{"__metadata__", DType::kF32, {2}, x}});
      },
      {"reserved"});
  expect_io_error(
      [&] {
        write_safetensors(dir / "w", {{"a", DType::kF32, {-1}, x}});
      },
      {"negative dimension"});
  expect_io_error(
      [&] {
        write_safetensors(dir / "w", {{"a", DType::kF32, {2}, nullptr}});
      },
      {"null"});
  expect_io_error(
      [&] {
        write_safetensors(dir / "w", {{"bad\xff", DType::kF32, {2}, x}});
      },
      {"UTF-8"});
  EXPECT_TRUE(dir.entries().empty());  // nothing half-written
}

}  // namespace
}  // namespace nnkit
