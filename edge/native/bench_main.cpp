// edge-bench: the native runner as a command, for devices that run no Python (an Android phone over adb).
//
//   edge-bench PROGRAM.pte [--method forward] [--inputs IN.f32] [--outputs OUT.f32] [--threads 1,2,4]
//              [--warmup 10] [--runs 50]
//
// --threads defaults to every count from 1 to the CPUs online. --method names the program's method (the
// app runs forward_channels_last, model.json's "method"; forward takes NCHW memory, as other runtimes pass).
// It is linked with runner.cpp, so it loads and runs programs exactly as the app's library does. It runs
// the raw float32 inputs (N images back to back, each in the program's memory order: NHWC for the programs
// python -m export writes, see Runner.in_memory_order) and writes the raw outputs: the host
// applies the parity rule (edge/parity.py), which keeps one home. It then times the first input per
// thread count after a warm-up, and prints one JSON object: every sample, p50/p90/p99, load time, peak
// RSS (VmHWM), the CPUs (/proc/cpuinfo and each core's cpuinfo_max_freq, so big and little cores are told
// apart), the thermal zones before and after, and how often XNNPACK planned the graph and reused its plan
// (runner.cpp). Errors are one "error: ..." line and exit code 1 (2 for
// bad arguments), a program that crashes the runtime included (it is first run in a forked child).
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern "C" {
struct EdgeRunner;
int edge_runner_open(const uint8_t* data, size_t size, const char* method, uint32_t threads, EdgeRunner** out,
                     char* err, size_t errlen);
int edge_runner_shape(const EdgeRunner* r, int which, int64_t* dims, int max_dims);
int edge_runner_run(EdgeRunner* r, const float* input, float* output);
size_t edge_runner_error(char* err, size_t errlen);
void edge_runner_free(EdgeRunner* r);
void edge_runner_plan_counts(uint64_t* made, uint64_t* reused, uint64_t* setups_made, uint64_t* setups_reused);
}

namespace {

struct Args {
  std::string program, inputs, outputs, method = "forward";
  std::vector<uint32_t> threads;
  long warmup = 10, runs = 50;
};

[[noreturn]] void die(int code, const std::string& what) {
  std::fprintf(stderr, "error: %s\n", what.c_str());
  std::exit(code);
}

long whole_number(const std::string& flag, const std::string& text, long min, long max) {
  char* end = nullptr;
  errno = 0;
  long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || value < min || value > max) {
    die(2, flag + ": want a whole number from " + std::to_string(min) + " to " + std::to_string(max) +
               ", got '" + text + "'");
  }
  return value;
}

Args parse(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag.rfind("--", 0) != 0) {
      if (!args.program.empty()) die(2, "one program only, got '" + args.program + "' and '" + flag + "'");
      args.program = flag;
      continue;
    }
    if (i + 1 >= argc) die(2, flag + " wants a value");
    std::string value = argv[++i];
    if (flag == "--method") {
      if (value.empty()) die(2, "--method wants a method name");
      args.method = value;
    } else if (flag == "--inputs") {
      args.inputs = value;
    } else if (flag == "--outputs") {
      args.outputs = value;
    } else if (flag == "--warmup") {
      args.warmup = whole_number(flag, value, 0, 100000);
    } else if (flag == "--runs") {
      args.runs = whole_number(flag, value, 1, 1000000);
    } else if (flag == "--threads") {
      args.threads.clear();
      std::stringstream list(value);
      for (std::string item; std::getline(list, item, ',');) {
        args.threads.push_back(static_cast<uint32_t>(whole_number(flag, item, 1, 256)));
      }
      if (args.threads.empty()) die(2, "--threads wants a list such as 1,2,4");
    } else {
      die(2, "unknown option " + flag + " (usage: edge-bench PROGRAM.pte [--method NAME] [--inputs F] [--outputs F] "
                                        "[--threads 1,2] [--warmup N] [--runs N])");
    }
  }
  if (args.program.empty()) die(2, "give the program: edge-bench PROGRAM.pte");
  if (args.threads.empty()) {
    long online = std::max(1L, sysconf(_SC_NPROCESSORS_ONLN));
    for (long t = 1; t <= online; ++t) args.threads.push_back(static_cast<uint32_t>(t));
  }
  if (args.outputs.size() && args.inputs.empty()) die(2, "--outputs needs --inputs");
  return args;
}

