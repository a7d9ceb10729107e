// Runs an ExecuTorch .pte the way a phone does: C++ runtime + XNNPACK, no libtorch.
// Built against the libexecutorch*.so and headers that the executorch wheel ships.
//
//   executorch_runner MODEL.pte DIR WARMUP ITERS
//
// Reads DIR/in<i>.bin (raw bytes, sized by the program's input metadata), runs `forward`
// WARMUP untimed + max(1, ITERS) timed times, writes DIR/out<i>.bin and prints one JSON
// line: {"shapes": [[...], ...], "times_ms": [...]}.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

using executorch::extension::from_blob;
using executorch::extension::TensorPtr;
using executorch::extension::module::Module;
using executorch::runtime::EValue;

static int fail(const std::string& msg) {
  std::cerr << "executorch_runner: " << msg << std::endl;
  return 1;
}

static bool read_exact(const std::string& path, std::vector<char>& buf, size_t nbytes) {
  std::ifstream f(path, std::ios::binary);
  buf.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return buf.size() == nbytes;
}

int main(int argc, char** argv) {
  if (argc != 5) return fail("usage: executorch_runner MODEL.pte DIR WARMUP ITERS");
  const std::string dir = argv[2];
  const int warmup = std::stoi(argv[3]), iters = std::max(1, std::stoi(argv[4]));

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
    const std::string path = dir + "/in" + std::to_string(i) + ".bin";
    if (!read_exact(path, buffers[i], info->nbytes()))
      return fail(path + ": expected " + std::to_string(info->nbytes()) + " bytes");
    std::vector<executorch::aten::SizesType> sizes(info->sizes().begin(), info->sizes().end());
    tensors.push_back(from_blob(buffers[i].data(), sizes, info->scalar_type()));
    inputs.emplace_back(tensors.back());
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
    std::string dims;
    for (auto d : t.sizes()) dims += (dims.empty() ? "" : ",") + std::to_string(d);
    shapes += (i ? ",[" : "[") + dims + "]";
  }
  std::string ms;
  for (double t : times) ms += (ms.empty() ? "" : ",") + std::to_string(t);
  std::printf("{\"shapes\": [%s], \"times_ms\": [%s]}\n", shapes.c_str(), ms.c_str());
  return 0;
}
