//! The CUDA device: checking that the driver and NVRTC libraries exist before cudarc touches
//! them (it panics where they do not), the primary context and the backend's one stream, device
//! memory, and bounded waits: every wait polls an event against a deadline, so that a kernel
//! that never ends is a [`BackendError::Timeout`], never a hang.

use super::graph::Launch;
use crate::backend::{BackendError, Result};
use cudarc::driver::{result, sys};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How to open a CUDA device.
#[derive(Clone, Debug)]
pub struct CudaOptions {
    /// The device's ordinal, as `vibrant devices` lists CUDA devices.
    pub ordinal: usize,
    /// Longest any single wait on the device may take (`--gpu-timeout`).
    pub timeout: Duration,
    /// Keep compiled kernels on disk between runs (under the user's cache directory).
    pub kernel_cache: bool,
    /// Run each greedy decode step as one CUDA graph (graph.rs); on unless
    /// `VIBRANT_CUDA_GRAPHS=0`.
    pub graphs: bool,
    /// Decode products round their activations to 8 bits (cuda/matmul_q8.cu), as llama.cpp's
    /// do; off (`VIBRANT_INT8=0`), they keep f32 activations.
    pub int8_activations: bool,
    /// In a decode step's graph, each kernel is a programmatic dependent of the one before
    /// (compute capability 9.0 and up: graph.rs), so that its launch overlaps the earlier
    /// kernel's last blocks; on unless `VIBRANT_PDL=0`. Prompts' kernels launch one after the
    /// other (dependents started early slowed pp512 by 12% on an H100).
    pub programmatic_launches: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        Self {
            ordinal: 0,
            timeout: Duration::from_secs(60),
            kernel_cache: true,
            graphs: std::env::var("VIBRANT_CUDA_GRAPHS").map_or(true, |v| v != "0"),
            int8_activations: std::env::var("VIBRANT_INT8").map_or(true, |v| v != "0"),
            programmatic_launches: std::env::var("VIBRANT_PDL").map_or(true, |v| v != "0"),
        }
    }
}

/// One CUDA device as `vibrant devices` lists it.
#[derive(Clone, Debug)]
pub struct CudaDeviceSummary {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub memory: u64,
    /// The driver's CUDA version, as 13000 for 13.0.
    pub driver_version: i32,
}

impl CudaDeviceSummary {
    pub fn driver(&self) -> String {
        format!(
            "CUDA {}.{}",
            self.driver_version / 1000,
            self.driver_version % 1000 / 10
        )
    }
}

/// Whether the CUDA driver library loads: where it does not, this machine has no NVIDIA
/// driver at all (as opposed to a CUDA install missing a piece).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    unsafe { sys::is_culib_present() }
}

/// Why CUDA cannot be used here, or `None` where the driver and NVRTC libraries load: cudarc
/// panics on the first call into a library it cannot find, so nothing else may call it before
/// this says yes.
pub fn missing_libraries() -> Option<String> {
    let driver = driver_present();
    let nvrtc = super::compile::nvrtc_present();
    match (driver, nvrtc) {
        (true, true) => None,
        (false, _) => Some(
            "the CUDA driver library (libcuda.so.1) is not installed or not on the library path"
                .into(),
        ),
        (true, false) => Some(
            "NVRTC (libnvrtc.so.13) is not on the library path: add the CUDA toolkit's lib64 \
             folder (e.g. /usr/local/cuda-13.0/lib64) to LD_LIBRARY_PATH"
                .into(),
        ),
    }
}

/// A driver error as a backend error that names the stage; out of memory names what did not fit.
pub(crate) fn driver_error(stage: &str, e: result::DriverError) -> BackendError {
    let name = e
        .error_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    let text = e
        .error_string()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match e.0 {
        sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => BackendError::OutOfMemory {
            device: "CUDA device".into(),
            what: stage.to_string(),
        },
        // Sticky errors: the context cannot run anything more.
        sys::CUresult::CUDA_ERROR_ILLEGAL_ADDRESS
        | sys::CUresult::CUDA_ERROR_LAUNCH_FAILED
        | sys::CUresult::CUDA_ERROR_ILLEGAL_INSTRUCTION
        | sys::CUresult::CUDA_ERROR_MISALIGNED_ADDRESS
        | sys::CUresult::CUDA_ERROR_HARDWARE_STACK_ERROR
        | sys::CUresult::CUDA_ERROR_ECC_UNCORRECTABLE => BackendError::DeviceLost {
            stage: stage.to_string(),
            reason: format!("{name}: {text}"),
        },
        _ => BackendError::Gpu {
            stage: stage.to_string(),
            message: format!("{name}: {text}"),
        },
    }
}

