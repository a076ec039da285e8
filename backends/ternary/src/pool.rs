//! The engine's compute threads: a fixed team made once, which spins
//! between jobs instead of sleeping.
//!
//! Decoding a token is a few hundred short parallel steps (each matrix
//! product of each layer, attention) separated by microseconds of serial
//! work. A work-stealing pool whose idle threads go to sleep pays a
//! futex wake-up (tens of microseconds in a VM) at nearly every step; that
//! was a tenth of a token's time here. So workers spin on one atomic
//! counter for a while after each job and only then park; the thread that
//! submits a job works on it too.
//!
//! A job is `tasks` calls of one closure, claimed one index at a time from
//! a counter that carries the job's epoch, so a worker that wakes late can
//! never run a task of the job after the one it saw (the claim fails when
//! the epoch moved on). The submitter returns only when every claimed task
//! has finished, which is what lets tasks borrow from its stack.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks: longer than the serial
/// gaps inside a token (so they never park mid-token), short enough that
/// an idle engine stops burning its cores almost at once.
const SPIN: Duration = Duration::from_millis(2);

/// Low bits of the claim counter: the next task index.
const INDEX_BITS: u32 = 24;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;

type Task<'a> = dyn Fn(usize) + Sync + 'a;

/// The job being run, behind a thin pointer (a `&dyn Fn` is two words).
struct JobRef<'a> {
    f: &'a Task<'a>,
}

struct Shared {
    /// epoch << INDEX_BITS | next task index.
    claim: AtomicU64,
    job: AtomicPtr<JobRef<'static>>,
    tasks: AtomicUsize,
    done: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    stop: AtomicBool,
    sleepers: AtomicUsize,
    park: Mutex<()>,
    wake: Condvar,
}

/// A team of `threads` compute threads (the submitting thread counts as one).
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    threads: usize,
    /// One job at a time: concurrent submitters (two requests decoding at
    /// once) take turns per step.
    submit: Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("threads", &self.threads).finish()
    }
}

thread_local! {
    /// Set while this thread runs a pool task: a job submitted from inside
    /// one runs inline (the team is busy with the outer job).
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    /// The pool `install` made current on this thread.
    static CURRENT: Cell<*const Pool> = const { Cell::new(std::ptr::null()) };
}

impl Pool {
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            claim: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            tasks: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
            stop: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            park: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..threads)
            .map(|i| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("bitnet-compute-{i}"))
                    .spawn(move || worker(&s))
                    .expect("cannot start a compute thread")
            })
            .collect();
        Pool { shared, workers, threads, submit: Mutex::new(()) }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Call `f(i)` for every i in 0..tasks on the team; returns when all
    /// have returned. A panic in any task is raised here afterwards.
    pub fn run(&self, tasks: usize, f: &Task<'_>) {
        if tasks == 0 {
            return;
        }
        if self.threads == 1 || tasks == 1 || IN_TASK.with(Cell::get) {
            (0..tasks).for_each(f);
            return;
        }
        assert!((tasks as u64) < INDEX_MASK, "too many tasks in one job");
        let _turn = self.submit.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        let job = JobRef { f };
        // SAFETY: the pointer is only dereferenced for a task claimed under
        // this job's epoch, and this function does not return (nor unwind:
        // tasks run under catch_unwind) before every such task finished.
        let ptr = (&job as *const JobRef<'_>).cast_mut().cast::<JobRef<'static>>();
        s.job.store(ptr, Ordering::Relaxed);
        s.tasks.store(tasks, Ordering::Relaxed);
        s.done.store(0, Ordering::Relaxed);
        let epoch = (s.claim.load(Ordering::Relaxed) >> INDEX_BITS) + 1;
        s.claim.store(epoch << INDEX_BITS, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.park.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        work(s, epoch, tasks, &job);
        while s.done.load(Ordering::Acquire) < tasks {
            std::hint::spin_loop();
        }
        s.job.store(std::ptr::null_mut(), Ordering::Relaxed);
        if let Some(p) = s.panic.lock().unwrap_or_else(|e| e.into_inner()).take() {
            std::panic::resume_unwind(p);
        }
    }

    /// Make this the pool that `current()` gives on this thread while `f` runs.
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(*const Pool);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.replace(self)));
        f()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _g = self.shared.park.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Claim and run tasks of job `epoch` until none is left.
