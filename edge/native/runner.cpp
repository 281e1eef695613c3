// A torch-free ExecuTorch runner with a C ABI, called from Python through ctypes (edge/native/runner.py).
//
// It follows ExecuTorch's executor_runner: load the program from a buffer, size the planned memory
// from method_meta, load the named method, then set_input / execute / get_output. ctypes releases the GIL
// for the whole call, so capture keeps running while a frame is inferred.
//
// Every failure returns a code and one line of text; nothing here aborts on a bad file: the header
// is checked first and the program is loaded with full flatbuffer verification.
#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <executorch/extension/data_loader/buffer_data_loader.h>
#include <executorch/extension/memory_allocator/malloc_memory_allocator.h>
#include <executorch/runtime/core/exec_aten/exec_aten.h>
#include <executorch/runtime/core/portable_type/tensor_impl.h>
#include <executorch/runtime/executor/method.h>
#include <executorch/runtime/executor/program.h>
#include <executorch/runtime/platform/platform.h>
#include <executorch/runtime/platform/runtime.h>

// threadpool.h is not shipped in the wheel; these are the two members of its ThreadPool we call,
// declared as they are in extension/threadpool/threadpool.h of the same release.
namespace executorch::extension::threadpool {
class ThreadPool final {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace {

using executorch::aten::ScalarType;
using executorch::extension::BufferDataLoader;
using executorch::extension::MallocMemoryAllocator;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::HierarchicalAllocator;
using executorch::runtime::MemoryManager;
using executorch::runtime::Method;
using executorch::runtime::MethodMeta;
using executorch::runtime::Program;
using executorch::runtime::Span;
using executorch::runtime::etensor::TensorImpl;
namespace threadpool = executorch::extension::threadpool;

enum Code : int {
  kOk = 0,
  kNotAProgram = 1,
  kLoadFailed = 2,
  kUnsupported = 3,
  kBadInput = 4,
  kExecuteFailed = 5,
  kClosed = 6,
};

constexpr int kMaxDims = 8;

// XNNPACK captures the thread pool when a method is loaded, and resizing the pool frees the old one:
// every method loaded before a resize must be loaded again before it runs. The pool is also not
// re-entrant, so one lock serialises resizing, loading and executing across all runners.
std::mutex g_lock;
uint64_t g_pool_generation = 0;

// The runtime's last error-level log line, kept to explain a failure in the returned message.
thread_local std::string g_last_log;
// This thread's last failure, whole: edge_runner_run returns only its code, and edge_runner_error the text.
thread_local std::string g_last_error;
bool g_echo_log = false;

void capture_log(et_timestamp_t, et_pal_log_level_t level, const char* file, const char*, size_t line,
                 const char* message, size_t length) {
  if (level == kError || level == kFatal) {
    g_last_log.assign(message, length);
  }
  if (g_echo_log) {
    std::fprintf(stderr, "executorch %c %s:%zu] %.*s\n", static_cast<char>(level), file, line,
                 static_cast<int>(length), message);
  }
}

void init_runtime_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    g_echo_log = std::getenv("EDGE_RUNTIME_LOG") != nullptr;
    executorch::runtime::register_pal(executorch::runtime::PalImpl::create(capture_log, __FILE__));
    executorch::runtime::runtime_init();
  });
}

int fail(int code, const std::string& what, char* err, size_t errlen) {
  std::string text = what;
  if (!g_last_log.empty()) {
    text += " (" + g_last_log + ")";
    g_last_log.clear();
  }
  g_last_error = text;
  if (err != nullptr && errlen > 0) {
    std::snprintf(err, errlen, "%s", text.c_str());
  }
  return code;
}

std::string error_name(Error e) {
  char hex[16];
  std::snprintf(hex, sizeof(hex), "0x%x", static_cast<unsigned>(e));
  return std::string("error ") + hex;
}

