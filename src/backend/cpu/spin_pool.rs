//! A pool for the products of a decode step. A token runs about 7 products a layer, each a few
//! tens of microseconds on a small model, and waking a sleeping thread for each costs about as
//! much as the product: rayon's threads go to sleep between them. These threads instead spin
//! for a while after each job (as ggml's do), so the next product starts on them at once;
//! after [`SPIN`] with no job they sleep until the next one. The caller takes tasks too.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a thread spins after its last job before it sleeps: longer than the gaps
/// between one token's products (attention, norms), short enough that an idle engine sleeps.
const SPIN: Duration = Duration::from_millis(2);

/// The function each task index of the job being run is passed to.
type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// The job's generation (high 32 bits) and how many of its tasks are unclaimed (low 32
    /// bits): a claim takes the highest unclaimed index if the generation is still its own,
    /// so a claim that succeeds is of a job whose caller waits for it.
    claims: AtomicU64,
    /// Written by the caller of run only while no task is claimed (the last job's all ran).
    job: UnsafeCell<Job>,
    /// Tasks of the current job finished.
    done: AtomicUsize,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
}

// SAFETY: `job` is written only by a caller of run while no task is claimed, and read by
// workers only after a claim of its generation (which the write happens before).
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

fn nothing(_: usize) {}

fn generation(claims: u64) -> u64 {
    claims >> 32
}

pub(crate) struct SpinPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Whether a job is being run: one at a time (a second caller runs its tasks itself).
    running: AtomicBool,
}

impl SpinPool {
    /// A pool of `threads` threads in all, the caller's included.
    pub(crate) fn new(threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            claims: AtomicU64::new(0),
            job: UnsafeCell::new(&nothing as &(dyn Fn(usize) + Sync)),
            done: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let workers = (1..threads.max(1))
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("vibrant-spin-{i}"))
                    .spawn(move || work(&shared))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            shared,
            workers,
            running: AtomicBool::new(false),
        })
    }

    /// Threads that take tasks, the caller's included.
    pub(crate) fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `task(i)` for every i below `tasks`, spread over the pool's threads and the
    /// caller's; returns when every call has.
    pub(crate) fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        // A claim counts the tasks in 32 bits.
        let alone = tasks <= 1 || tasks > u32::MAX as usize || self.workers.is_empty();
        if alone || self.running.swap(true, Ordering::Acquire) {
            (0..tasks).for_each(task);
            return;
        }
        let s = &*self.shared;
        // SAFETY: every task of the last job ran, so no claim is held, and none reads `job`
        // before claiming a task of the generation published below. The reference outlives
        // the job: this function returns only after every claimed task has run.
        unsafe {
            let task: &'static (dyn Fn(usize) + Sync) = std::mem::transmute(task);
            *s.job.get() = task;
        }
        s.done.store(0, Ordering::Relaxed);
        let next = (generation(s.claims.load(Ordering::Relaxed)) + 1) & u32::MAX as u64;
        s.claims.store(next << 32 | tasks as u64, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        take_tasks(s, next);
        wait_until(|| s.done.load(Ordering::Acquire) == tasks);
        self.running.store(false, Ordering::Release);
    }
}

impl Drop for SpinPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Claims and runs tasks of generation `gen` until none is left.
fn take_tasks(s: &Shared, gen: u64) {
    let mut claims = s.claims.load(Ordering::Acquire);
    loop {
        let unclaimed = claims & u32::MAX as u64;
        if generation(claims) != gen || unclaimed == 0 {
            return;
        }
        match s.claims.compare_exchange_weak(
            claims,
            claims - 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                // SAFETY: a claim of the current job: `job` was written before the job was
                // published and stays until its caller has seen this task done.
                let task = unsafe { &**s.job.get() };
                task(unclaimed as usize - 1);
                s.done.fetch_add(1, Ordering::Release);
                claims = s.claims.load(Ordering::Acquire);
            }
            Err(now) => claims = now,
        }
    }
}

/// A worker: waits for each new generation, spinning for up to SPIN and then sleeping, and
/// takes its tasks.
fn work(s: &Shared) {
    let mut seen = 0;
    loop {
        let Some(gen) = next_generation(s, seen) else {
            return;
        };
        seen = gen;
        take_tasks(s, gen);
    }
}

/// The first generation after `seen`, or `None` once the pool stops.
fn next_generation(s: &Shared, seen: u64) -> Option<u64> {
    let started = Instant::now();
    let mut spins = 0u32;
    loop {
        if s.stop.load(Ordering::Relaxed) {
            return None;
        }
        let gen = generation(s.claims.load(Ordering::Acquire));
        if gen != seen {
            return Some(gen);
        }
        spins += 1;
        if !spins.is_multiple_of(1024) {
            std::hint::spin_loop();
            continue;
        }
        if started.elapsed() < SPIN {
            std::thread::yield_now();
            continue;
        }
        let guard = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
        s.sleepers.fetch_add(1, Ordering::SeqCst);
        let _guard = s
            .wake
            .wait_while(guard, |_| {
                generation(s.claims.load(Ordering::SeqCst)) == seen
                    && !s.stop.load(Ordering::SeqCst)
            })
            .unwrap_or_else(|e| e.into_inner());
        s.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Spins (yielding now and then: another thread may hold the core) until `ready`.
fn wait_until(ready: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !ready() {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(256) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_per_job_over_many_jobs() {
        let pool = SpinPool::new(3).unwrap();
        for tasks in [0, 1, 2, 7, 64, 1000] {
            for _ in 0..50 {
                let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                pool.run(tasks, &|i| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(
                    counts.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                    "{tasks} tasks"
                );
            }
        }
    }

    #[test]
    fn jobs_after_the_threads_sleep_still_run_on_them() {
        let pool = SpinPool::new(2).unwrap();
        let threads = Mutex::new(std::collections::HashSet::new());
        for _ in 0..3 {
            std::thread::sleep(SPIN * 3);
            pool.run(64, &|_| {
                threads.lock().unwrap().insert(std::thread::current().id());
                std::thread::sleep(Duration::from_micros(200));
            });
        }
        assert_eq!(
            threads.lock().unwrap().len(),
            2,
            "the worker woke for the jobs"
        );
    }

    #[test]
    fn a_job_run_from_inside_a_job_runs_on_its_caller() {
        let pool = SpinPool::new(2).unwrap();
        let count = AtomicUsize::new(0);
        pool.run(8, &|_| {
            pool.run(4, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(count.load(Ordering::Relaxed), 32);
    }
}