fn work(s: &Shared, epoch: u64, tasks: usize, job: &JobRef<'_>) {
    let mut c = s.claim.load(Ordering::Acquire);
    loop {
        if c >> INDEX_BITS != epoch || (c & INDEX_MASK) as usize >= tasks {
            return;
        }
        match s.claim.compare_exchange_weak(c, c + 1, Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => {
                let i = (c & INDEX_MASK) as usize;
                IN_TASK.with(|t| t.set(true));
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.f)(i)));
                IN_TASK.with(|t| t.set(false));
                if let Err(p) = r {
                    s.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(p);
                }
                s.done.fetch_add(1, Ordering::Release);
                c = s.claim.load(Ordering::Acquire);
            }
            Err(now) => c = now,
        }
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    let mut idle_since = Instant::now();
    let mut spins = 0u32;
    loop {
        if s.stop.load(Ordering::Relaxed) {
            return;
        }
        let c = s.claim.load(Ordering::Acquire);
        let epoch = c >> INDEX_BITS;
        if epoch != seen {
            seen = epoch;
            let ptr = s.job.load(Ordering::Relaxed);
            let tasks = s.tasks.load(Ordering::Relaxed);
            if !ptr.is_null() {
                // SAFETY: `work` only calls into the job after claiming a
                // task under `epoch`; a successful claim means the job of
                // that epoch is still running (its submitter waits for the
                // task), and the pointer read after seeing `epoch` is that
                // job's (a later job can only be published after this one
                // finished, when every claim under `epoch` fails).
                work(s, epoch, tasks, unsafe { &*ptr });
            }
            idle_since = Instant::now();
            spins = 0;
            continue;
        }
        spins += 1;
        if !spins.is_multiple_of(1024) || idle_since.elapsed() < SPIN {
            std::hint::spin_loop();
            continue;
        }
        // Park until the next job (or stop).
        s.sleepers.fetch_add(1, Ordering::SeqCst);
        {
            let mut g = s.park.lock().unwrap_or_else(|e| e.into_inner());
            while s.claim.load(Ordering::SeqCst) >> INDEX_BITS == seen && !s.stop.load(Ordering::SeqCst) {
                g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
        }
        s.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

static GLOBAL_THREADS: AtomicUsize = AtomicUsize::new(0);
static GLOBAL: OnceLock<Pool> = OnceLock::new();

/// The size of the process-wide pool, before its first use (later calls
/// change nothing and say so).
pub fn configure_global(threads: usize) -> bool {
    GLOBAL_THREADS.store(threads.max(1), Ordering::SeqCst);
    GLOBAL.get().is_none()
}

/// The pool installed on this thread, else the process-wide one (its size
/// from `configure_global`, else the machine's available parallelism).
pub fn with_current<R>(f: impl FnOnce(&Pool) -> R) -> R {
    let p = CURRENT.with(Cell::get);
    if p.is_null() {
        f(GLOBAL.get_or_init(|| {
            let n = match GLOBAL_THREADS.load(Ordering::SeqCst) {
                0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                n => n,
            };
            Pool::new(n)
        }))
    } else {
        // SAFETY: set by `install`, which outlives every call made inside it.
        f(unsafe { &*p })
    }
}

/// Threads of the current pool.
pub fn current_threads() -> usize {
    with_current(Pool::threads)
}

/// Split `data` into pieces of `chunk` items and call `f(first_index,
/// piece)` for each, in parallel on the current pool.
pub fn for_each_chunk_mut<T: Send>(data: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let chunk = chunk.max(1);
    let len = data.len();
    let out = SharedMut::new(data);
    with_current(|p| {
        p.run(len.div_ceil(chunk), &|i| {
            let start = i * chunk;
            let end = (start + chunk).min(len);
            // SAFETY: task i owns items start..end, disjoint from every other task's.
            f(start, unsafe { out.slice(start, end) })
        })
    });
}

/// Bytes below which a part is not worth a hand-off.
const MIN_PART_BYTES: usize = 16 << 10;

/// Parts of `rows` rows of `row_bytes` each, every row met by `tokens`
/// vectors, for the current pool, largest first (guided self-scheduling):
/// each part is the rows left over the threads (one to `FEW_TOKENS`
/// tokens) or over twice the threads (more), never under
/// `MIN_PART_BYTES`. A job ends when its last part does, so the parts
/// claimed last must be short: with equal parts (four per thread) a thread
/// waited up to a part at every job, and the 650 MB output matrix's parts
/// were 80 MB. Large parts first keep each thread's reads long and
/// sequential and the claims few (about threads x ln(rows / min) parts).
///
/// Decoding reads each part's rows from memory once, and each part's start
/// costs its thread a new stream: twice the threads (twice the parts)
/// decoded 2.7% slower on 2 threads (2B4T I2_S; 4 sequences 1.2%). A
/// prompt's product computes for many tokens a row, and there half the
/// rows in the first part (its tokens' results in a scratch of its own, the
/// matrix's half at once) took 2B4T I2_S's pp128 on 2 threads from 287-322
/// to 221-232 tokens/s.
///
/// Every part but the last is a multiple of `align` rows.
pub fn guided_parts(rows: usize, row_bytes: usize, tokens: usize, align: usize) -> Vec<std::ops::Range<usize>> {
    let threads = current_threads();
    let share = if tokens <= FEW_TOKENS { threads } else { 2 * threads };
    let align = align.max(1);
    let least = (MIN_PART_BYTES / row_bytes.max(1)).max(1);
    let mut parts = Vec::new();
    let mut start = 0;
    while start < rows {
        let n = ((rows - start) / share).max(least).next_multiple_of(align).min(rows - start);
        parts.push(start..start + n);
        start += n;
    }
    parts
}

/// The most tokens a product meets where `guided_parts` gives each thread
/// its longest stream (decoding: bound by the reads of the weights).
pub const FEW_TOKENS: usize = 4;

/// `data` holds rows of `width` items (a row's results, one per token);
/// call `f(first_row, piece)` for each part of `guided_parts(rows,
/// row_bytes)`, in parallel on the current pool.
pub fn for_each_rows_mut<T: Send>(data: &mut [T], width: usize, row_bytes: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let width = width.max(1);
    let parts = guided_parts(data.len() / width, row_bytes, width, 1);
    let out = SharedMut::new(data);
    with_current(|p| {
        p.run(parts.len(), &|i| {
            let r = &parts[i];
            // SAFETY: guided_parts are disjoint and in bounds, so task i
            // owns items r.start * width..r.end * width alone.
            f(r.start, unsafe { out.slice(r.start * width, r.end * width) })
        })
    });
}

/// `for_each_rows_mut` for products with `n` vectors whose results go out
/// token-major (`ys`: n outputs of `ys.len() / n` rows): each task computes
/// its rows (`f(first_row, part)`, part token-major too: n runs of its
/// row count) in a scratch buffer and copies them out itself, so no thread
/// lays the whole product out afterwards while the others wait.
pub fn for_each_rows_token_major(ys: &mut [f32], n: usize, row_bytes: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let n = n.max(1);
    let rows = ys.len() / n;
    let parts = guided_parts(rows, row_bytes, n, 1);
    let out = SharedMut::new(ys);
    with_current(|p| {
        p.run(parts.len(), &|i| {
            let r = &parts[i];
            with_scratch(r.len() * n, |part| {
                f(r.start, part);
                // SAFETY: guided_parts are disjoint, so rows r of every output are this task's.
                unsafe { out.write_rows(part, n, rows, r.start) };
            })
        })
    });
}

/// Element types a task can borrow a scratch buffer of (`with_scratch`).
pub trait Scratch: Copy + 'static {
    /// What a debug build fills a scratch buffer with: a result left
    /// unwritten shows up in the tests' results.
    const POISON: Self;
    #[doc(hidden)]
    fn local() -> &'static std::thread::LocalKey<RefCell<Vec<Self>>>;
}

thread_local! {
    static SCRATCH_F32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SCRATCH_I32: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
    static SCRATCH_U8: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Scratch for f32 {
    const POISON: f32 = f32::NAN;
    fn local() -> &'static std::thread::LocalKey<RefCell<Vec<f32>>> {
        &SCRATCH_F32
    }
}

impl Scratch for i32 {
    const POISON: i32 = i32::MIN;
    fn local() -> &'static std::thread::LocalKey<RefCell<Vec<i32>>> {
        &SCRATCH_I32
    }
}