struct TensorSpec {
  std::vector<int64_t> sizes;
  std::vector<TensorImpl::DimOrderType> dim_order;  // the order of the dimensions in memory, outermost first
  size_t numel = 1;
  // The sizes as a TensorImpl takes them, and the strides the dim order implies: worked out once, not per call.
  std::vector<TensorImpl::SizesType> impl_sizes;
  std::vector<TensorImpl::StridesType> strides;
};

// Reusing XNNPACK's plan of a graph between calls.
//
// Before every execution, ExecuTorch's XNNPACK delegate gives the runtime its inputs' shapes and calls
// xnn_reshape_runtime, which reshapes every operator of the graph and checks its memory plan again, a
// fixed cost whatever the image size (docs/benchmarks.md measures it). LiteRT's delegate does it when
// an input changes shape. A program's shapes rarely change between calls (ours never
// do), so the runner does that work only when they change: the wheel calls these XNNPACK functions
// through the dynamic linker, where the runner's definitions below come first (edge-bench exports
// them), and each passes on to XNNPACK's own. A runtime is planned again when it is new (XNNPACK also
// makes small ones inside itself) or when one of its inputs changed shape since its last plan; a
// failed call forgets the plan.
//
// Setting a plan's pointers up, likewise. The delegate also calls xnn_setup_runtime_v2 before every
// execution, which hands every operator of the graph its input and output addresses again. Those only
// change when an external value (the delegate's inputs and outputs) moves or when XNNPACK lays its
// workspace out again, which only a reshape does (a workspace can be shared by several runtimes, so a
// reshape of any of them counts). So the runner passes a setup on only when the external values differ
// from the last successful one of that runtime or a reshape, creation or deletion of any runtime came
// after it; LiteRT's delegate sets a runtime up again only when an external pointer changed.
//
// Timing every operator, switched off. The wheel's delegate asks XNNPACK for basic profiling
// (XNN_FLAG_BASIC_PROFILING) on every runtime it creates, so that ETDump can report operators: XNNPACK
// then reads the clock after each operator of every call, and the delegate copies the timings out after
// it, with or without an event tracer to give them to. The runner never has one, so it creates runtimes
// without the flag, and answers the delegate's questions about their profile (how many operators,
// their names, their times) with "none", which the delegate takes as a graph with nothing to report.
// ETDump profiles (python -m peers.profile) run ExecuTorch's own Module, not this library.
using XnnStatus = int;  // enum xnn_status: 0 is xnn_status_success
constexpr XnnStatus kXnnSuccess = 0;
constexpr uint32_t kXnnFlagBasicProfiling = 0x00000008;  // XNN_FLAG_BASIC_PROFILING, xnnpack.h

struct XnnExternalValue {  // struct xnn_external_value, xnnpack.h
  uint32_t id;
  void* data;
  bool operator==(const XnnExternalValue& other) const { return id == other.id && data == other.data; }
};

struct GraphPlan {
  bool current = false;  // planned for the shapes below, and nothing failed since
  bool unprofiled = false;  // created here without the profiling the delegate asked for
  std::unordered_map<uint32_t, std::vector<size_t>> input_shapes;  // by external value id
  bool set_up = false;  // the last setup succeeded with the values below, at layout g_layouts
  std::vector<XnnExternalValue> set_up_with;
  uint64_t set_up_at = 0;
};

std::mutex g_plans_lock;
std::unordered_map<void*, GraphPlan> g_plans;  // by xnn_runtime_t
uint64_t g_plans_made = 0, g_plans_reused = 0, g_setups_made = 0, g_setups_reused = 0;
uint64_t g_layouts = 0;  // how many reshapes, creations and deletions of runtimes XNNPACK has done

template <typename Function>
Function xnnpack(const char* name) {
  // Looked up once per function, after this library in the search order: the XNNPACK the wheel ships.
  return reinterpret_cast<Function>(dlsym(RTLD_NEXT, name));
}

}  // namespace

