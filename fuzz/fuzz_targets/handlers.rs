//! Requests through the real handlers of one shard whose partition logs and
//! offset buckets are in memory (`sluice-shard` with `memory-storage`); see
//! `sluice_shard::replay` for the input format and the checks. A request in,
//! a response or an error out: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_shard::replay::World;
use std::cell::RefCell;

/// Inputs handled by one world before it is rebuilt (topics and parked
/// requests pile up otherwise).
const INPUTS_PER_WORLD: usize = 5_000;

thread_local! {
    static WORLD: RefCell<Option<(World, usize)>> = const { RefCell::new(None) };
    static GENERATION: RefCell<u64> = const { RefCell::new(0) };
}

fuzz_target!(|data: &[u8]| {
    WORLD.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot
            .as_ref()
            .is_none_or(|(_, inputs)| *inputs >= INPUTS_PER_WORLD)
        {
            *slot = None; // the old world (and its executor) goes first
            let generation = GENERATION.with(|g| {
                *g.borrow_mut() += 1;
                *g.borrow()
            });
            *slot = Some((World::new(&format!("fuzz-{generation}")), 0));
        }
        let (world, inputs) = slot.as_mut().unwrap();
        *inputs += 1;
        world.run(data);
    });
});
