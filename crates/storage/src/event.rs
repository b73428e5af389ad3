//! A single-core notification: futures that wait for the next `notify`.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Event {
    state: RefCell<EventState>,
}

#[derive(Default)]
struct EventState {
    generation: u64,
    wakers: Vec<Waker>,
}

impl Event {
    /// A future that completes at the first `notify` after this call.
    pub fn listen(&self) -> Listen<'_> {
        Listen {
            event: self,
            generation: self.state.borrow().generation,
            slot: None,
        }
    }

    pub fn notify(&self) {
        let wakers = {
            let mut state = self.state.borrow_mut();
            state.generation += 1;
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

pub struct Listen<'a> {
    event: &'a Event,
    generation: u64,
    /// Where this listener's waker sits in the list (valid for `generation`).
    slot: Option<usize>,
}

impl Future for Listen<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut state = this.event.state.borrow_mut();
        if state.generation != this.generation {
            return Poll::Ready(());
        }
        // O(1) per poll: a listener finds its own entry by index, and one
        // task's consecutive listeners share the last entry. (A scan of the
        // whole list made N waiters re-registering after a notify cost N².)
        if let Some(slot) = this.slot {
            if state.wakers[slot].will_wake(cx.waker()) {
                return Poll::Pending;
            }
        } else if let Some(last) = state.wakers.last() {
            if last.will_wake(cx.waker()) {
                this.slot = Some(state.wakers.len() - 1);
                return Poll::Pending;
            }
        }
        state.wakers.push(cx.waker().clone());
        this.slot = Some(state.wakers.len() - 1);
        Poll::Pending
    }
}

/// Polls all futures concurrently and returns their outputs in order (several
/// writes in flight on the same ring).
pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Counter(AtomicUsize);
    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn every_listener_is_woken_once_and_repolls_do_not_grow_the_list() {
        let event = Event::default();
        let counters: Vec<Arc<Counter>> = (0..3)
            .map(|_| Arc::new(Counter(AtomicUsize::new(0))))
            .collect();
        let wakers: Vec<Waker> = counters.iter().map(|c| Waker::from(c.clone())).collect();
        let mut listens: Vec<Listen> = (0..3).map(|_| event.listen()).collect();
        for _ in 0..5 {
            for (listen, waker) in listens.iter_mut().zip(&wakers) {
                let mut cx = Context::from_waker(waker);
                assert_eq!(Pin::new(&mut *listen).poll(&mut cx), Poll::Pending);
            }
        }
        assert_eq!(
            event.state.borrow().wakers.len(),
            3,
            "re-polls reuse their entries"
        );
        // A second listener of the same task shares its entry.
        let mut same_task = event.listen();
        let mut cx = Context::from_waker(&wakers[2]);
        assert_eq!(Pin::new(&mut same_task).poll(&mut cx), Poll::Pending);
        assert_eq!(event.state.borrow().wakers.len(), 3);
        // Polled from another task, a listener registers that task too.
        let mut cx = Context::from_waker(&wakers[0]);
        assert_eq!(Pin::new(&mut same_task).poll(&mut cx), Poll::Pending);
        assert_eq!(event.state.borrow().wakers.len(), 4);
        event.notify();
        let woken: Vec<usize> = counters
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed))
            .collect();
        assert_eq!(woken, vec![2, 1, 1]);
        for listen in listens.iter_mut() {
            let mut cx = Context::from_waker(&wakers[0]);
            assert_eq!(Pin::new(listen).poll(&mut cx), Poll::Ready(()));
        }
    }
}