extern "C" {

XnnStatus xnn_create_runtime_v4(void* subgraph, void* weights_cache, void* workspace, void* threadpool,
                                uint32_t flags, void** runtime_out) {
  static auto create = xnnpack<XnnStatus (*)(void*, void*, void*, void*, uint32_t, void**)>("xnn_create_runtime_v4");
  XnnStatus status =
      create(subgraph, weights_cache, workspace, threadpool, flags & ~kXnnFlagBasicProfiling, runtime_out);
  std::lock_guard<std::mutex> guard(g_plans_lock);
  ++g_layouts;
  if (status == kXnnSuccess) {
    g_plans.erase(*runtime_out);  // an address a deleted runtime had: nothing is known of this one
    g_plans[*runtime_out].unprofiled = (flags & kXnnFlagBasicProfiling) != 0;
  }
  return status;
}

XnnStatus xnn_get_runtime_profiling_info(void* runtime, int what, size_t size, void* value, size_t* size_out) {
  static auto info = xnnpack<XnnStatus (*)(void*, int, size_t, void*, size_t*)>("xnn_get_runtime_profiling_info");
  {
    std::lock_guard<std::mutex> guard(g_plans_lock);
    auto plan = g_plans.find(runtime);
    if (plan != g_plans.end() && plan->second.unprofiled) {
      // No operators: a count of 0, no names, no times (every answer is zero bytes or a zero).
      if (value != nullptr) {
        std::memset(value, 0, size);
      }
      if (size_out != nullptr) {
        *size_out = 0;
      }
      return kXnnSuccess;
    }
  }
  return info(runtime, what, size, value, size_out);
}

XnnStatus xnn_delete_runtime(void* runtime) {
  static auto destroy = xnnpack<XnnStatus (*)(void*)>("xnn_delete_runtime");
  {
    std::lock_guard<std::mutex> guard(g_plans_lock);
    g_plans.erase(runtime);
    ++g_layouts;
  }
  return destroy(runtime);
}

XnnStatus xnn_reshape_external_value(void* runtime, uint32_t id, size_t num_dims, const size_t* dims) {
  static auto reshape = xnnpack<XnnStatus (*)(void*, uint32_t, size_t, const size_t*)>("xnn_reshape_external_value");
  XnnStatus status = reshape(runtime, id, num_dims, dims);
  std::lock_guard<std::mutex> guard(g_plans_lock);
  GraphPlan& plan = g_plans[runtime];
  auto known = plan.input_shapes.find(id);
  if (status != kXnnSuccess || known == plan.input_shapes.end() ||
      !std::equal(known->second.begin(), known->second.end(), dims, dims + num_dims)) {
    plan.current = false;
    plan.input_shapes[id].assign(dims, dims + num_dims);
  }
  return status;
}

XnnStatus xnn_reshape_runtime(void* runtime) {
  static auto reshape = xnnpack<XnnStatus (*)(void*)>("xnn_reshape_runtime");
  {
    std::lock_guard<std::mutex> guard(g_plans_lock);
    auto plan = g_plans.find(runtime);
    if (plan != g_plans.end() && plan->second.current) {
      ++g_plans_reused;
      return kXnnSuccess;
    }
  }
  XnnStatus status = reshape(runtime);
  std::lock_guard<std::mutex> guard(g_plans_lock);
  g_plans[runtime].current = status == kXnnSuccess;
  ++g_plans_made;
  ++g_layouts;
  return status;
}

XnnStatus xnn_setup_runtime_v2(void* runtime, size_t count, const XnnExternalValue* values) {
  static auto setup = xnnpack<XnnStatus (*)(void*, size_t, const XnnExternalValue*)>("xnn_setup_runtime_v2");
  {
    std::lock_guard<std::mutex> guard(g_plans_lock);
    auto plan = g_plans.find(runtime);
    if (plan != g_plans.end() && plan->second.set_up && plan->second.set_up_at == g_layouts &&
        std::equal(values, values + count, plan->second.set_up_with.begin(), plan->second.set_up_with.end())) {
      ++g_setups_reused;
      return kXnnSuccess;
    }
  }
  XnnStatus status = setup(runtime, count, values);
  std::lock_guard<std::mutex> guard(g_plans_lock);
  GraphPlan& plan = g_plans[runtime];
  plan.set_up = status == kXnnSuccess;
  plan.set_up_with.assign(values, values + count);
  plan.set_up_at = g_layouts;
  ++g_setups_made;
  return status;
}

}  // extern "C"

