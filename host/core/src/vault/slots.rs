//! Compression slots shared fairly by the streams of one backup.
//!
//! A backup compresses on at most `workers` threads at once, whatever the
//! number of streams. Handing the slots out first come, first served makes
//! the streams take turns part by part, so a stream of cheap parts (a table
//! that compresses 36 to 1 at 1.3 GB/s) is held to the pace of one whose
//! parts cost six times as much CPU: it is still being read, disk-bound with
//! a core idle, long after the costly one has finished.
//!
//! [`FairSlots`] hands a free slot to the waiting stream that has used the
//! least compression time so far, the way the kernel shares a CPU between
//! threads. Both streams then get the same CPU time: the cheap one goes at
//! the speed of the disk while the costly one keeps the other core busy. No
//! slot is ever left free while a stream waits.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::oneshot;

/// `workers` compression slots; see the module docs.
pub(crate) struct FairSlots {
    state: Mutex<SlotState>,
}

struct SlotState {
    free: usize,
    waiting: Vec<Waiter>,
    next_seq: u64,
    /// The compression time of the stream that asked for a slot last: a
    /// stream that starts later starts from here, so that it does not take
    /// every slot until it has caught up with the streams before it.
    floor: u64,
}

struct Waiter {
    used: Arc<AtomicU64>,
    seq: u64,
    grant: oneshot::Sender<()>,
}

/// One stream's account: the nanoseconds of compression it has used.
#[derive(Clone)]
pub(crate) struct StreamAccount(Arc<AtomicU64>);

impl StreamAccount {
    /// The compression time charged so far, in seconds.
    pub(crate) fn seconds(&self) -> f64 {
        self.0.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// Runs `job` (one part's compression) and charges its time.
    pub(crate) fn charge<T>(&self, job: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = job();
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(nanos, Ordering::Relaxed);
        out
    }
}

/// A slot held; dropping it hands the slot on.
pub(crate) struct SlotPermit {
    slots: Arc<FairSlots>,
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        self.slots.release();
    }
}

