//! Any bytes that are JSON go through event and order validation without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stratify_core::event::NewEvent;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let _ = NewEvent::from_json(value.clone(), 1_700_000_000_000);
    let _ = NewEvent::from_order_json(value, 1_700_000_000_000);
});
