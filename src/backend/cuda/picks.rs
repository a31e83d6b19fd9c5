//! Token picks kept on the device (cuda/tokens.cu): each queued argmax writes its id into a
//! slot of device memory, which the next step's embedding reads, and copies it into pinned
//! host memory behind an event of its own, so that reading one id waits for its pick alone
//! and never for the steps queued after it.

use super::device::{driver_error, Device, DeviceBuffer};
use crate::backend::{Result, ARGMAX_SLOTS};
use cudarc::driver::{result, sys};
use std::rc::Rc;

pub(super) struct DevicePicks {
    /// `[id, 0]` per slot: the (row, output row) pair the embedding of a pick reads.
    pub(super) ids: DeviceBuffer,
    /// Each slot's id, copied to the host.
    host: *mut i32,
    /// Recorded after each slot's copy to the host.
    events: [sys::CUevent; ARGMAX_SLOTS],
    /// The slot of the pick queued last.
    pub(super) last: usize,
    device: Rc<Device>,
}

impl DevicePicks {
    pub(super) fn new(device: &Rc<Device>) -> Result<Self> {
        let ids = DeviceBuffer::new(device, 8 * ARGMAX_SLOTS, "the token picks")?;
        ids.zero("the token picks")?;
        let stage = "allocating the token picks' host copy";
        // SAFETY: a context is current (Device::open); freed in drop.
        let host = unsafe { result::malloc_host(4 * ARGMAX_SLOTS, 0) }
            .map_err(|e| driver_error(stage, e))? as *mut i32;
        // SAFETY: just allocated, ARGMAX_SLOTS ints.
        unsafe { std::ptr::write_bytes(host, 0, ARGMAX_SLOTS) };
        let mut events = [std::ptr::null_mut(); ARGMAX_SLOTS];
        for e in &mut events {
            *e = device.new_event("creating a token pick's event")?;
        }
        Ok(Self {
            ids,
            host,
            events,
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
        // SAFETY: pinned memory of ARGMAX_SLOTS ints, live until drop; `slot` is below
        // ARGMAX_SLOTS (the slice index checks it). The copy is truly asynchronous, and the
        // host reads the int only after the event behind it has completed.
        let dst = unsafe { std::slice::from_raw_parts_mut(self.host, ARGMAX_SLOTS) };
        unsafe {
            result::memcpy_dtoh_async(
                &mut dst[slot..slot + 1],
                self.slot_ptr(slot),
                self.device.stream,
            )
        }
        .map_err(|e| driver_error(stage, e))?;
        self.device.record(self.events[slot], stage)?;
        self.last = slot;
        Ok(())
    }

    /// Slot `slot`'s id, once its copy has arrived (a bounded wait).
    pub(super) fn read(&self, slot: usize) -> Result<u32> {
        self.device
            .wait_for(self.events[slot], "reading a token pick")?;
        // SAFETY: in bounds (checked by the index of `events` above); the copy has completed.
        Ok(unsafe { std::ptr::read_volatile(self.host.add(slot)) } as u32)
    }
}

impl Drop for DevicePicks {
    fn drop(&mut self) {
        // A copy may still be on its way behind a kernel that never ends: leave it all.
        if self.device.is_hung() || self.device.wait("releasing the token picks").is_err() {
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
