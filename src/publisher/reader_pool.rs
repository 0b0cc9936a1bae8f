//! A fixed pool of reader threads for blocking reads that may hang (the NFS homes): at most
//! `concurrency` reads in flight, each given `timeout`, and a hung read abandoned rather than
//! waited for.
//!
//! Why a pool and not a thread per read: a run reads every member's home, 10,000 and more, and
//! starting a thread (with its stack) per home cost more than the reads of an unchanged home
//! themselves. A pool of `concurrency` threads takes the jobs from a shared counter instead.
//!
//! Blocking filesystem calls cannot be cancelled, so hangs are handled by a watchdog (the async
//! caller): a read still running `timeout` after it started is reported [`Finished::TimedOut`],
//! its thread is left to finish whenever the kernel lets it (its result is then dropped), and a
//! replacement thread takes its place so the other reads keep moving. Abandoned threads still
//! stuck are counted; once there are `stuck_limit` of them, the reads are evidently hung, no
//! replacement is started and no further read begins: the jobs left are
//! [`Finished::NotStarted`]. A thread that was abandoned and then finishes stops counting, so a
//! brief stall recovers. The pool therefore never holds more than `concurrency + stuck_limit`
//! threads, and a fully hung file system costs a couple of `timeout`s, not one per job.
//!
//! A read that finishes after its `timeout` but before the watchdog saw it is reported
//! `TimedOut` too: what counts is how long the read took, not when the watchdog woke.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// How many reads may be in flight, how long each may take, and how many abandoned reads mean
/// the file system is hung.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub concurrency: usize,
    pub timeout: Duration,
    pub stuck_limit: usize,
}

/// How one job ended.
#[derive(Debug)]
pub enum Finished<T> {
    Done(T),
    /// The read took longer than `timeout` (and may still be running).
    TimedOut,
    /// The reader panicked.
    Panicked,
    /// Not started: `stuck` reads were hung when it was its turn, or no thread could be started
    /// (`spawn_error`).
    NotStarted {
        stuck: usize,
        spawn_error: Option<String>,
    },
}

/// What the threads share: the jobs, the reader, the next job to take, and the count of
/// abandoned reads still running.
struct Shared<J, R> {
    jobs: Vec<J>,
    reader: R,
    next: AtomicUsize,
    stuck: AtomicUsize,
    stuck_limit: usize,
    timeout: Duration,
}

/// What one thread is doing, as the watchdog sees it.
#[derive(Default)]
struct Slot {
    /// The job being read and when its read started.
    reading: Option<(usize, Instant)>,
    /// Set by the watchdog: the job was reported timed out and a replacement took this thread's
    /// place; this thread ends after its read.
    abandoned: bool,
}

enum Message<T> {
    Done(usize, Finished<T>),
    /// A thread ran out of jobs (or stopped because reads are hung) and ended.
    Exited,
}

/// Runs `reader` over every job on a pool of threads named `name`, and returns how each job
/// ended, in the order of `jobs`.
pub async fn run<J, T, R>(name: &str, jobs: Vec<J>, limits: Limits, reader: R) -> Vec<Finished<T>>
where
    J: Send + Sync + 'static,
    T: Send + 'static,
    R: Fn(&J) -> T + Send + Sync + 'static,
{
    let total = jobs.len();
    let mut results: Vec<Option<Finished<T>>> = (0..total).map(|_| None).collect();
    let shared = Arc::new(Shared {
        jobs,
        reader,
        next: AtomicUsize::new(0),
        stuck: AtomicUsize::new(0),
        stuck_limit: limits.stuck_limit.max(1),
        timeout: limits.timeout,
    });
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let mut slots: Vec<Arc<Mutex<Slot>>> = Vec::new();
    let mut spawn_error = None;
    // Threads still taking jobs (an ended thread's slot stays in `slots`, idle).
    let mut live = 0;
    for _ in 0..limits.concurrency.max(1).min(total) {
        match start(name, &shared, &sender) {
            Ok(slot) => {
                slots.push(slot);
                live += 1;
            }
            Err(error) => spawn_error = Some(error.to_string()),
        }
    }
    let mut remaining = total;
    let mut wake = Instant::now() + limits.timeout;
    while remaining > 0 && live > 0 {
        tokio::select! {
            message = receiver.recv() => match message {
                Some(Message::Done(job, finished)) => {
                    if results[job].is_none() {
                        results[job] = Some(finished);
                        remaining -= 1;
                    }
                }
                Some(Message::Exited) => live -= 1,
                // Never: `sender` is held here.
                None => break,
            },
            () = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                wake = now + limits.timeout;
                let mut replacements = 0;
                slots.retain(|slot| {
                    let mut slot = lock(slot);
                    let Some((job, started)) = slot.reading else { return true };
                    if now < started + limits.timeout {
                        wake = wake.min(started + limits.timeout);
                        return true;
                    }
                    // Counted while the slot is locked, so the thread (which checks `abandoned`
                    // under the same lock) can never uncount a read that was not counted.
                    shared.stuck.fetch_add(1, Ordering::SeqCst);
                    slot.abandoned = true;
                    if results[job].is_none() {
                        results[job] = Some(Finished::TimedOut);
                        remaining -= 1;
                    }
                    replacements += 1;
                    live -= 1;
                    false
                });
                for _ in 0..replacements {
                    let stuck = shared.stuck.load(Ordering::SeqCst);
                    if stuck >= shared.stuck_limit {
                        tracing::warn!(stuck, "reads are hung; the jobs left are not started");
                        break;
                    }
                    match start(name, &shared, &sender) {
                        Ok(slot) => {
                            slots.push(slot);
                            live += 1;
                        }
                        Err(error) => spawn_error = Some(error.to_string()),
                    }
                }
            }
        }
    }
    let stuck = shared.stuck.load(Ordering::SeqCst);
    results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| Finished::NotStarted {
                stuck,
                spawn_error: spawn_error.clone(),
            })
        })
        .collect()
}

