// Runs a program N times with ExecuTorch's ETDump event tracer and writes the trace: per-operator
// times, the XNNPACK delegate's own operators included (peers/profile.py reads it with the Inspector).
//
//   peers-etdump PROGRAM.pte OUT.etdp RUNS THREADS METHOD
//
// The input is zeros in the program's own shape and dim order: operator times do not depend on it.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <executorch/devtools/etdump/etdump_flatcc.h>
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

// threadpool.h is not shipped in the wheel: the member we call, as declared in the same release.
namespace executorch::extension::threadpool {
class ThreadPool final {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

using executorch::extension::Module;
using executorch::runtime::Error;

int die(const std::string& message) {
  std::fprintf(stderr, "error: %s\n", message.c_str());
  return 1;
}

int main(int argc, char** argv) {
  if (argc != 6) {
    return die("usage: peers-etdump PROGRAM.pte OUT.etdp RUNS THREADS METHOD");
  }
  const std::string method = argv[5];
  int runs = std::atoi(argv[3]), threads = std::atoi(argv[4]);
  if (runs < 1 || threads < 1) {
    return die("RUNS and THREADS must be 1 or more");
  }
  executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(threads);
  auto tracer = std::make_unique<executorch::etdump::ETDumpGen>();
  auto* etdump = tracer.get();
  Module module(argv[1], Module::LoadMode::File, std::move(tracer));
  if (module.load_method(method) != Error::Ok) {
    return die("cannot load the " + method + " method of " + argv[1]);
  }
  auto meta = module.method_meta(method);
  auto info = meta->input_tensor_meta(0);
  std::vector<executorch::aten::SizesType> sizes(info->sizes().begin(), info->sizes().end());
  std::vector<executorch::aten::DimOrderType> order(info->dim_order().begin(), info->dim_order().end());
  size_t numel = 1;
  for (auto d : sizes) {
    numel *= static_cast<size_t>(d);
  }
  std::vector<float> input(numel, 0.0f);
  auto tensor = executorch::extension::for_blob(input.data(), sizes, executorch::aten::ScalarType::Float)
                    .dim_order(order)
                    .make_tensor_ptr();
  for (int i = 0; i < runs; ++i) {
    if (!module.execute(method, tensor).ok()) {
      return die(method + " failed");
    }
  }
  auto result = etdump->get_etdump_data();
  FILE* out = std::fopen(argv[2], "wb");
  if (out == nullptr || std::fwrite(result.buf, 1, result.size, out) != result.size || std::fclose(out) != 0) {
    return die(std::string("cannot write ") + argv[2]);
  }
  std::free(result.buf);
  return 0;
}