/// Every CUDA device, or why there are none to list.
pub fn list_devices() -> Result<Vec<CudaDeviceSummary>> {
    if let Some(why) = missing_libraries() {
        return Err(BackendError::Unsupported(why));
    }
    fn err(stage: &'static str) -> impl Fn(result::DriverError) -> BackendError {
        move |e| driver_error(stage, e)
    }
    result::init().map_err(err("initialising the CUDA driver"))?;
    let mut version = 0;
    // SAFETY: writes one int.
    unsafe { sys::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(err("reading the driver version"))?;
    let count = result::device::get_count().map_err(err("counting CUDA devices"))?;
    (0..count)
        .map(|i| {
            let dev = result::device::get(i).map_err(err("opening a CUDA device"))?;
            let attr = |a| {
                // SAFETY: a device handle the driver just gave.
                unsafe { result::device::get_attribute(dev, a) }
                    .map_err(err("reading a device attribute"))
            };
            use sys::CUdevice_attribute::*;
            Ok(CudaDeviceSummary {
                ordinal: i as usize,
                name: result::device::get_name(dev).map_err(err("reading the device name"))?,
                compute_capability: (
                    attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                    attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
                ),
                // SAFETY: as above.
                memory: unsafe { result::device::total_mem(dev) }
                    .map_err(err("reading the device memory"))? as u64,
                driver_version: version,
            })
        })
        .collect()
}

/// The primary context of a device, the backend's stream and the event its waits poll. Dropped
/// last (buffers hold it): it leaks everything once a wait has timed out, since freeing or
/// destroying behind a kernel that never ends would block forever.
pub(crate) struct Device {
    pub(crate) summary: CudaDeviceSummary,
    dev: sys::CUdevice,
    pub(crate) stream: sys::CUstream,
    event: sys::CUevent,
    pub(crate) timeout: Duration,
    /// A wait timed out: work may still be running, and nothing may block on it again.
    pub(crate) hung: AtomicBool,
    /// Step graphs chain their kernels as programmatic dependents (see
    /// [`CudaOptions::programmatic_launches`]; cuda/common.cuh's wait_for_prior_grids).
    pub(crate) programmatic: bool,
    /// Launches recorded for a step's graph instead of launched (see graph.rs); any other use
    /// of the stream launches them first, so that stream order always holds.
    recording: RefCell<Option<Vec<Launch>>>,
    /// The failure of launching recorded kernels where no error could be returned (a free),
    /// for the next wait.
    late_error: RefCell<Option<BackendError>>,
}

impl Device {
    pub(crate) fn open(options: &CudaOptions) -> Result<Rc<Self>> {
        let summary = list_devices()?
            .into_iter()
            .nth(options.ordinal)
            .ok_or_else(|| {
                BackendError::Unsupported(format!(
                    "no CUDA device {} (see `vibrant devices`)",
                    options.ordinal
                ))
            })?;
        fn err(stage: &'static str) -> impl Fn(result::DriverError) -> BackendError {
            move |e| driver_error(stage, e)
        }
        let dev =
            result::device::get(options.ordinal as i32).map_err(err("opening the CUDA device"))?;
        // SAFETY: a device handle the driver just gave; the context is released on drop.
        let ctx = unsafe { result::primary_ctx::retain(dev) }
            .map_err(err("creating the CUDA context"))?;
        // SAFETY: a context just retained.
        unsafe { result::ctx::set_current(ctx) }.map_err(err("making the context current"))?;
        // Non-blocking: the legacy default stream (which other libraries may use) never waits
        // on it, nor it on them.
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(err("creating a CUDA stream"))?;
        let event = Self::new_event("creating a CUDA event")?;
        let programmatic = options.programmatic_launches && summary.compute_capability.0 >= 9;
        Ok(Rc::new(Self {
            summary,
            dev,
            stream,
            event,
            timeout: options.timeout,
            hung: AtomicBool::new(false),
            programmatic,
            recording: RefCell::new(None),
            late_error: RefCell::new(None),
        }))
    }

    /// Launches `l` on the stream, or records it while a step is being recorded.
    pub(crate) fn launch(&self, l: Launch) -> Result<()> {
        if let Some(recorded) = self.recording.borrow_mut().as_mut() {
            recorded.push(l);
            return Ok(());
        }
        l.launch(self.stream)
    }

    /// Records launches from here on (see [`Device::take_recording`]).
    pub(crate) fn start_recording(&self) {
        self.recording.borrow_mut().get_or_insert_with(Vec::new);
    }

    /// The launches recorded since [`Device::start_recording`], which the caller must now
    /// queue; `None` where nothing is being recorded (or the recording was flushed).
    pub(crate) fn take_recording(&self) -> Option<Vec<Launch>> {
        self.recording.borrow_mut().take()
    }

    /// Launches what was recorded, one kernel at a time, and stops recording: the stream
    /// is about to be used otherwise.
    pub(crate) fn flush(&self) -> Result<()> {
        match self.take_recording() {
            Some(recorded) => recorded.into_iter().try_for_each(|l| l.launch(self.stream)),
            None => Ok(()),
        }
    }

    /// Waits until the stream's work so far has finished, for at most the timeout. A wait that
    /// runs out marks the device hung: every later wait fails at once with the same error.
    pub(crate) fn wait(&self, stage: &str) -> Result<()> {
        if !self.is_hung() {
            self.record(self.event, stage)?;
        }
        self.wait_for(self.event, stage)
    }

    /// Marks the stream's work so far with `event`.
    pub(crate) fn record(&self, event: sys::CUevent, stage: &str) -> Result<()> {
        self.flush()?;
        if let Some(e) = self.late_error.borrow_mut().take() {
            return Err(e);
        }
        // SAFETY: an event of this context and the device's stream, both live.
        unsafe { result::event::record(event, self.stream) }.map_err(|e| driver_error(stage, e))
    }

    /// A new event for [`Device::record`] and [`Device::wait_for`], destroyed by the caller
    /// (unless the device hung); the context must be current.
    pub(crate) fn new_event(stage: &str) -> Result<sys::CUevent> {
        result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
            .map_err(|e| driver_error(stage, e))
    }

    /// Waits until the work before `event`'s last record has finished, bounded as
    /// [`Device::wait`] is.
    pub(crate) fn wait_for(&self, event: sys::CUevent, stage: &str) -> Result<()> {
        let timeout = |seconds| BackendError::Timeout {
            stage: stage.to_string(),
            seconds,
        };
        if self.is_hung() {
            return Err(timeout(self.timeout.as_secs_f64()));
        }
        let started = Instant::now();
        let mut pause = Duration::from_micros(20);
        loop {
            // SAFETY: the caller's event, live.
            match unsafe { result::event::query(event) } {
                Ok(()) => return Ok(()),
                Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NOT_READY => {}
                Err(e) => return Err(driver_error(stage, e)),
            }
            if started.elapsed() >= self.timeout {
                self.hung.store(true, Ordering::Relaxed);
                return Err(timeout(started.elapsed().as_secs_f64()));
            }
            // A decode step's wait is short: yield for the first 200 µs (a sleep lasts at least
            // the kernel's timer slack, ~50 µs), then sleep up to a millisecond at a time.
            if started.elapsed() < Duration::from_micros(200) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(1));
            }
        }
    }

    pub(crate) fn is_hung(&self) -> bool {
        self.hung.load(Ordering::Relaxed)
    }

    /// `bytes` of device memory for `what`, in stream order.
    pub(crate) fn alloc(&self, bytes: usize, what: &str) -> Result<sys::CUdeviceptr> {
        self.flush()?;
        // SAFETY: a stream of this context; a zero-byte allocation is made one byte so that
        // every buffer has an address of its own.
        unsafe { result::malloc_async(self.stream, bytes.max(1)) }.map_err(|e| match e.0 {
            sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => BackendError::OutOfMemory {
                device: self.summary.name.clone(),
                what: format!("{what} ({bytes} bytes)"),
            },
            _ => driver_error(&format!("allocating {what} ({bytes} bytes)"), e),
        })
    }

    /// Frees in stream order; leaks once hung (the memory goes with the process).
    pub(crate) fn free(&self, ptr: sys::CUdeviceptr) {
        if let Err(e) = self.flush() {
            self.late_error.borrow_mut().get_or_insert(e);
        }
        if !self.is_hung() {
            // SAFETY: allocated by alloc on this stream, freed once (DeviceBuffer's drop).
            // An error here has nowhere to go: the next wait reports a broken context.
            let _ = unsafe { result::free_async(ptr, self.stream) };
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // Nothing may block behind a kernel that never ends: a hung device is left to the
        // process's exit. Otherwise the stream is drained (bounded) before it goes.
        if self.is_hung() || self.wait("releasing the CUDA device").is_err() {
            return;
        }
        // SAFETY: handles made in open, destroyed once, after the stream drained.
        unsafe {
            let _ = result::event::destroy(self.event);
            let _ = result::stream::destroy(self.stream);
            let _ = result::primary_ctx::release(self.dev);
        }
    }
}

