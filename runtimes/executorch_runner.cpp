// Runs an ExecuTorch .pte the way a phone does: C++ runtime + XNNPACK, no libtorch.
// Built against the libexecutorch*.so and headers that the executorch wheel ships.
//
//   executorch_runner MODEL.pte DIR WARMUP ITERS [KERNEL_LIBRARY...]
//
// Each KERNEL_LIBRARY (a shared library of custom kernels the artifact ships, e.g. edgekit's fused selective scan)
// is loaded before the program: its static initialisers register its ops with this runtime's kernel registry.
//
// Input i of `forward` is two files, written by runtimes/executorch_runner.py:
//   DIR/in<i>.shape  one line "DTYPE D0,D1,...": DTYPE as edgekit's manifest names it (float32, float16, int64,
//                    int32, int8, uint8, bool), the dims of this call's input (none for a scalar: "float32 ").
//   DIR/in<i>.bin    its raw bytes in C order: exactly D0*D1*...*itemsize of them.
// An input must have the program's dtype and rank, and no dim larger than the program's planned size (a program
// exported with dynamic dims plans for their upper bounds; a static dim takes only its size, which ExecuTorch
// checks when the input is set). One that does not fit is refused: DIR/error.json gets
//   {"input": i, "shape": [...], "dtype": "...", "bound": [...], "bound_dtype": "...", "reason": "..."}
// the reason goes to stderr, and the exit status is 2. Any other failure: a message on stderr, exit status 1.
//
// It runs `forward` WARMUP untimed + max(1, ITERS) timed times, writes DIR/out<i>.bin (each output at the shape
// this call produced) and prints one JSON line: {"shapes": [[...], ...], "times_ms": [...]}.
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include <dlfcn.h>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

using executorch::aten::ScalarType;
using executorch::extension::from_blob;
using executorch::extension::TensorPtr;
using executorch::extension::module::Module;
using executorch::runtime::EValue;

static constexpr int EXIT_FAILED = 1, EXIT_REFUSED = 2;
static constexpr size_t MAX_RANK = 16;

struct Dtype {
  const char* name;
  ScalarType type;
  size_t itemsize;
};
static const Dtype DTYPES[] = {  // edgekit.artifact.DTYPES
    {"float32", ScalarType::Float, 4}, {"float16", ScalarType::Half, 2}, {"int64", ScalarType::Long, 8},
    {"int32", ScalarType::Int, 4},     {"int8", ScalarType::Char, 1},    {"uint8", ScalarType::Byte, 1},
    {"bool", ScalarType::Bool, 1}};

static const Dtype* dtype_named(const std::string& name) {
  for (const auto& d : DTYPES)
    if (name == d.name) return &d;
  return nullptr;
}

static std::string dtype_name(ScalarType type) {
  for (const auto& d : DTYPES)
    if (type == d.type) return d.name;
  return "scalar type " + std::to_string(int(type));
}

static int fail(const std::string& msg) {
  std::cerr << "executorch_runner: " << msg << std::endl;
  return EXIT_FAILED;
}

template <typename T>
static std::string join(const T& dims) {
  std::string s;
  for (auto d : dims) s += (s.empty() ? "" : ",") + std::to_string(d);
  return s;
}

static std::string json_text(const std::string& s) {  // printable ASCII but quotes and backslashes; '?' for the rest
  std::string out;
  for (char c : s) out += (c == '"' || c == '\\' || !std::isprint(static_cast<unsigned char>(c))) ? '?' : c;
  return "\"" + out + "\"";
}

struct Input {
  std::string dtype;
  std::vector<int64_t> shape;
};

// An input the program cannot take: DIR/error.json for the host, the reason on stderr, exit status 2.
static int refuse(const std::string& dir, size_t i, const Input& in,
                  const executorch::runtime::TensorInfo& bound, const std::string& reason) {
  std::ofstream(dir + "/error.json")
      << "{\"input\": " << i << ", \"shape\": [" << join(in.shape) << "], \"dtype\": " << json_text(in.dtype)
      << ", \"bound\": [" << join(bound.sizes()) << "], \"bound_dtype\": " << json_text(dtype_name(bound.scalar_type()))
      << ", \"reason\": " << json_text(reason) << "}\n";
  std::cerr << "executorch_runner: input " << i << " [" << join(in.shape) << "] " << in.dtype << ": " << reason
            << std::endl;
  return EXIT_REFUSED;
}

// DIR/in<i>.shape: "DTYPE D0,D1,..."; false when it is missing or malformed.
static bool read_shape(const std::string& path, Input& in) {
  std::ifstream f(path);
  std::string line, dims;
  if (!std::getline(f, line)) return false;
  const auto space = line.find(' ');
  if (space == std::string::npos) return false;
  in.dtype = line.substr(0, space);
  std::stringstream rest(line.substr(space + 1));
  while (std::getline(rest, dims, ',')) {
    if (dims.empty() || dims.size() > 12 || !std::all_of(dims.begin(), dims.end(), ::isdigit)) return false;
    in.shape.push_back(std::stoll(dims));
    if (in.shape.size() > MAX_RANK) return false;
  }
  return true;
}

