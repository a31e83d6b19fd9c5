//! Copies of small host arrays (a step's cache rows and token ids) to the device that never
//! wait for the stream: each goes through a slot of pinned host memory, from which the copy is
//! truly asynchronous, and a slot is reused once the copy that last read it has finished. (A
//! copy from pageable memory may wait for the stream, so it goes after a bounded wait.)

use super::device::{driver_error, Device};
use crate::backend::Result;
use cudarc::driver::{result, sys};
use std::rc::Rc;

const SLOTS: usize = 8;
const SLOT_BYTES: usize = 64 * 1024;

pub(super) struct Staging {
    host: *mut u8,
    /// Recorded after the last copy out of each slot.
    events: [sys::CUevent; SLOTS],
    next: usize,
    device: Rc<Device>,
}

impl Staging {
    pub(super) fn new(device: &Rc<Device>) -> Result<Self> {
        let stage = "allocating pinned staging memory";
        // SAFETY: a context is current (Device::open); freed in drop.
        let host = unsafe { result::malloc_host(SLOTS * SLOT_BYTES, 0) }
            .map_err(|e| driver_error(stage, e))? as *mut u8;
        let mut events = [std::ptr::null_mut(); SLOTS];
        for e in &mut events {
            *e = device.new_event("creating a staging slot's event")?;
        }
        Ok(Self {
            host,
            events,
            next: 0,
            device: device.clone(),
        })
    }

    /// Queues a copy of `data` to device address `dst`, in stream order; false (and nothing
    /// queued) where `data` is larger than a slot.
    pub(super) fn copy<T: Copy>(&mut self, dst: u64, data: &[T], what: &str) -> Result<bool> {
        let bytes = std::mem::size_of_val(data);
        if bytes > SLOT_BYTES {
            return Ok(false);
        }
        let slot = self.next;
        self.next = (slot + 1) % SLOTS;
        let stage = format!("copying {what} to the device");
        self.device.wait_for(self.events[slot], &stage)?;
        // SAFETY: the slot holds SLOT_BYTES, and no copy reads it any more (the wait above).
        let staged = unsafe {
            let at = self.host.add(slot * SLOT_BYTES);
            std::ptr::copy_nonoverlapping(data.as_ptr() as *const u8, at, bytes);
            std::slice::from_raw_parts(at as *const T, data.len())
        };
        self.device.flush()?;
        // SAFETY: pinned memory that stays untouched until the event after the copy completes;
        // the caller's destination holds `bytes`.
        unsafe { result::memcpy_htod_async(dst, staged, self.device.stream) }
            .map_err(|e| driver_error(&stage, e))?;
        self.device.record(self.events[slot], &stage)?;
        Ok(true)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // A copy may still be reading a slot behind a kernel that never ends: leave it all.
        if self.device.is_hung() || self.device.wait("releasing the staging memory").is_err() {
            return;
        }
        // SAFETY: made in new, released once, after the stream drained.
        unsafe {
            for e in self.events {
                let _ = result::event::destroy(e);
            }
            let _ = result::free_host(self.host as *mut std::ffi::c_void);
        }
    }
}