struct EdgeRunner {
  std::vector<uint8_t> pte;  // owned: the program reads its data from here for its whole life
  std::unique_ptr<BufferDataLoader> loader;
  std::unique_ptr<Program> program;
  std::vector<std::unique_ptr<uint8_t[], decltype(&std::free)>> planned_buffers;
  std::vector<Span<uint8_t>> planned_spans;
  std::unique_ptr<HierarchicalAllocator> planned;
  std::unique_ptr<MallocMemoryAllocator> method_allocator;
  std::unique_ptr<MallocMemoryAllocator> temp_allocator;
  std::unique_ptr<MemoryManager> memory;
  std::unique_ptr<Method> method;
  uint64_t generation = 0;
  uint32_t threads = 0;  // 0: whatever the pool has
  std::string method_name;  // a program can hold several methods (export writes forward and forward_channels_last)
  TensorSpec input, output;
  bool closed = false;

  // What edge_runner_close frees, in the order the destructor would: the method first, the bytes it reads last.
  void unload() {
    closed = true;
    method.reset();
    memory.reset();
    temp_allocator.reset();
    method_allocator.reset();
    planned.reset();
    planned_spans.clear();
    planned_buffers.clear();
    program.reset();
    loader.reset();
    std::vector<uint8_t>().swap(pte);
  }
};

