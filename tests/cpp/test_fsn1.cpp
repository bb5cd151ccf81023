// C++ unit test of csrc/fsn1.h and csrc/cpu/fsn1.cpp against the Random123 known answer and the FSN1
// known-answer vectors (tests/data/fsn1_vectors.json, from an independent implementation).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cpu/fsn1_cpu.h"
#include "expect.h"
#include "fsn1.h"

#ifndef FSN1_VECTORS_PATH
#error "FSN1_VECTORS_PATH must name tests/data/fsn1_vectors.json"
#endif

namespace {

using fastsde_test::g_failures;

// A tiny JSON reader: objects, arrays, strings without escapes, numbers kept as their text, literals.
struct Json {
  enum Kind { kNull, kBool, kNumber, kString, kArray, kObject } kind = kNull;
  std::string text;  // number text or string value
  std::vector<Json> items;
  std::map<std::string, Json> fields;

  const Json& operator[](const std::string& key) const {
    auto it = fields.find(key);
    if (it == fields.end()) {
      std::fprintf(stderr, "missing key %s\n", key.c_str());
      std::exit(2);
    }
    return it->second;
  }
  uint64_t as_u64() const { return std::strtoull(text.c_str(), nullptr, 10); }
  double as_double() const { return std::strtod(text.c_str(), nullptr); }
};

class JsonReader {
 public:
  explicit JsonReader(std::string s) : s_(std::move(s)) {}

  Json parse() {
    Json v = value();
    skip_ws();
    if (pos_ != s_.size()) fail("trailing characters");
    return v;
  }

 private:
  [[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "JSON parse error at offset %zu: %s\n", pos_, what);
    std::exit(2);
  }
  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\r' || s_[pos_] == '\t')) ++pos_;
  }
  char peek() {
    skip_ws();
    if (pos_ >= s_.size()) fail("unexpected end");
    return s_[pos_];
  }
  void expect(char c) {
    if (peek() != c) fail("unexpected character");
    ++pos_;
  }
  std::string string() {
    expect('"');
    const size_t end = s_.find('"', pos_);
    if (end == std::string::npos) fail("unterminated string");
    std::string out = s_.substr(pos_, end - pos_);
    if (out.find('\\') != std::string::npos) fail("escapes are not supported");
    pos_ = end + 1;
    return out;
  }
  Json value() {
    Json v;
    const char c = peek();
    if (c == '{') {
      v.kind = Json::kObject;
      ++pos_;
      if (peek() == '}') return ++pos_, v;
      for (;;) {
        std::string key = string();
        expect(':');
        v.fields[key] = value();
        if (peek() == ',') { ++pos_; continue; }
        expect('}');
        return v;
      }
    }
    if (c == '[') {
      v.kind = Json::kArray;
      ++pos_;
      if (peek() == ']') return ++pos_, v;
      for (;;) {
        v.items.push_back(value());
        if (peek() == ',') { ++pos_; continue; }
        expect(']');
        return v;
      }
    }
    if (c == '"') {
      v.kind = Json::kString;
      v.text = string();
      return v;
    }
    const size_t start = pos_;
    while (pos_ < s_.size() && std::string(",]} \n\r\t").find(s_[pos_]) == std::string::npos) ++pos_;
    v.text = s_.substr(start, pos_ - start);
    if (v.text == "true" || v.text == "false") v.kind = Json::kBool;
    else if (v.text == "null") v.kind = Json::kNull;
    else if (!v.text.empty()) v.kind = Json::kNumber;
    else fail("empty value");
    return v;
  }

  std::string s_;
  size_t pos_ = 0;
};

void test_random123_known_answer() {
  using namespace fastsde::fsn1;
  const Words4 w = philox4x32_10(Words4{{0, 0, 0, 0}}, Key2{{0, 0}});
  const uint32_t want[4] = {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u};
  for (int i = 0; i < 4; ++i) EXPECT(w.w[i] == want[i], "word %d: %08x != %08x", i, w.w[i], want[i]);
  // Random123's second known answer: counter = key = all ones.
  const Words4 w1 = philox4x32_10(Words4{{~0u, ~0u, ~0u, ~0u}}, Key2{{~0u, ~0u}});
  const uint32_t want1[4] = {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu};
  for (int i = 0; i < 4; ++i) EXPECT(w1.w[i] == want1[i], "word %d: %08x != %08x", i, w1.w[i], want1[i]);
}

