// A kernel timeline for any CUDA program, where Nsight Systems is not installed: loaded by the
// CUDA driver through CUDA_INJECTION64_PATH, it records every kernel, memcpy and memset through
// CUPTI's activity API and, at exit, writes one CSV line per record to $SY_KERNEL_TRACE
// (default kernel_trace.csv): start_ns,end_ns,stream,kind,bytes,correlation,name.
// bench/kernel_trace/gaps.py reads it (GPU busy and idle time per training step, the idle gaps by
// the ops around them). With SY_KERNEL_TRACE_API=1 it also records every CUDA runtime call on the
// host (kind "api", the call's name, host timestamps on the same clock), whose correlation number
// is the one of the kernel or copy it launched: bench/kernel_trace/host.py reads those.
//
//   CUDA_INJECTION64_PATH=$PWD/build/libsy_kernel_trace.so SY_KERNEL_TRACE=trace.csv
//       build/sy_bench_train configs/bench/moe.yaml --steps 10 --warmup 3    (one command line)
//   python3 bench/kernel_trace/gaps.py trace.csv
//
// The records carry the GPU's own timestamps, so the launches' host cost does not move them; the
// activity buffers cost the program a little host time when CUPTI hands them back.
#include <cupti.h>
#include <cxxabi.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct Record {
  uint64_t start, end, bytes;
  uint32_t stream, correlation;
  const char* kind;
  std::string name;
};

std::mutex records_mutex;
std::vector<Record>* records = nullptr;  // leaked on purpose: read by the atexit handler

constexpr size_t kBufferBytes = size_t{8} << 20;

void check(CUptiResult result, const char* what) {
  if (result == CUPTI_SUCCESS) return;
  const char* message = "?";
  cuptiGetResultString(result, &message);
  std::fprintf(stderr, "kernel_trace: %s failed: %s\n", what, message);
  std::exit(1);
}

std::string demangled(const char* name) {
  if (!name) return "?";
  int status = 0;
  std::unique_ptr<char, decltype(&std::free)> out(
      abi::__cxa_demangle(name, nullptr, nullptr, &status), &std::free);
  return status == 0 && out ? std::string(out.get()) : std::string(name);
}

const char* copy_kind(uint8_t kind) {
  switch (kind) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD:
      return "memcpy HtoD";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH:
      return "memcpy DtoH";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD:
      return "memcpy DtoD";
    default:
      return "memcpy";
  }
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = kBufferBytes;
  *max_records = 0;  // as many as fit
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  std::vector<Record> batch;
  CUpti_Activity* activity = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &activity) == CUPTI_SUCCESS) {
    switch (activity->kind) {
      case CUPTI_ACTIVITY_KIND_KERNEL:
      case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
        const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(activity);
        batch.push_back(
            {k->start, k->end, 0, k->streamId, k->correlationId, "kernel", demangled(k->name)});
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMCPY: {
        const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(activity);
        batch.push_back({m->start, m->end, m->bytes, m->streamId, m->correlationId,
                         copy_kind(m->copyKind), ""});
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMSET: {
        const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(activity);
        batch.push_back({m->start, m->end, m->bytes, m->streamId, m->correlationId, "memset", ""});
        break;
      }
      case CUPTI_ACTIVITY_KIND_RUNTIME: {
        const auto* a = reinterpret_cast<const CUpti_ActivityAPI*>(activity);
        const char* name = "?";
        cuptiGetCallbackName(CUPTI_CB_DOMAIN_RUNTIME_API, a->cbid, &name);
        batch.push_back({a->start, a->end, 0, 0, a->correlationId, "api", name ? name : "?"});
        break;
      }
      default:
        break;
    }
  }
  std::free(buffer);
  const std::lock_guard<std::mutex> lock(records_mutex);
  for (Record& r : batch) records->push_back(std::move(r));
}

// Names hold commas and quotes (template arguments): quoted as CSV does.
std::string csv_field(const std::string& s) {
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

void write_records() {
  cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  const char* env = std::getenv("SY_KERNEL_TRACE");
  const std::string path = env && *env ? env : "kernel_trace.csv";
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (!f) {
    std::fprintf(stderr, "kernel_trace: cannot write %s\n", path.c_str());
    return;
  }
  const std::lock_guard<std::mutex> lock(records_mutex);
  std::fprintf(f, "start_ns,end_ns,stream,kind,bytes,correlation,name\n");
  for (const Record& r : *records)
    std::fprintf(f, "%llu,%llu,%u,%s,%llu,%u,%s\n", static_cast<unsigned long long>(r.start),
                 static_cast<unsigned long long>(r.end), r.stream, r.kind,
                 static_cast<unsigned long long>(r.bytes), r.correlation,
                 csv_field(r.name).c_str());
  std::fclose(f);
  std::fprintf(stderr, "kernel_trace: %zu records in %s\n", records->size(), path.c_str());
}

}  // namespace

// The CUDA driver calls this once, at cuInit, when CUDA_INJECTION64_PATH names this library.
extern "C" int InitializeInjection() {
  records = new std::vector<Record>();
  check(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed),
        "cuptiActivityRegisterCallbacks");
  check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "enable kernels");
  check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY), "enable memcpy");
  check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET), "enable memset");
  const char* api = std::getenv("SY_KERNEL_TRACE_API");
  if (api && std::string(api) == "1")
    check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME), "enable runtime API");
  std::atexit(write_records);
  return 1;
}