impl Scratch for u8 {
    const POISON: u8 = 0xA5;
    fn local() -> &'static std::thread::LocalKey<RefCell<Vec<u8>>> {
        &SCRATCH_U8
    }
}

/// `f` on `len` values of this thread's own buffer, kept for its next
/// task (it grows to the largest part the thread has computed; a fresh
/// buffer if this thread's is in use further up the stack). What it holds
/// is left from before (`T::POISON` in debug builds): `f` writes every
/// value before it reads it. A part of a product allocated, zeroed and
/// freed its results each time, a few hundred times a decoding step; the
/// zeroing alone was 22 MB a 4-sequence step, 2% of its time. Kept up to
/// `SCRATCH_KEPT` bytes.
pub fn with_scratch<T: Scratch, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    T::local().with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, T::POISON);
            }
            let part = &mut buf[..len];
            if cfg!(debug_assertions) {
                part.fill(T::POISON);
            }
            let r = f(part);
            if std::mem::size_of_val(&buf[..]) > SCRATCH_KEPT {
                *buf = Vec::new();
            }
            r
        }
        Err(_) => f(&mut vec![T::POISON; len]),
    })
}

/// The most a thread keeps of a scratch buffer between tasks: what 2B4T's
/// largest prompt-chunk parts need (128 tokens x 3,456 rows of f32, 1.8
/// MB), so a long-lived engine holds at most this much per thread and type
/// after a larger product.
const SCRATCH_KEPT: usize = 2 << 20;