fn lock(slot: &Mutex<Slot>) -> std::sync::MutexGuard<'_, Slot> {
    // A reader's panic is caught outside the lock; should a holder still have panicked, the
    // slot's two fields are consistent at every point they are written.
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts one reader thread.
fn start<J, T, R>(
    name: &str,
    shared: &Arc<Shared<J, R>>,
    sender: &mpsc::UnboundedSender<Message<T>>,
) -> std::io::Result<Arc<Mutex<Slot>>>
where
    J: Send + Sync + 'static,
    T: Send + 'static,
    R: Fn(&J) -> T + Send + Sync + 'static,
{
    let slot = Arc::new(Mutex::new(Slot::default()));
    let (shared, sender, mine) = (Arc::clone(shared), sender.clone(), Arc::clone(&slot));
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || read_jobs(&shared, &mine, &sender))?;
    Ok(slot)
}

/// One thread's loop: take the next job, read it, report it, until the jobs run out, reads are
/// hung, or the watchdog abandoned this thread.
fn read_jobs<J, T, R>(
    shared: &Shared<J, R>,
    slot: &Mutex<Slot>,
    sender: &mpsc::UnboundedSender<Message<T>>,
) where
    R: Fn(&J) -> T,
{
    loop {
        if shared.stuck.load(Ordering::SeqCst) >= shared.stuck_limit {
            break;
        }
        let job = shared.next.fetch_add(1, Ordering::SeqCst);
        let Some(input) = shared.jobs.get(job) else {
            break;
        };
        let started = Instant::now();
        lock(slot).reading = Some((job, started));
        let read = catch_unwind(AssertUnwindSafe(|| (shared.reader)(input)));
        let took = started.elapsed();
        {
            let mut slot = lock(slot);
            if slot.abandoned {
                // Already reported timed out, and replaced: no longer stuck, and done.
                shared.stuck.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            slot.reading = None;
        }
        let finished = match read {
            Ok(_) if took > shared.timeout => Finished::TimedOut,
            Ok(output) => Finished::Done(output),
            Err(_) => Finished::Panicked,
        };
        if sender.send(Message::Done(job, finished)).is_err() {
            return;
        }
    }
    let _ = sender.send(Message::Exited);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[tokio::test]
    async fn many_jobs_are_read_by_concurrency_threads_not_one_each() {
        let limits = Limits {
            concurrency: 4,
            timeout: Duration::from_secs(10),
            stuck_limit: 8,
        };
        let jobs: Vec<usize> = (0..2_000).collect();
        let finished = run("pool-test", jobs, limits, |job: &usize| {
            (*job, format!("{:?}", std::thread::current().id()))
        })
        .await;

        assert_eq!(finished.len(), 2_000);
        let mut threads = BTreeSet::new();
        for (index, finished) in finished.into_iter().enumerate() {
            let Finished::Done((job, thread)) = finished else {
                panic!("job {index}: {finished:?}");
            };
            // In the order of the jobs, each read once.
            assert_eq!(job, index);
            threads.insert(thread);
        }
        assert!(
            (1..=4).contains(&threads.len()),
            "{} threads read the jobs",
            threads.len()
        );
    }

    #[tokio::test]
    async fn no_jobs_start_no_threads_and_return_at_once() {
        let limits = Limits {
            concurrency: 4,
            timeout: Duration::from_secs(3600),
            stuck_limit: 8,
        };
        let finished = run("pool-test", Vec::<u8>::new(), limits, |_: &u8| ()).await;
        assert!(finished.is_empty());
    }
}