constexpr long long kMaxFileBytes = 1LL << 30;  // a program or a batch of inputs: far below; /dev/zero is not one

std::string read_file(const std::string& path, const char* what) {
  struct stat info {};
  if (stat(path.c_str(), &info) != 0) die(1, std::string("cannot read ") + what + " " + path + ": " + std::strerror(errno));
  if (!S_ISREG(info.st_mode)) die(1, std::string("the ") + what + " " + path + " is not a regular file");
  if (info.st_size > kMaxFileBytes) {
    die(1, std::string("the ") + what + " " + path + " is over " + std::to_string(kMaxFileBytes >> 20) + " MB");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) die(1, std::string("cannot read ") + what + " " + path + ": " + std::strerror(errno));
  std::stringstream data;
  data << in.rdbuf();
  return data.str();
}

std::string trimmed(const std::string& text) {
  size_t start = text.find_first_not_of(" \t\n"), end = text.find_last_not_of(" \t\n");
  return start == std::string::npos ? "" : text.substr(start, end - start + 1);
}

std::string quoted(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
      out += escaped;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

std::string number(double value) {
  if (!std::isfinite(value)) return "null";
  char text[32];
  std::snprintf(text, sizeof text, "%.4f", value);
  return text;
}

// The first line of /proc/self/status that starts with key, as kB.
long status_kb(const std::string& key) {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind(key + ":", 0) == 0) return std::strtol(line.c_str() + key.size() + 1, nullptr, 10);
  }
  return -1;
}

std::string file_or_null(const std::string& path) {
  std::ifstream in(path);
  std::string text;
  if (!in || !std::getline(in, text)) return "null";
  return quoted(trimmed(text));
}

// Each processor of /proc/cpuinfo with its implementer, part and max frequency: the part (0xd0b is
// Cortex-A76, 0xd05 Cortex-A55) and the frequency tell big cores from little ones.
std::string cpus_json() {
  std::ifstream info("/proc/cpuinfo");
  std::vector<std::vector<std::pair<std::string, std::string>>> cpus;
  std::string hardware = "null";
  for (std::string line; std::getline(info, line);) {
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = trimmed(line.substr(0, colon)), value = trimmed(line.substr(colon + 1));
    if (key == "processor") {
      cpus.push_back({{"cpu", value}});
    } else if (key == "Hardware" || key == "model name") {
      hardware = quoted(value);
    } else if (!cpus.empty() && (key == "CPU implementer" || key == "CPU part" || key == "CPU variant" ||
                                 key == "Features")) {
      cpus.back().push_back({key, value});
    }
  }
  std::string out = "{\"hardware\": " + hardware + ", \"cores\": [";
  for (size_t i = 0; i < cpus.size(); ++i) {
    const std::string& cpu = cpus[i][0].second;
    out += (i ? ", " : "") + std::string("{\"cpu\": ") + cpu;
    for (size_t j = 1; j < cpus[i].size(); ++j) {
      std::string key = cpus[i][j].first;
      std::replace(key.begin(), key.end(), ' ', '_');
      std::transform(key.begin(), key.end(), key.begin(), ::tolower);
      out += ", " + quoted(key) + ": " + quoted(cpus[i][j].second);
    }
    std::string freq = file_or_null("/sys/devices/system/cpu/cpu" + cpu + "/cpufreq/cpuinfo_max_freq");
    out += ", \"max_freq_khz\": " + (freq == "null" ? freq : freq.substr(1, freq.size() - 2)) + "}";
  }
  return out + "]}";
}