namespace {

bool float_tensor(const MethodMeta& meta, bool is_input, TensorSpec* spec) {
  auto info = is_input ? meta.input_tensor_meta(0) : meta.output_tensor_meta(0);
  if (!info.ok() || info->scalar_type() != ScalarType::Float || info->sizes().size() > kMaxDims) {
    return false;
  }
  for (int32_t d : info->sizes()) {
    spec->sizes.push_back(d);
    spec->numel *= static_cast<size_t>(d);
  }
  auto order = info->dim_order();
  spec->dim_order.assign(order.begin(), order.end());
  if (spec->dim_order.size() != spec->sizes.size()) {  // a program without dim orders: contiguous
    spec->dim_order.resize(spec->sizes.size());
    for (size_t i = 0; i < spec->dim_order.size(); ++i) {
      spec->dim_order[i] = static_cast<uint8_t>(i);
    }
  }
  spec->impl_sizes.assign(spec->sizes.begin(), spec->sizes.end());
  spec->strides.resize(spec->sizes.size());
  TensorImpl::StridesType stride = 1;
  for (size_t i = spec->dim_order.size(); i-- > 0;) {  // innermost dimension in memory first
    spec->strides[spec->dim_order[i]] = stride;
    stride *= spec->impl_sizes[spec->dim_order[i]];
  }
  return true;
}

// Under g_lock: size the pool for this runner, and (re)load the method if the pool changed under it.
int ensure_method(EdgeRunner* r, char* err, size_t errlen) {
  auto* pool = threadpool::get_threadpool();
  if (r->threads != 0 && pool != nullptr && pool->get_thread_count() != r->threads) {
    pool->_unsafe_reset_threadpool(r->threads);
    ++g_pool_generation;
  }
  if (r->method && r->generation == g_pool_generation) {
    return kOk;
  }
  r->method.reset();
  r->method_allocator->reset();
  auto method = r->program->load_method(r->method_name.c_str(), r->memory.get());
  if (!method.ok()) {
    return fail(kLoadFailed, "cannot load method " + r->method_name + ": " + error_name(method.error()), err, errlen);
  }
  r->method = std::make_unique<Method>(std::move(method.get()));
  r->generation = g_pool_generation;
  return kOk;
}

int open_program(EdgeRunner* r, char* err, size_t errlen) {
  r->loader = std::make_unique<BufferDataLoader>(r->pte.data(), r->pte.size());
  auto program = Program::load(r->loader.get(), Program::Verification::InternalConsistency);
  if (!program.ok()) {
    return fail(kLoadFailed, "not a valid ExecuTorch program: " + error_name(program.error()), err, errlen);
  }
  r->program = std::make_unique<Program>(std::move(program.get()));
  auto meta = r->program->method_meta(r->method_name.c_str());
  if (!meta.ok()) {
    std::string names;
    for (size_t i = 0; i < r->program->num_methods(); ++i) {
      auto name = r->program->get_method_name(i);
      names += std::string(names.empty() ? "" : ", ") + (name.ok() ? *name : "?");
    }
    return fail(kUnsupported, "the program has no method " + r->method_name + " (it has: " + names + ")", err, errlen);
  }
  if (meta->num_inputs() != 1 || meta->num_outputs() < 1 || !float_tensor(*meta, true, &r->input) ||
      !float_tensor(*meta, false, &r->output)) {
    return fail(kUnsupported, r->method_name + " must take one float tensor and return a float tensor first", err,
                errlen);
  }
  for (size_t id = 0; id < meta->num_memory_planned_buffers(); ++id) {
    auto size = meta->memory_planned_buffer_size(id);
    if (!size.ok()) {
      return fail(kLoadFailed, "cannot read the planned memory sizes", err, errlen);
    }
    // 64-byte aligned, as XNNPACK's SIMD kernels prefer for the tensors planned into these buffers.
    size_t bytes = (static_cast<size_t>(*size) + 63) / 64 * 64;
    auto* buffer = static_cast<uint8_t*>(std::aligned_alloc(64, bytes == 0 ? 64 : bytes));
    if (buffer == nullptr) {
      return fail(kLoadFailed, "out of memory for the planned buffers", err, errlen);
    }
    r->planned_buffers.emplace_back(buffer, &std::free);
    r->planned_spans.emplace_back(buffer, static_cast<size_t>(*size));
  }
  r->planned = std::make_unique<HierarchicalAllocator>(Span<Span<uint8_t>>(r->planned_spans.data(), r->planned_spans.size()));
  r->method_allocator = std::make_unique<MallocMemoryAllocator>();
  r->temp_allocator = std::make_unique<MallocMemoryAllocator>();
  r->memory = std::make_unique<MemoryManager>(r->method_allocator.get(), r->planned.get(), r->temp_allocator.get());
  return ensure_method(r, err, errlen);
}

}  // namespace

