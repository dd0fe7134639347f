// A small persistent thread pool: parallel_for over task indices, caller thread included.
// Plain std::thread (no OpenMP) so it cannot clash with the runtime of a host framework.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace sbnn {

// The most threads a pool runs (the caller's included); more is refused, not clamped.
constexpr int kMaxThreads = 256;

class ThreadPool {
 public:
  // num_threads <= 0 -> std::thread::hardware_concurrency() (at most kMaxThreads).
  // num_threads > kMaxThreads throws std::invalid_argument. When a thread cannot be started
  // (std::thread throws, e.g. under a memory or process limit) the threads already started are
  // stopped and joined, and std::runtime_error says so: never a hang or std::terminate.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }
  // Calls fn(i) for every i in [0, n), spread over the threads; returns when all are done.
  // The first exception thrown by a task is rethrown here. Called from inside a task (of any
  // pool), it runs the n calls inline on that thread: nested parallelism is flattened, never
  // a deadlock.
  void parallel_for(int n, const std::function<void(int)>& fn);

 private:
  void worker_loop();
  void drain();
  void stop_and_join();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::mutex run_mu_;  // one parallel_for at a time
  std::condition_variable cv_, done_cv_;
  const std::function<void(int)>* fn_ = nullptr;
  int ntasks_ = 0;
  std::atomic<int> next_{0};
  int pending_ = 0;
  uint64_t gen_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace sbnn
