//! Kernel timing for `vibrant bench --profile`: a pair of timing events around every launch,
//! read once the profiled work has finished.

use super::device::{driver_error, Device};
use crate::backend::{KernelTiming, Result};
use cudarc::driver::{result, sys};
use std::rc::Rc;

struct Timed {
    kernel: &'static str,
    start: sys::CUevent,
    end: sys::CUevent,
    bytes: u64,
    flops: u64,
}

pub(super) struct Profile {
    timed: Vec<Timed>,
    device: Rc<Device>,
}

impl Profile {
    pub(super) fn new(device: &Rc<Device>) -> Self {
        Self {
            timed: Vec::new(),
            device: device.clone(),
        }
    }

    /// Marks the start of a launch of `kernel`, which moves `bytes` and computes `flops`.
    pub(super) fn before(&mut self, kernel: &'static str, bytes: u64, flops: u64) -> Result<()> {
        let stage = "timing a kernel";
        let event = || {
            result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
                .map_err(|e| driver_error(stage, e))
        };
        let (start, end) = (event()?, event()?);
        self.timed.push(Timed {
            kernel,
            start,
            end,
            bytes,
            flops,
        });
        self.device.record(start, stage)
    }

    /// Marks the end of the launch [`Profile::before`] began.
    pub(super) fn after(&mut self) -> Result<()> {
        let end = self.timed.last().expect("before comes first").end;
        self.device.record(end, "timing a kernel")
    }

    /// Every timed launch, in order, once they have finished.
    pub(super) fn take(mut self) -> Result<Vec<KernelTiming>> {
        self.device.wait("reading kernel timings")?;
        self.timed
            .iter()
            .map(|t| {
                // SAFETY: both events recorded on the device's stream, which has finished.
                let ms = unsafe { result::event::elapsed(t.start, t.end) }
                    .map_err(|e| driver_error(&format!("timing kernel {}", t.kernel), e))?;
                Ok(KernelTiming {
                    kernel: t.kernel.to_string(),
                    seconds: ms as f64 / 1e3,
                    bytes: t.bytes,
                    flops: t.flops,
                })
            })
            .collect::<Result<Vec<_>>>()
            .inspect(|_| self.destroy_events())
    }

    fn destroy_events(&mut self) {
        for t in self.timed.drain(..) {
            // SAFETY: events made in before, destroyed once, after the stream finished.
            unsafe {
                let _ = result::event::destroy(t.start);
                let _ = result::event::destroy(t.end);
            }
        }
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        // Events behind a kernel that never ends are left to the process's exit.
        if !self.device.is_hung() && self.device.wait("dropping kernel timings").is_ok() {
            self.destroy_events();
        }
    }
}
