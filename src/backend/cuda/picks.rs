//! Token picks kept on the device (cuda/tokens.cu): each queued argmax writes its id into a
//! slot of device memory, which the next step's embedding reads, and copies it into pinned
//! host memory behind an event of its own, so that reading one id waits for its pick alone
//! and never for the steps queued after it.

use super::device::{driver_error, Device, DeviceBuffer};
use super::pinned::PinnedSlots;
use crate::backend::{Result, ARGMAX_SLOTS};
use cudarc::driver::result;
use std::rc::Rc;

pub(super) struct DevicePicks {
    /// `[id, 0]` per slot: the (row, output row) pair the embedding of a pick reads.
    pub(super) ids: DeviceBuffer,
    /// Each slot's id, copied to the host.
    host: PinnedSlots,
    /// The slot of the pick queued last.
    pub(super) last: usize,
    device: Rc<Device>,
}

impl DevicePicks {
    pub(super) fn new(device: &Rc<Device>) -> Result<Self> {
        let ids = DeviceBuffer::new(device, 8 * ARGMAX_SLOTS, "the token picks")?;
        ids.zero("the token picks")?;
        Ok(Self {
            ids,
            host: PinnedSlots::new(device, ARGMAX_SLOTS, 4, "the token picks")?,
            last: 0,
            device: device.clone(),
        })
    }

    /// The device address of slot `slot`'s `[id, 0]`.
    pub(super) fn slot_ptr(&self, slot: usize) -> u64 {
        self.ids.ptr + 8 * slot as u64
    }

    /// Queues the copy of slot `slot`'s id to the host, after the work recorded so far.
    pub(super) fn send(&mut self, slot: usize) -> Result<()> {
        let stage = "copying a token pick to the host";
        self.device.flush()?;
        let src = self.slot_ptr(slot);
        let dst = self.host.slot::<i32>(slot, 1);
        // SAFETY: pinned memory, so the copy is truly asynchronous; the host reads the int only
        // after the event recorded behind it has completed.
        unsafe { result::memcpy_dtoh_async(dst, src, self.device.stream) }
            .map_err(|e| driver_error(stage, e))?;
        self.host.record(slot, stage)?;
        self.last = slot;
        Ok(())
    }

    /// Slot `slot`'s id, once its copy has arrived (a bounded wait).
    pub(super) fn read(&mut self, slot: usize) -> Result<u32> {
        self.host.wait(slot, "reading a token pick")?;
        Ok(self.host.slot::<i32>(slot, 1)[0] as u32)
    }
}
