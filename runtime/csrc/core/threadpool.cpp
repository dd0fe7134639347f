#include "core/threadpool.h"

#include <new>
#include <stdexcept>
#include <string>
#include <system_error>

namespace sbnn {

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads > kMaxThreads)
    throw std::invalid_argument("num_threads=" + std::to_string(num_threads) +
                                " exceeds the limit of " + std::to_string(kMaxThreads));
  int n = num_threads;
  if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
  if (n > kMaxThreads) n = kMaxThreads;
  std::string why;
  try {
    workers_.reserve(static_cast<size_t>(n - 1));
    for (int i = 1; i < n; ++i) workers_.emplace_back([this] { worker_loop(); });
    return;
  } catch (const std::system_error& e) {
    why = e.what();
  } catch (const std::bad_alloc&) {
    why = "out of memory";
  }
  // Joinable threads must not be destroyed (std::terminate): stop the ones that did start.
  const size_t started = workers_.size();
  stop_and_join();
  throw std::runtime_error("thread pool: could not start thread " + std::to_string(started + 2) +
                           " of " + std::to_string(n) + " (" + why +
                           "); the system is out of memory or threads: use fewer num_threads");
}

ThreadPool::~ThreadPool() { stop_and_join(); }

void ThreadPool::stop_and_join() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

namespace {
// Set while this thread runs a task of some pool: a parallel_for called from inside a task
// (an op of a batch slice the engine runs per thread, issue 20) runs its tasks inline.
thread_local bool tl_in_task = false;
}  // namespace

void ThreadPool::drain() {
  const bool outer = tl_in_task;
  tl_in_task = true;
  struct Restore {
    bool v;
    ~Restore() { tl_in_task = v; }
  } restore{outer};
  for (;;) {
    const int i = next_.fetch_add(1);
    if (i >= ntasks_) break;
    try {
      (*fn_)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu_);
      if (!error_) error_ = std::current_exception();
      next_.store(ntasks_);
    }
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stop_ || gen_ != seen; });
    if (stop_) return;
    seen = gen_;
    lk.unlock();
    drain();
    lk.lock();
    if (--pending_ == 0) done_cv_.notify_one();
  }
}

void ThreadPool::parallel_for(int n, const std::function<void(int)>& fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1 || tl_in_task) {
    for (int i = 0; i < n; ++i) fn(i);
    return;
  }
  std::lock_guard<std::mutex> run_lk(run_mu_);
  {
    std::lock_guard<std::mutex> lk(mu_);
    fn_ = &fn;
    ntasks_ = n;
    next_.store(0);
    pending_ = static_cast<int>(workers_.size());
    error_ = nullptr;
    ++gen_;
  }
  cv_.notify_all();
  drain();
  std::exception_ptr err;
  {
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [&] { return pending_ == 0; });
    fn_ = nullptr;
    err = error_;
    error_ = nullptr;
  }
  if (err) std::rethrow_exception(err);
}

}  // namespace sbnn