std::string thermal_json() {
  std::string out = "[";
  DIR* dir = opendir("/sys/class/thermal");
  std::vector<std::string> zones;
  if (dir != nullptr) {
    for (dirent* entry; (entry = readdir(dir)) != nullptr;) {
      if (std::strncmp(entry->d_name, "thermal_zone", 12) == 0) zones.push_back(entry->d_name);
    }
    closedir(dir);
  }
  std::sort(zones.begin(), zones.end());
  bool first = true;
  for (const std::string& zone : zones) {
    std::string temp = file_or_null("/sys/class/thermal/" + zone + "/temp");
    if (temp == "null") continue;
    double celsius = std::strtod(temp.substr(1).c_str(), nullptr) / 1000.0;
    out += (first ? "" : ", ") + std::string("{\"zone\": ") + quoted(zone) +
           ", \"type\": " + file_or_null("/sys/class/thermal/" + zone + "/type") + ", \"celsius\": " +
           number(celsius) + "}";
    first = false;
  }
  return out + "]";
}

double percentile(std::vector<double> values, double q) {
  std::sort(values.begin(), values.end());
  double position = q / 100.0 * (values.size() - 1);
  size_t below = static_cast<size_t>(position);
  size_t above = std::min(below + 1, values.size() - 1);
  return values[below] + (position - below) * (values[above] - values[below]);
}

double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

EdgeRunner* open_runner(const std::string& pte, const std::string& method, uint32_t threads) {
  char err[512] = {0};
  EdgeRunner* runner = nullptr;
  if (edge_runner_open(reinterpret_cast<const uint8_t*>(pte.data()), pte.size(), method.c_str(), threads, &runner,
                       err, sizeof err) != 0) {
    die(1, std::string("cannot load the program: ") + err);
  }
  return runner;
}

size_t numel(const EdgeRunner* runner, int which, std::string* shape) {
  int64_t dims[16];
  int rank = edge_runner_shape(runner, which, dims, 16);
  size_t count = 1;
  *shape = "[";
  for (int i = 0; i < rank && i < 16; ++i) {
    count *= static_cast<size_t>(dims[i]);
    *shape += (i ? ", " : "") + std::to_string(dims[i]);
  }
  *shape += "]";
  return count;
}

// The run's failure as text, or "" when it ran.
std::string run(EdgeRunner* runner, const float* input, float* output) {
  if (edge_runner_run(runner, input, output) == 0) return "";
  char err[512] = {0};
  edge_runner_error(err, sizeof err);
  return err;
}

void run_one(EdgeRunner* runner, const float* input, float* output) {
  std::string error = run(runner, input, output);
  if (!error.empty()) die(1, error);
}

// ExecuTorch 1.5 does not verify an XNNPACK delegate's payload: a corrupt one can crash the loading process. The
// program is first loaded and run once in a forked child (before this process has any thread), so such a
// program ends in one error line here, not a signal. A child that fails cleanly leaves the error to the load below.
void vet_in_child(const std::string& pte, const std::string& method) {
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid < 0) die(1, std::string("cannot start a process to check the program: ") + std::strerror(errno));
  if (pid == 0) {
    char err[512] = {0};
    EdgeRunner* runner = nullptr;
    if (edge_runner_open(reinterpret_cast<const uint8_t*>(pte.data()), pte.size(), method.c_str(), 1, &runner, err,
                         sizeof err) == 0) {
      std::string shape;
      std::vector<float> input(numel(runner, 0, &shape), 0.0f), output(numel(runner, 1, &shape));
      edge_runner_run(runner, input.data(), output.data());
      edge_runner_free(runner);
    }
    _exit(0);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFSIGNALED(status)) {
    die(1, "the program crashes the ExecuTorch runtime when its " + method + " is loaded and run (signal " +
               std::to_string(WTERMSIG(status)) + "): a corrupt or hostile program; re-export it");
  }
}

}  // namespace