int test_vectors(const Json& vectors) {
  using namespace fastsde::fsn1;
  int checked = 0;
  for (const Json& v : vectors.items) {
    const uint64_t seed = v["seed"].as_u64();
    const uint64_t sample = v["sample"].as_u64();
    const uint64_t draw = v["draw"].as_u64();
    const uint64_t element = v["element"].as_u64();
    const Words4 w = fsn1_block(seed, uint32_t(sample), draw, uint32_t(element >> 2));
    for (int i = 0; i < 4; ++i) {
      const uint32_t want = uint32_t(std::strtoul(v["philox"].items.at(i).text.c_str(), nullptr, 16));
      EXPECT(w.w[i] == want, "seed %llu sample %llu draw %llu element %llu word %d: %08x != %08x",
             (unsigned long long)seed, (unsigned long long)sample, (unsigned long long)draw,
             (unsigned long long)element, i, w.w[i], want);
    }
    const int pair = int(element & 3) >> 1;
    const double u = v["u"].as_double(), vv = v["v"].as_double();
    EXPECT(fsn1_uniform_u<double>(w.w[2 * pair]) == u, "element %llu: u", (unsigned long long)element);
    EXPECT(fsn1_uniform_v<double>(w.w[2 * pair + 1]) == vv, "element %llu: v", (unsigned long long)element);
    EXPECT(double(fsn1_uniform_u<float>(w.w[2 * pair])) == u, "element %llu: float u", (unsigned long long)element);
    EXPECT(double(fsn1_uniform_v<float>(w.w[2 * pair + 1])) == vv, "element %llu: float v", (unsigned long long)element);

    const double normal = v["normal"].as_double();
    const float z32 = fsn1_normals4(w).z[element & 3];
    const double z64 = fsn1_normals4_f64(w).z[element & 3];
    EXPECT(std::fabs(double(z32) - normal) <= 2e-6, "element %llu: float32 normal %.9g vs %.17g",
           (unsigned long long)element, double(z32), normal);
    EXPECT(std::fabs(z64 - normal) <= 1e-12, "element %llu: float64 normal %.17g vs %.17g",
           (unsigned long long)element, z64, normal);
    EXPECT(fsn1_normal_at<float>(seed, uint32_t(sample), draw, element) == z32, "fsn1_normal_at<float>");

    // Through the CPU entry point, for elements small enough to materialize a row (numel = element + 1).
    if (element < 4096) {
      const int64_t numel = int64_t(element) + 1;
      const int64_t ids[2] = {int64_t(sample), int64_t(sample)};
      std::vector<float> out32(2 * numel, NAN);
      std::vector<double> out64(2 * numel, NAN);
      fastsde::fsn1_normal_cpu(out32.data(), 2, numel, seed, ids, draw);
      fastsde::fsn1_normal_cpu(out64.data(), 2, numel, seed, ids, draw);
      EXPECT(out32[numel - 1] == z32 && out32[2 * numel - 1] == z32, "cpu float32 element %llu",
             (unsigned long long)element);
      EXPECT(out64[numel - 1] == z64 && out64[2 * numel - 1] == z64, "cpu float64 element %llu",
             (unsigned long long)element);
    }
    ++checked;
  }
  return checked;
}

// The CPU entry point fills every element of a multi-chunk, odd-sized batch and agrees with the header.
void test_cpu_matches_header() {
  using namespace fastsde::fsn1;
  const int64_t batch = 3, numel = 4 * 1024 * 3 + 7;  // several chunks + a partial block: nothing divides
  const int64_t ids[batch] = {0, 5, int64_t(1) << 31};
  const uint64_t seed = ~uint64_t(0), draw = (uint64_t(1) << 32) + 1;
  std::vector<float> out(batch * numel, NAN);
  fastsde::fsn1_normal_cpu(out.data(), batch, numel, seed, ids, draw);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < numel; j += 97) {
      const float want = fsn1_normal_at<float>(seed, uint32_t(ids[b]), draw, uint64_t(j));
      EXPECT(out[b * numel + j] == want, "row %lld element %lld", (long long)b, (long long)j);
    }
  for (int64_t b = 0; b < batch; ++b)  // the tail of each row
    for (int64_t j = numel - 8; j < numel; ++j)
      EXPECT(out[b * numel + j] == fsn1_normal_at<float>(seed, uint32_t(ids[b]), draw, uint64_t(j)), "tail");
}

}  // namespace

int main() {
  std::ifstream file(FSN1_VECTORS_PATH);
  if (!file) {
    std::fprintf(stderr, "cannot open %s\n", FSN1_VECTORS_PATH);
    return 2;
  }
  std::stringstream buf;
  buf << file.rdbuf();
  const Json doc = JsonReader(buf.str()).parse();

  test_random123_known_answer();
  const int checked = test_vectors(doc["vectors"]);
  EXPECT(checked == 420, "expected 420 vectors, found %d", checked);
  test_cpu_matches_header();

  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("fsn1: Random123 known answers and %d FSN1 vectors OK\n", checked);
  return 0;
}
