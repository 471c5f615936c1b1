//! A future that is polled only after it has woken its task. Every client connection races its HTTP
//! service against the proxy's shutdown signal, and `select!` polls every branch on every wake-up:
//! a pending `watch::Receiver::changed` takes the lock of the proxy-wide `Notify` on each poll, so
//! each request locked (and, with several workers, bounced between cores) one shared cache line
//! two or three times for a signal that comes once.

use futures_util::task::AtomicWaker;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

/// Polls `F` on its first poll, and after that only once `F` has woken it; other polls return
/// `Pending` after a load and a waker comparison.
pub struct PollWhenWoken<F> {
    inner: F,
    signal: Arc<Signal>,
    /// Given to `F`: it sets the flag and wakes the task.
    inner_waker: Waker,
    /// The task waker last put in `signal.task`, while it is known to be there.
    registered: Option<Waker>,
}

struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future + Unpin> PollWhenWoken<F> {
    /// Wraps `inner`.
    pub fn new(inner: F) -> Self {
        let signal = Arc::new(Signal {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        PollWhenWoken {
            inner,
            inner_waker: Waker::from(signal.clone()),
            signal,
            registered: None,
        }
    }
}

impl<F: Future + Unpin> Future for PollWhenWoken<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        if this.signal.woken.load(Ordering::Acquire) {
            this.signal.woken.store(false, Ordering::Relaxed);
        } else if this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        } else {
            // No task waker yet, or a new one (never under tokio): put it where `F`'s wake-up
            // finds it, then look at the flag again, in case the wake-up came before it was there.
            this.signal.task.register(cx.waker());
            this.registered = Some(cx.waker().clone());
            if !this.signal.woken.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
        }
        // `F` woke the task, which took the task waker out of `signal.task`: put it back before
        // polling `F`, so that its next wake-up reaches the task.
        this.signal.task.register(cx.waker());
        this.registered = Some(cx.waker().clone());
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(&this.inner_waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Waker;

    /// Counts its polls; ready once `ready` is set, pending (keeping the waker) before.
    #[derive(Default)]
    struct Probe {
        polls: AtomicUsize,
        ready: AtomicBool,
        waker: std::sync::Mutex<Option<Waker>>,
    }

    struct ProbeFuture(Arc<Probe>);

    impl Future for ProbeFuture {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.0.polls.fetch_add(1, Ordering::SeqCst);
            if self.0.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.0.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// A task waker that counts its wake-ups.
    #[derive(Default)]
    struct Task(AtomicUsize);

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A probe, a counting task waker, and the probe wrapped.
    fn wrapped() -> (Arc<Probe>, Arc<Task>, Waker, PollWhenWoken<ProbeFuture>) {
        let probe = Arc::new(Probe::default());
        let task = Arc::new(Task::default());
        let fut = PollWhenWoken::new(ProbeFuture(probe.clone()));
        (probe, task.clone(), Waker::from(task), fut)
    }

    #[test]
    fn the_inner_future_is_polled_first_then_only_after_its_own_wake_up() {
        let (probe, task, waker, mut fut) = wrapped();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
        assert_eq!(probe.polls.load(Ordering::SeqCst), 1);
        // The task is woken by something else (a request): the inner future is not polled.
        for _ in 0..5 {
            assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
        }
        assert_eq!(probe.polls.load(Ordering::SeqCst), 1);

        // The inner future's wake-up reaches the task, and the next poll polls it.
        probe.ready.store(true, Ordering::SeqCst);
        probe.waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert!(Pin::new(&mut fut).poll(&mut cx).is_ready());
        assert_eq!(probe.polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_spurious_inner_wake_up_leaves_it_registered_for_the_next() {
        let (probe, task, waker, mut fut) = wrapped();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());

        // Woken but not ready: polled once more, then quiet again.
        probe.waker.lock().unwrap().take().unwrap().wake();
        assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
        assert_eq!(probe.polls.load(Ordering::SeqCst), 2);

        probe.ready.store(true, Ordering::SeqCst);
        probe.waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(
            task.0.load(Ordering::SeqCst),
            2,
            "both wake-ups reached the task"
        );
        assert!(Pin::new(&mut fut).poll(&mut cx).is_ready());
    }

    #[test]
    fn a_new_task_waker_is_registered_and_a_wake_up_before_it_is_not_lost() {
        let (probe, first, w1, mut fut) = wrapped();
        let second = Arc::new(Task::default());
        assert!(
            Pin::new(&mut fut)
                .poll(&mut Context::from_waker(&w1))
                .is_pending()
        );

        // Moved to another task: the next wake-up must reach the second waker.
        let w2 = Waker::from(second.clone());
        assert!(
            Pin::new(&mut fut)
                .poll(&mut Context::from_waker(&w2))
                .is_pending()
        );
        probe.ready.store(true, Ordering::SeqCst);
        probe.waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert!(
            Pin::new(&mut fut)
                .poll(&mut Context::from_waker(&w2))
                .is_ready()
        );
    }
}
