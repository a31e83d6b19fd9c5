//! Copies of small host arrays (a step's cache rows and token ids) to the device that never
//! wait for the stream: each goes through a slot of pinned host memory, from which the copy is
//! truly asynchronous, and a slot is reused once the copy that last read it has finished. (A
//! copy from pageable memory may wait for the stream, so it goes after a bounded wait.)

use super::device::{driver_error, Device};
use super::pinned::PinnedSlots;
use crate::backend::Result;
use cudarc::driver::result;
use std::rc::Rc;

const SLOTS: usize = 8;
const SLOT_BYTES: usize = 64 * 1024;

pub(super) struct Staging {
    slots: PinnedSlots,
    next: usize,
    device: Rc<Device>,
}

impl Staging {
    pub(super) fn new(device: &Rc<Device>) -> Result<Self> {
        Ok(Self {
            slots: PinnedSlots::new(device, SLOTS, SLOT_BYTES, "staging copies")?,
            next: 0,
            device: device.clone(),
        })
    }

    /// Queues a copy of `values` to device address `dst`, in stream order; false (and nothing
    /// queued) where they are larger than a slot.
    pub(super) fn copy(&mut self, dst: u64, values: &[i32], what: &str) -> Result<bool> {
        if size_of_val(values) > self.slots.slot_bytes() {
            return Ok(false);
        }
        let slot = self.next;
        self.next = (slot + 1) % SLOTS;
        let stage = format!("copying {what} to the device");
        self.slots.wait(slot, &stage)?;
        let staged = self.slots.slot::<i32>(slot, values.len());
        staged.copy_from_slice(values);
        self.device.flush()?;
        // SAFETY: pinned memory that stays untouched until the event after the copy completes;
        // the caller's destination holds the values.
        unsafe { result::memcpy_htod_async(dst, staged, self.device.stream) }
            .map_err(|e| driver_error(&stage, e))?;
        self.slots.record(slot, &stage)?;
        Ok(true)
    }
}
