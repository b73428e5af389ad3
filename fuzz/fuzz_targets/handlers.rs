//! Requests through the real handlers of one shard whose partition logs and
//! offset buckets are in memory (`sluice-shard` with `memory-storage`); see
//! `sluice_shard::replay` for the input format and the checks. A request in,
//! a response or an error out: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_shard::replay::World;
use std::cell::RefCell;
use std::mem::ManuallyDrop;

/// Inputs handled by one world before it is rebuilt (topics and parked
/// requests pile up otherwise).
const INPUTS_PER_WORLD: usize = 20_000;

thread_local! {
    // ManuallyDrop: a world is dropped (its shard closed) when it is replaced,
    // never by the thread-local destructors at exit, when the thread locals
    // its shutdown uses (rkyv's arena) may already be gone.
    static WORLD: RefCell<Option<ManuallyDrop<(World, usize)>>> = const { RefCell::new(None) };
    static GENERATION: RefCell<u64> = const { RefCell::new(0) };
}

fuzz_target!(|data: &[u8]| {
    WORLD.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot
            .as_ref()
            .is_none_or(|world| world.1 >= INPUTS_PER_WORLD)
        {
            // The old world (and its executor) goes first.
            if let Some(old) = slot.take() {
                drop(ManuallyDrop::into_inner(old));
            }
            let generation = GENERATION.with(|g| {
                *g.borrow_mut() += 1;
                *g.borrow()
            });
            *slot = Some(ManuallyDrop::new((
                World::new(&format!("fuzz-{generation}")),
                0,
            )));
        }
        let world = slot.as_mut().unwrap();
        world.1 += 1;
        world.0.run(data);
    });
});