/// A mutable slice handed to parallel tasks that each take a disjoint part.
pub struct SharedMut<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: only disjoint parts are handed out (the caller's promise in
// `slice`), so sending it to other threads is sending &mut [T] pieces.
unsafe impl<T: Send> Send for SharedMut<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub fn new(data: &mut [T]) -> Self {
        SharedMut { ptr: data.as_mut_ptr(), len: data.len() }
    }

    /// # Safety
    /// No two live results may overlap, and the borrowed slice must outlive them.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, end: usize) -> &mut [T] {
        assert!(start <= end && end <= self.len, "part out of range");
        // SAFETY: in range (checked); disjointness is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), end - start) }
    }
}

impl SharedMut<f32> {
    /// Rows `first..` of a product with n vectors (`part`: n runs of its
    /// row count) into this output (n runs of `rows`).
    ///
    /// # Safety
    /// Those rows of every vector's output belong to the caller alone.
    pub unsafe fn write_rows(&self, part: &[f32], n: usize, rows: usize, first: usize) {
        let m = part.len() / n;
        for (t, run) in part.chunks_exact(m.max(1)).enumerate() {
            // SAFETY: the caller's promise; slice() checks the bounds.
            unsafe { self.slice(t * rows + first, t * rows + first + m) }.copy_from_slice(run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_exactly_once_across_many_jobs() {
        let pool = Pool::new(3);
        for tasks in [1usize, 2, 3, 7, 64, 1000] {
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..50 {
                pool.run(tasks, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 50), "{tasks} tasks");
        }
    }

    #[test]
    fn workers_take_part_and_parked_workers_wake() {
        let pool = Pool::new(2);
        let seen = Mutex::new(std::collections::HashSet::new());
        // After a pause longer than the spin, the worker has parked; a job
        // of slow tasks must still be shared with it.
        std::thread::sleep(SPIN * 3);
        pool.run(8, &|_| {
            seen.lock().unwrap().insert(std::thread::current().id());
            std::thread::sleep(Duration::from_millis(20));
        });
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_panicking_task_panics_the_submitter_and_the_pool_keeps_working() {
        let pool = Pool::new(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(16, &|i| assert!(i != 11, "task eleven"));
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool.run(16, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 16);
    }

    #[test]
    fn jobs_from_several_threads_and_nested_jobs_complete() {
        let pool = Pool::new(2);
        let total = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..3 {
                sc.spawn(|| {
                    for _ in 0..100 {
                        pool.run(5, &|_| {
                            // A nested job runs inline.
                            pool.run(2, &|_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 3 * 100 * 5 * 2);
    }

    #[test]
    fn guided_parts_cover_the_rows_in_order_largest_first() {
        let pool = Pool::new(2);
        pool.install(|| {
            for (rows, row_bytes) in
                [(0usize, 640usize), (1, 640), (100, 640), (3840, 640), (128_256, 5120), (7, 1 << 20)]
            {
                // Few tokens: the rows left over the 2 threads; many: over 4.
                for (tokens, share) in [(1, 2), (FEW_TOKENS, 2), (FEW_TOKENS + 1, 4), (128, 4)] {
                    let parts = guided_parts(rows, row_bytes, tokens, 1);
                    let least = (MIN_PART_BYTES / row_bytes).max(1);
                    let mut next = 0;
                    for (i, p) in parts.iter().enumerate() {
                        assert_eq!(p.start, next, "{rows} rows: parts are contiguous");
                        assert!(p.end > p.start);
                        // At most the rows left over the share (or the least part).
                        assert!(p.len() <= ((rows - p.start) / share).max(least), "{tokens} tokens: {parts:?}");
                        if i + 1 < parts.len() {
                            assert!(p.len() >= least && p.len() >= parts[i + 1].len(), "{rows} rows: {parts:?}");
                        }
                        next = p.end;
                    }
                    assert_eq!(next, rows);
                    let most = share * (1 + rows.max(1).ilog2() as usize);
                    assert!(parts.len() <= most, "{rows} rows, {tokens} tokens: {} parts", parts.len());
                    // The first part is the share's, where the rows allow.
                    if rows / share > least {
                        assert_eq!(parts[0].len(), rows / share, "{rows} rows, {tokens} tokens");
                    }
                }
            }
            // The output matrix's last part is small: no thread waits long.
            let parts = guided_parts(128_256, 5120, 1, 1);
            assert!(parts.last().unwrap().len() * 5120 <= 2 * MIN_PART_BYTES);
            // Aligned: whole groups but the last part, still covering all.
            for (rows, row_bytes) in [(3840usize, 660usize), (37, 66), (10_000, 1782), (5, 66)] {
                let parts = guided_parts(rows, row_bytes, 1, 16);
                assert_eq!(parts.last().map_or(0, |p| p.end), rows);
                for (i, p) in parts.iter().enumerate() {
                    assert!(p.start.is_multiple_of(16) && !p.is_empty(), "{rows} rows: {parts:?}");
                    assert!(i + 1 == parts.len() || p.len().is_multiple_of(16), "{rows} rows: {parts:?}");
                }
            }
        });
    }

    /// A scratch buffer comes poisoned in debug builds (what a kernel
    /// leaves unwritten shows), nests (a fresh one inside), and is kept.
    #[test]
    fn scratch_is_poisoned_nests_and_is_kept() {
        with_scratch(100, |a: &mut [f32]| {
            assert_eq!(a.len(), 100);
            assert!(!cfg!(debug_assertions) || a.iter().all(|x| x.is_nan()));
            a.fill(1.0);
            with_scratch(7, |b: &mut [f32]| {
                assert!(!cfg!(debug_assertions) || b.iter().all(|x| x.is_nan()));
                b.fill(2.0);
            });
            with_scratch(3, |c: &mut [i32]| assert!(!cfg!(debug_assertions) || c.iter().all(|&x| x == i32::MIN)));
            assert!(a.iter().all(|&x| x == 1.0), "a nested buffer is another");
        });
        with_scratch(10, |_: &mut [f32]| ());
        assert!(SCRATCH_F32.with_borrow(|v| v.capacity()) >= 100, "the thread keeps its buffer");
        // Past SCRATCH_KEPT, not.
        with_scratch(SCRATCH_KEPT / 4 + 1, |b: &mut [f32]| b.fill(0.0));
        assert_eq!(SCRATCH_F32.with_borrow(|v| v.capacity()), 0, "a buffer past the bound is given back");
    }

    #[test]
    fn rows_cover_the_slice_once_with_their_offsets() {
        let pool = Pool::new(2);
        for width in [1usize, 3] {
            let mut v = vec![0usize; 1003 * width];
            pool.install(|| {
                for_each_rows_mut(&mut v, width, 100, |first, part| {
                    part.iter_mut().enumerate().for_each(|(i, x)| *x += first * width + i)
                })
            });
            assert!(v.iter().enumerate().all(|(i, &x)| x == i));
        }
    }

    #[test]
    fn chunks_cover_the_slice_once_with_their_offsets() {
        let pool = Pool::new(2);
        let mut v = vec![0usize; 1003];
        pool.install(|| {
            for_each_chunk_mut(&mut v, 10, |start, part| part.iter_mut().enumerate().for_each(|(i, x)| *x += start + i))
        });
        assert!(v.iter().enumerate().all(|(i, &x)| x == i));
    }
}