// Why `in` does not fit the program's input `bound`, or "" when it does.
static std::string misfit(const Input& in, const executorch::runtime::TensorInfo& bound) {
  const auto want = dtype_name(bound.scalar_type());
  if (in.dtype != want) return "dtype " + in.dtype + ", the program takes " + want;
  if (in.shape.size() != bound.sizes().size())
    return "rank " + std::to_string(in.shape.size()) + ", the program takes rank " +
           std::to_string(bound.sizes().size()) + " [" + join(bound.sizes()) + "]";
  for (size_t d = 0; d < in.shape.size(); ++d)
    if (in.shape[d] > bound.sizes()[d])
      return "dim " + std::to_string(d) + " is " + std::to_string(in.shape[d]) + ", above the program's bound " +
             std::to_string(bound.sizes()[d]) + " (its planned shape is [" + join(bound.sizes()) + "])";
  return "";
}

static bool read_exact(const std::string& path, std::vector<char>& buf, size_t nbytes) {
  std::ifstream f(path, std::ios::binary);
  buf.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return buf.size() == nbytes;
}

int main(int argc, char** argv) {
  if (argc < 5) return fail("usage: executorch_runner MODEL.pte DIR WARMUP ITERS [KERNEL_LIBRARY...]");
  const std::string dir = argv[2];
  const int warmup = std::stoi(argv[3]), iters = std::max(1, std::stoi(argv[4]));
  std::remove((dir + "/error.json").c_str());  // an earlier run's refusal (adb reuses DIR) is not this run's
  for (int i = 5; i < argc; ++i)  // kept loaded for the life of the process: the registry points into them
    if (dlopen(argv[i], RTLD_NOW | RTLD_LOCAL) == nullptr) return fail(std::string("cannot load ") + dlerror());

  Module module(argv[1], Module::LoadMode::Mmap);
  auto meta = module.method_meta("forward");
  if (!meta.ok()) return fail("cannot read method 'forward' (error " + std::to_string(int(meta.error())) + ")");
  const auto loaded = module.load_method("forward");  // before timing: the first forward would do it
  if (loaded != executorch::runtime::Error::Ok)
    return fail("cannot load method 'forward' (error " + std::to_string(int(loaded)) + ")");

  std::vector<std::vector<char>> buffers(meta->num_inputs());
  std::vector<TensorPtr> tensors;
  std::vector<EValue> inputs;
  for (size_t i = 0; i < meta->num_inputs(); ++i) {
    auto info = meta->input_tensor_meta(i);
    if (!info.ok()) return fail("input " + std::to_string(i) + " is not a tensor");
    const std::string stem = dir + "/in" + std::to_string(i);
    Input in;
    if (!read_shape(stem + ".shape", in))
      return fail(stem + ".shape: missing or not one line \"DTYPE D0,D1,...\" (at most " + std::to_string(MAX_RANK) +
                  " dims of at most 12 digits)");
    const auto why = misfit(in, *info);
    if (!why.empty()) return refuse(dir, i, in, *info, why);
    size_t nbytes = dtype_named(in.dtype)->itemsize;  // misfit() found the program's dtype: one of DTYPES
    for (auto d : in.shape) nbytes *= size_t(d);      // each dim <= the program's: no overflow
    if (!read_exact(stem + ".bin", buffers[i], nbytes))
      return fail(stem + ".bin: expected " + std::to_string(nbytes) + " bytes (" + in.dtype + " [" + join(in.shape) +
                  "]), found " + std::to_string(buffers[i].size()));
    std::vector<executorch::aten::SizesType> sizes(in.shape.begin(), in.shape.end());
    tensors.push_back(from_blob(buffers[i].data(), sizes, info->scalar_type()));
    inputs.emplace_back(tensors.back());
    const auto set = module.set_input(inputs.back(), i);  // a static dim of another size is refused here
    if (set != executorch::runtime::Error::Ok)
      return refuse(dir, i, in, *info, "the program does not take this shape (error " + std::to_string(int(set)) +
                    "): its static dims take only their planned size [" + join(info->sizes()) + "]");
  }

  std::vector<double> times;
  for (int k = 0; k < warmup + iters; ++k) {
    auto t0 = std::chrono::steady_clock::now();
    auto result = module.forward(inputs);
    auto t1 = std::chrono::steady_clock::now();
    if (!result.ok()) return fail("forward failed (error " + std::to_string(int(result.error())) + ")");
    if (k >= warmup) times.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  auto outputs = module.forward(inputs);  // Result is move-only: keep the outputs of one more call
  if (!outputs.ok()) return fail("forward failed (error " + std::to_string(int(outputs.error())) + ")");

  std::string shapes;
  for (size_t i = 0; i < outputs->size(); ++i) {
    const auto& t = (*outputs)[i].toTensor();
    std::ofstream(dir + "/out" + std::to_string(i) + ".bin", std::ios::binary)
        .write(static_cast<const char*>(t.const_data_ptr()), t.nbytes());
    shapes += (i ? ",[" : "[") + join(t.sizes()) + "]";
  }
  std::string ms;
  for (double t : times) ms += (ms.empty() ? "" : ",") + std::to_string(t);
  std::printf("{\"shapes\": [%s], \"times_ms\": [%s]}\n", shapes.c_str(), ms.c_str());
  return 0;
}
