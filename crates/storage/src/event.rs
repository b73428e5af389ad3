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
        Listen { event: self, generation: self.state.borrow().generation }
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
}

impl Future for Listen<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.event.state.borrow_mut();
        if state.generation != self.generation {
            return Poll::Ready(());
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