int main(int argc, char** argv) {
  Args args = parse(argc, argv);
  std::string pte = read_file(args.program, "program");
  vet_in_child(pte, args.method);
  std::string thermal_before = thermal_json();
  auto load_start = std::chrono::steady_clock::now();
  EdgeRunner* runner = open_runner(pte, args.method, args.threads[0]);
  double load_ms = ms_since(load_start);
  std::string input_shape, output_shape;
  size_t in_numel = numel(runner, 0, &input_shape), out_numel = numel(runner, 1, &output_shape);

  std::vector<float> inputs(in_numel, 0.5f);
  size_t images = 0;
  if (!args.inputs.empty()) {
    std::string raw = read_file(args.inputs, "inputs");
    if (raw.empty() || raw.size() % (in_numel * sizeof(float)) != 0) {
      die(1, args.inputs + " holds " + std::to_string(raw.size()) + " bytes, not a whole number of float32 inputs of " +
                 input_shape + " (" + std::to_string(in_numel * sizeof(float)) + " bytes each)");
    }
    images = raw.size() / (in_numel * sizeof(float));
    inputs.resize(images * in_numel);
    std::memcpy(inputs.data(), raw.data(), raw.size());
  }
  std::vector<float> output(out_numel);
  if (!args.outputs.empty()) {
    std::string partial = args.outputs + ".partial";
    std::FILE* out = std::fopen(partial.c_str(), "wb");
    if (out == nullptr) die(1, "cannot write " + partial + ": " + std::strerror(errno));
    auto fail = [&](const std::string& what) {  // nothing half-written is left behind
      int error = errno;
      std::remove(partial.c_str());
      die(1, "cannot write " + what + ": " + std::strerror(error));
    };
    for (size_t i = 0; i < images; ++i) {
      std::string error = run(runner, inputs.data() + i * in_numel, output.data());
      if (!error.empty()) {
        std::fclose(out);
        std::remove(partial.c_str());
        die(1, error);
      }
      if (std::fwrite(output.data(), sizeof(float), out_numel, out) != out_numel) {
        std::fclose(out);
        fail(partial);
      }
    }
    if (std::fclose(out) != 0 || std::rename(partial.c_str(), args.outputs.c_str()) != 0) fail(args.outputs);
  }

  std::string rows;
  for (size_t t = 0; t < args.threads.size(); ++t) {
    if (t > 0) {
      edge_runner_free(runner);
      runner = open_runner(pte, args.method, args.threads[t]);
    }
    for (long i = 0; i < args.warmup; ++i) run_one(runner, inputs.data(), output.data());
    std::vector<double> samples;
    for (long i = 0; i < args.runs; ++i) {
      auto start = std::chrono::steady_clock::now();
      run_one(runner, inputs.data(), output.data());
      samples.push_back(ms_since(start));
    }
    std::string list;
    double sum = 0;
    for (size_t i = 0; i < samples.size(); ++i) {
      list += (i ? ", " : "") + number(samples[i]);
      sum += samples[i];
    }
    rows += (t ? ", " : "") + std::string("{\"threads\": ") + std::to_string(args.threads[t]) +
            ", \"p50\": " + number(percentile(samples, 50)) + ", \"p90\": " + number(percentile(samples, 90)) +
            ", \"p99\": " + number(percentile(samples, 99)) + ", \"mean\": " + number(sum / samples.size()) +
            ", \"runs\": " + std::to_string(samples.size()) + ", \"samples_ms\": [" + list + "]}";
  }
  edge_runner_free(runner);
  // Whether XNNPACK's plan of the graph and its setup were reused (runner.cpp).
  uint64_t plans_made = 0, plans_reused = 0, setups_made = 0, setups_reused = 0;
  edge_runner_plan_counts(&plans_made, &plans_reused, &setups_made, &setups_reused);
  std::printf(
      "{\"program\": %s, \"method\": %s, \"program_bytes\": %zu, \"input_shape\": %s, \"output_shape\": %s, \"images\": %zu, "
      "\"load_ms\": %s, \"warmup\": %ld, \"latency_ms\": [%s], \"peak_rss_kb\": %ld, \"cpus\": %s, "
      "\"thermal_before\": %s, \"thermal_after\": %s, \"xnnpack_plans\": {\"made\": %llu, \"reused\": %llu}, "
      "\"xnnpack_setups\": {\"made\": %llu, \"reused\": %llu}}\n",
      quoted(args.program).c_str(), quoted(args.method).c_str(), pte.size(), input_shape.c_str(), output_shape.c_str(), images,
      number(load_ms).c_str(), args.warmup, rows.c_str(), status_kb("VmHWM"), cpus_json().c_str(),
      thermal_before.c_str(), thermal_json().c_str(), static_cast<unsigned long long>(plans_made),
      static_cast<unsigned long long>(plans_reused), static_cast<unsigned long long>(setups_made),
      static_cast<unsigned long long>(setups_reused));
  return 0;
}