/// Device memory of one buffer, freed (in stream order) when dropped.
pub(crate) struct DeviceBuffer {
    pub(crate) ptr: sys::CUdeviceptr,
    pub(crate) bytes: usize,
    device: Rc<Device>,
}

impl DeviceBuffer {
    pub(crate) fn new(device: &Rc<Device>, bytes: usize, what: &str) -> Result<Self> {
        let ptr = device.alloc(bytes, what)?;
        Ok(Self {
            ptr,
            bytes,
            device: device.clone(),
        })
    }

    /// A buffer holding `data`. The copy is ordered on the stream, and the stream is idle
    /// first: a copy from pageable memory may wait for the stream, and must not wait unbounded.
    pub(crate) fn from_host<T: Copy>(device: &Rc<Device>, data: &[T], what: &str) -> Result<Self> {
        let buf = Self::new(device, std::mem::size_of_val(data), what)?;
        buf.write(data, what)?;
        Ok(buf)
    }

    /// Copies `data` to the start of the buffer, after a bounded wait for the stream (see
    /// [`DeviceBuffer::from_host`]).
    pub(crate) fn write<T: Copy>(&self, data: &[T], what: &str) -> Result<()> {
        assert!(
            std::mem::size_of_val(data) <= self.bytes,
            "{what}: data fits"
        );
        if data.is_empty() {
            return Ok(());
        }
        let stage = format!("copying {what} to the device");
        self.device.wait(&stage)?;
        // SAFETY: the destination holds the data (checked above); a copy from pageable memory
        // is staged before the call returns, and the wait below covers the rest.
        unsafe { result::memcpy_htod_async(self.ptr, data, self.device.stream) }
            .map_err(|e| driver_error(&stage, e))?;
        self.device.wait(&stage)
    }

    /// Zeroes the buffer, in stream order.
    pub(crate) fn zero(&self, what: &str) -> Result<()> {
        self.device.flush()?;
        // SAFETY: the whole buffer, on its stream.
        unsafe { result::memset_d8_async(self.ptr, 0, self.bytes, self.device.stream) }
            .map_err(|e| driver_error(&format!("zeroing {what}"), e))
    }

    /// The first `n` values, after the work recorded so far (bounded waits).
    pub(crate) fn read<T: Copy + Default>(&self, n: usize, stage: &str) -> Result<Vec<T>> {
        let mut out = vec![T::default(); n];
        assert!(
            std::mem::size_of_val(&out[..]) <= self.bytes,
            "{stage}: read fits"
        );
        self.device.wait(stage)?;
        // SAFETY: the source holds out's bytes, and `out` lives until the copy has finished:
        // where the wait for it fails, `out` is leaked rather than freed under the copy.
        unsafe { result::memcpy_dtoh_async(&mut out[..], self.ptr, self.device.stream) }
            .map_err(|e| driver_error(stage, e))?;
        if let Err(e) = self.device.wait(stage) {
            std::mem::forget(out);
            return Err(e);
        }
        Ok(out)
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        self.device.free(self.ptr);
    }
}
