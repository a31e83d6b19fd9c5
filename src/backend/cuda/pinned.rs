//! Pinned host memory in slots, each with the event recorded after the last copy that uses
//! it: copies to and from pinned memory are truly asynchronous, so a slot may be read (or
//! written again) only once its event has completed. Token picks and staging copies use it.

use super::device::{driver_error, Device};
use crate::backend::Result;
use cudarc::driver::{result, sys};
use std::rc::Rc;

pub(super) struct PinnedSlots {
    host: *mut u8,
    slot_bytes: usize,
    events: Vec<sys::CUevent>,
    device: Rc<Device>,
}

impl PinnedSlots {
    /// `slots` zeroed slots of `slot_bytes` each, for `what`.
    pub(super) fn new(
        device: &Rc<Device>,
        slots: usize,
        slot_bytes: usize,
        what: &str,
    ) -> Result<Self> {
        let stage = format!("allocating pinned host memory for {what}");
        // SAFETY: a context is current (Device::open); freed in drop.
        let host = unsafe { result::malloc_host(slots * slot_bytes, 0) }
            .map_err(|e| driver_error(&stage, e))? as *mut u8;
        // SAFETY: just allocated, that many bytes.
        unsafe { std::ptr::write_bytes(host, 0, slots * slot_bytes) };
        let mut pinned = Self {
            host,
            slot_bytes,
            events: Vec::with_capacity(slots),
            device: device.clone(),
        };
        for _ in 0..slots {
            let event = Device::new_event(&format!("creating an event for {what}"))?;
            pinned.events.push(event);
        }
        Ok(pinned)
    }

    pub(super) fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// Slot `slot` as `len` values of T (which must fit it). The caller touches it only
    /// while no copy uses it: after [`Self::wait`], before the next copy is queued.
    pub(super) fn slot<T: Copy>(&mut self, slot: usize, len: usize) -> &mut [T] {
        assert!(slot < self.events.len() && len * size_of::<T>() <= self.slot_bytes);
        // SAFETY: in bounds (checked above) of pinned memory live until drop, and aligned for
        // T: slots start at multiples of slot_bytes in a page-aligned allocation, and every
        // slot size used is a multiple of T's alignment.
        unsafe {
            std::slice::from_raw_parts_mut(self.host.add(slot * self.slot_bytes) as *mut T, len)
        }
    }

    /// Marks the copies queued so far as the last users of slot `slot`.
    pub(super) fn record(&self, slot: usize, stage: &str) -> Result<()> {
        self.device.record(self.events[slot], stage)
    }

    /// Waits (bounded) until the last copy using slot `slot` has finished.
    pub(super) fn wait(&self, slot: usize, stage: &str) -> Result<()> {
        self.device.wait_for(self.events[slot], stage)
    }
}

impl Drop for PinnedSlots {
    fn drop(&mut self) {
        // A copy may still use a slot behind a kernel that never ends: leave it all.
        if self.device.is_hung() || self.device.wait("releasing pinned host memory").is_err() {
            return;
        }
        // SAFETY: made in new, released once, after the stream drained.
        unsafe {
            for &e in &self.events {
                let _ = result::event::destroy(e);
            }
            let _ = result::free_host(self.host as *mut std::ffi::c_void);
        }
    }
}