impl FairSlots {
    /// `slots` slots (at least one).
    pub(crate) fn new(slots: usize) -> Arc<Self> {
        Arc::new(FairSlots {
            state: Mutex::new(SlotState {
                free: slots.max(1),
                waiting: Vec::new(),
                next_seq: 0,
                floor: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // The state is consistent after every statement: a panic elsewhere
        // cannot leave it half-updated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new stream's account, starting level with the streams running.
    pub(crate) fn account(&self) -> StreamAccount {
        StreamAccount(Arc::new(AtomicU64::new(self.lock().floor)))
    }

    /// Waits for a slot for the stream of `account`.
    pub(crate) fn acquire(self: &Arc<Self>, account: &StreamAccount) -> Acquire {
        let mut state = self.lock();
        let used = account.0.load(Ordering::Relaxed);
        state.floor = used;
        if state.free > 0 && state.waiting.is_empty() {
            state.free -= 1;
            return Acquire {
                slots: self.clone(),
                grant: None,
                held: false,
            };
        }
        let (grant, granted) = oneshot::channel();
        let seq = state.next_seq;
        state.next_seq += 1;
        state.waiting.push(Waiter {
            used: account.0.clone(),
            seq,
            grant,
        });
        Acquire {
            slots: self.clone(),
            grant: Some(granted),
            held: false,
        }
    }

    /// Hands a slot given back to the waiter that has used the least time
    /// (the longest waiting among equals), or frees it.
    fn release(&self) {
        let mut state = self.lock();
        while !state.waiting.is_empty() {
            let next = (0..state.waiting.len())
                .min_by_key(|&i| {
                    let w = &state.waiting[i];
                    (w.used.load(Ordering::Relaxed), w.seq)
                })
                .expect("not empty");
            if state.waiting.swap_remove(next).grant.send(()).is_ok() {
                return;
            }
            // That waiter gave up; try the next.
        }
        state.free += 1;
    }
}

/// A pending [`FairSlots::acquire`].
pub(crate) struct Acquire {
    slots: Arc<FairSlots>,
    /// Where the slot is granted; `None` when it was free at once or has
    /// been granted.
    grant: Option<oneshot::Receiver<()>>,
    /// Whether the slot has been handed out as a [`SlotPermit`].
    held: bool,
}

impl Future for Acquire {
    type Output = SlotPermit;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<SlotPermit> {
        if let Some(granted) = self.grant.as_mut() {
            match Pin::new(granted).poll(cx) {
                Poll::Pending => return Poll::Pending,
                // A waiter's sender is only dropped by sending: the slot is ours.
                Poll::Ready(_) => self.grant = None,
            }
        }
        self.held = true;
        Poll::Ready(SlotPermit {
            slots: self.slots.clone(),
        })
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        if self.held {
            return;
        }
        // Given up before the slot was handed out: a slot that was free at
        // once, or granted meanwhile, goes to the next stream.
        match self.grant.take() {
            None => self.slots.release(),
            Some(mut granted) => {
                granted.close();
                if granted.try_recv().is_ok() {
                    self.slots.release();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Two streams want the slot all the time; a part of the cheap one
    /// costs 2 units of compression time, a part of the costly one 10.
    /// Every slot given back goes to the stream that has used the least
    /// time, so their totals never drift apart by more than one costly part
    /// and the cheap stream gets five grants for each of the costly one's.
    /// Handed out in turn, both would get as many grants, and the cheap
    /// stream a fifth of the time. Time is counted here, not measured: the
    /// order of grants is the behaviour, whatever the machine's speed.
    #[test]
    fn streams_get_equal_time_not_equal_turns() {
        use futures::FutureExt;
        const COST: [u64; 2] = [2, 10];
        let slots = FairSlots::new(1);
        let accounts = [slots.account(), slots.account()];
        let mut grants = [0u64; 2];
        // The cheap stream takes the free slot; the costly one waits.
        let mut held = (
            0,
            slots
                .acquire(&accounts[0])
                .now_or_never()
                .expect("a free slot is granted at once"),
        );
        let mut waiting = [None, Some(Box::pin(slots.acquire(&accounts[1])))];
        for _ in 0..600 {
            let (holder, permit) = held;
            // The holder compresses a part and is charged for it, asks for
            // the slot for its next part, and gives this one back.
            accounts[holder]
                .0
                .fetch_add(COST[holder], Ordering::Relaxed);
            grants[holder] += 1;
            waiting[holder] = Some(Box::pin(slots.acquire(&accounts[holder])));
            drop(permit);
            let granted: Vec<(usize, SlotPermit)> = (0..2)
                .filter_map(|i| {
                    let permit = waiting[i].as_mut().unwrap().as_mut().now_or_never()?;
                    waiting[i] = None;
                    Some((i, permit))
                })
                .collect();
            let used = accounts.each_ref().map(|a| a.0.load(Ordering::Relaxed));
            assert_eq!(granted.len(), 1, "one slot, one grant (used {used:?})");
            // Among equals, the one that has waited longer: not the holder,
            // which asked again just now.
            let least = match used[0].cmp(&used[1]) {
                std::cmp::Ordering::Less => 0,
                std::cmp::Ordering::Greater => 1,
                std::cmp::Ordering::Equal => 1 - holder,
            };
            assert_eq!(
                granted[0].0, least,
                "the slot goes to the stream that used less time (used {used:?})"
            );
            assert!(
                used[0].abs_diff(used[1]) <= COST[1],
                "the streams' times drifted apart: {used:?} after {grants:?} grants"
            );
            held = granted.into_iter().next().unwrap();
        }
        let used = accounts.each_ref().map(|a| a.0.load(Ordering::Relaxed));
        assert_eq!(grants.iter().sum::<u64>(), 600);
        assert!(
            (495..=505).contains(&grants[0]),
            "five cheap parts for each costly one: {grants:?} grants, {used:?} time"
        );
    }

    /// The time a stream is charged is the time its jobs took.
    #[test]
    fn a_stream_is_charged_the_time_its_jobs_take() {
        let slots = FairSlots::new(1);
        let account = slots.account();
        let out = account.charge(|| {
            std::thread::sleep(Duration::from_millis(20));
            7
        });
        assert_eq!(out, 7);
        assert!(account.seconds() >= 0.020, "{} s", account.seconds());
        // A stream that starts later starts level with the last one to ask.
        let _permit = slots.acquire(&account);
        assert_eq!(
            slots.account().0.load(Ordering::Relaxed),
            account.0.load(Ordering::Relaxed)
        );
    }

    /// Never more holders than slots; a waiter that gives up, whether before
    /// or after its slot was granted, passes the slot on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn slots_are_never_lost_or_exceeded() {
        let slots = FairSlots::new(2);
        let account = slots.account();
        let first = slots.acquire(&account).await;
        let second = slots.acquire(&account).await;
        // Both taken: a third waits.
        let mut third = Box::pin(slots.acquire(&account));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut third)
                .await
                .is_err()
        );
        // Granted to the third, which then gives up without taking it.
        drop(first);
        drop(third);
        // An acquire that is free at once, dropped unpolled.
        drop(slots.acquire(&account));
        // The slot the third gave up, and the one dropped unpolled, are free.
        let again = tokio::time::timeout(Duration::from_secs(1), slots.acquire(&account))
            .await
            .expect("a slot given up is handed on");
        let mut over = Box::pin(slots.acquire(&account));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut over)
                .await
                .is_err(),
            "two slots, two holders"
        );
        drop(second);
        tokio::time::timeout(Duration::from_secs(1), over)
            .await
            .expect("a slot given back goes to the waiter");
        drop(again);
    }
}