extern "C" {

// Copies ``size`` bytes of a .pte and loads its method ``method`` (a C string) with ``threads`` XNNPACK
// threads (0: keep the pool as it is). On success *out owns the runner: edge_runner_close unloads it and
// edge_runner_free frees it.
int edge_runner_open(const uint8_t* data, size_t size, const char* method, uint32_t threads, EdgeRunner** out,
                     char* err, size_t errlen) {
  init_runtime_once();
  *out = nullptr;
  if (size < Program::kMinHeadBytes ||
      Program::check_header(data, size) != Program::HeaderStatus::CompatibleVersion) {
    return fail(kNotAProgram, "not an ExecuTorch program of a version this runtime reads", err, errlen);
  }
  std::lock_guard<std::mutex> guard(g_lock);
  auto runner = std::make_unique<EdgeRunner>();
  runner->pte.assign(data, data + size);
  runner->threads = threads;
  runner->method_name = method;
  int code = open_program(runner.get(), err, errlen);
  if (code == kOk) {
    *out = runner.release();
  }
  return code;
}

// Writes the input (which=0) or first output (which=1) shape into dims; returns the rank.
int edge_runner_shape(const EdgeRunner* r, int which, int64_t* dims, int max_dims) {
  const TensorSpec& spec = which == 0 ? r->input : r->output;
  int rank = static_cast<int>(spec.sizes.size());
  for (int i = 0; i < rank && i < max_dims; ++i) {
    dims[i] = spec.sizes[i];
  }
  return rank;
}

// Writes the order in which the input's (which=0) or output's (which=1) dimensions lie in memory,
// outermost first: 0 1 2 3 for NCHW, 0 2 3 1 for a program that takes NHWC memory. Returns the rank.
int edge_runner_dim_order(const EdgeRunner* r, int which, int64_t* order, int max_dims) {
  const TensorSpec& spec = which == 0 ? r->input : r->output;
  int rank = static_cast<int>(spec.dim_order.size());
  for (int i = 0; i < rank && i < max_dims; ++i) {
    order[i] = spec.dim_order[i];
  }
  return rank;
}

// Runs the method on a float input laid out in the program's dim order (see edge_runner_dim_order:
// C-contiguous for NCHW programs) and writes the first output; both buffers hold the program's numel.
// Returns a code; edge_runner_error gives the failure's text. Three arguments and no text buffer: ctypes
// converts each argument on every call, and at 64 px the call is the app's per-frame cost outside the model.
int edge_runner_run(EdgeRunner* r, const float* input, float* output) {
  std::lock_guard<std::mutex> guard(g_lock);
  if (r->closed) {
    return fail(kClosed, "the runner is closed", nullptr, 0);
  }
  int code = ensure_method(r, nullptr, 0);
  if (code != kOk) {
    return code;
  }
  TensorSpec& in = r->input;
  TensorImpl impl(ScalarType::Float, static_cast<ssize_t>(in.impl_sizes.size()), in.impl_sizes.data(),
                  const_cast<float*>(input), in.dim_order.data(), in.strides.data());
  Error status = r->method->set_input(EValue(executorch::aten::Tensor(&impl)), 0);
  if (status != Error::Ok) {
    return fail(kBadInput, "the program refused the input: " + error_name(status), nullptr, 0);
  }
  status = r->method->execute();
  if (status != Error::Ok) {
    return fail(kExecuteFailed, "execute failed: " + error_name(status), nullptr, 0);
  }
  const EValue& result = r->method->get_output(0);
  if (!result.isTensor() || static_cast<size_t>(result.toTensor().numel()) != r->output.numel) {
    return fail(kExecuteFailed, "the program's output is not the tensor its metadata describes", nullptr, 0);
  }
  std::memcpy(output, result.toTensor().const_data_ptr<float>(), r->output.numel * sizeof(float));
  return kOk;
}

// Copies the calling thread's last failure into err (a C string); returns its length.
size_t edge_runner_error(char* err, size_t errlen) {
  if (errlen > 0) {
    std::snprintf(err, errlen, "%s", g_last_error.c_str());
  }
  return g_last_error.size();
}

// How many times XNNPACK planned a graph (made) and how many executions reused a plan (reused); the
// same for setting a graph's pointers up (setups_made, setups_reused).
void edge_runner_plan_counts(uint64_t* made, uint64_t* reused, uint64_t* setups_made, uint64_t* setups_reused) {
  std::lock_guard<std::mutex> guard(g_plans_lock);
  *made = g_plans_made;
  *reused = g_plans_reused;
  *setups_made = g_setups_made;
  *setups_reused = g_setups_reused;
}

// The XNNPACK pool's current thread count.
uint32_t edge_runner_pool_threads() {
  init_runtime_once();
  auto* pool = threadpool::get_threadpool();
  return pool == nullptr ? 0 : static_cast<uint32_t>(pool->get_thread_count());
}

// Frees the program and its memory once the call under way (if any) is over; later calls fail with kClosed.
// The handle itself stays valid until edge_runner_free, so a thread that took it before the close gets
// "the runner is closed", never freed memory: the binding frees it only when no thread can hold it.
void edge_runner_close(EdgeRunner* r) {
  std::lock_guard<std::mutex> guard(g_lock);
  r->unload();
}

void edge_runner_free(EdgeRunner* r) {
  std::lock_guard<std::mutex> guard(g_lock);
  delete r;
}

}  // extern "C"
