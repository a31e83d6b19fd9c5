//! Adapters and devices: listing and choosing a GPU, requesting its real limits and optional
//! features, and turning every failure mode (validation error, lost device, a wait that does
//! not end) into a [`BackendError`] that names the stage.

use super::pipeline_cache::{self, CacheSetting};
use super::switches::Switches;
use crate::backend::{BackendError, Result};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How to choose and drive a GPU.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// `vulkan`, `metal`, `dx12` or `gl`; `None` tries them all.
    pub api: Option<String>,
    /// Index into [`list_adapters`].
    pub adapter: Option<usize>,
    /// Longest any single wait on the GPU may take.
    pub timeout: Duration,
    /// Log every dispatch and wait for each one (names a kernel that hangs; `VIBRANT_TRACE`).
    pub trace: bool,
    /// Splits weight matrices into row ranges of at most this many bytes, below the device's
    /// binding limit, and decodes them for tensor-core products in slices of at most this
    /// many f16 bytes: tests use it to split small matrices as big ones are split for real.
    pub max_weight_part: Option<u64>,
    /// Decode products take activations quantized once for all workgroups when those would
    /// otherwise read at least this many bytes of them (`Tuning::int8_global_min_bytes`):
    /// tests use it to take that path with small matrices.
    pub int8_global_min_bytes: Option<usize>,
    /// Where compiled kernels are kept between runs (`VIBRANT_PIPELINE_CACHE`).
    pub pipeline_cache: CacheSetting,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            api: None,
            adapter: None,
            timeout: Duration::from_secs(60),
            trace: Switches::get().trace,
            max_weight_part: None,
            int8_global_min_bytes: None,
            pipeline_cache: Switches::get().pipeline_cache.clone(),
        }
    }
}

/// Timestamps between the dispatches of a pass: what `vibrant bench --profile` needs.
const TIMESTAMPS: wgpu::Features = wgpu::Features::TIMESTAMP_QUERY
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES);

/// The optional capabilities vibrant's kernels can use.
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuFeatures {
    pub shader_f16: bool,
    pub subgroups: bool,
    pub timestamps: bool,
    pub immediates: bool,
    pub cooperative_matrix: bool,
    /// Compiled pipelines can be saved and given back to the driver (Vulkan).
    pub pipeline_cache: bool,
}

impl GpuFeatures {
    fn of(adapter: &wgpu::Adapter) -> Self {
        let f = adapter.features();
        Self {
            shader_f16: f.contains(wgpu::Features::SHADER_F16),
            subgroups: f.contains(wgpu::Features::SUBGROUP),
            timestamps: f.contains(TIMESTAMPS),
            immediates: f.contains(wgpu::Features::IMMEDIATES),
            cooperative_matrix: f.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
                && adapter.cooperative_matrix_properties().iter().any(|p| {
                    (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
                        && p.ab_type == wgpu::CooperativeScalarType::F16
                        && p.cr_type == wgpu::CooperativeScalarType::F32
                }),
            pipeline_cache: f.contains(wgpu::Features::PIPELINE_CACHE),
        }
    }

    fn wgpu_features(self) -> wgpu::Features {
        let mut f = wgpu::Features::empty();
        if self.shader_f16 {
            f |= wgpu::Features::SHADER_F16;
        }
        if self.subgroups {
            f |= wgpu::Features::SUBGROUP;
        }
        if self.timestamps {
            f |= TIMESTAMPS;
        }
        if self.immediates {
            f |= wgpu::Features::IMMEDIATES;
        }
        if self.cooperative_matrix {
            f |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        if self.pipeline_cache {
            f |= wgpu::Features::PIPELINE_CACHE;
        }
        f
    }

    pub fn summary(self) -> String {
        let mut parts = Vec::new();
        for (on, name) in [
            (self.shader_f16, "f16"),
            (self.subgroups, "subgroups"),
            (self.timestamps, "timestamps"),
            (self.immediates, "immediates"),
            (self.cooperative_matrix, "cooperative-matrix"),
            (self.pipeline_cache, "pipeline-cache"),
        ] {
            if on {
                parts.push(name);
            }
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// One adapter as `vibrant devices` shows it.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub index: usize,
    pub name: String,
    pub api: String,
    pub device_type: String,
    pub driver: String,
    pub max_buffer_size: u64,
    pub max_binding_size: u64,
    pub max_workgroup_storage: u32,
    pub max_invocations: u32,
    pub subgroup_sizes: (u32, u32),
    pub features: GpuFeatures,
}

fn parse_api(api: &str) -> Result<wgpu::Backends> {
    Ok(match api.to_ascii_lowercase().as_str() {
        "vulkan" => wgpu::Backends::VULKAN,
        "metal" => wgpu::Backends::METAL,
        "dx12" => wgpu::Backends::DX12,
        "gl" | "opengl" | "gles" => wgpu::Backends::GL,
        other => {
            return Err(BackendError::Unsupported(format!(
                "unknown GPU backend '{other}' (choose vulkan, metal, dx12 or gl)"
            )))
        }
    })
}

/// Held while adapters are enumerated and devices opened: on the H100 machine, threads doing
/// so at the same time (tests in parallel) all hung in the driver.
static OPENING: Mutex<()> = Mutex::new(());

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    // Validation layers are for development; the default flags follow debug/release builds.
    desc.flags = wgpu::InstanceFlags::from_build_config().with_env();
    wgpu::Instance::new(desc)
}

/// Best first: discrete, integrated, virtual, then software.
fn rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// Every adapter of the requested API(s), best first (the order `--adapter` indexes). With no
/// API named, OpenGL is looked at only where Vulkan, Metal and DX12 find nothing: its adapters
/// duplicate theirs, and starting EGL beside a busy Vulkan device once hung on the H100.
fn adapters(api: Option<&str>) -> Result<Vec<wgpu::Adapter>> {
    let found = match api {
        Some(api) => adapters_of(parse_api(api)?),
        None => Some(adapters_of(wgpu::Backends::PRIMARY))
            .filter(|primary| !primary.is_empty())
            .unwrap_or_else(|| adapters_of(wgpu::Backends::SECONDARY)),
    };
    Ok(found)
}

fn adapters_of(backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    let mut found = pollster::block_on(instance(backends).enumerate_adapters(backends));
    // GL adapters that can't run compute shaders are useless here.
    found.retain(|a| {
        a.get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
    });
    found.sort_by_key(|a| rank(a.get_info().device_type));
    found
}

pub fn list_adapters(api: Option<&str>) -> Result<Vec<AdapterSummary>> {
    let _one_at_a_time = OPENING.lock().unwrap_or_else(|p| p.into_inner());
    Ok(adapters(api)?
        .iter()
        .enumerate()
        .map(|(index, a)| {
            let info = a.get_info();
            let limits = a.limits();
            AdapterSummary {
                index,
                name: info.name.clone(),
                api: format!("{:?}", info.backend),
                device_type: format!("{:?}", info.device_type),
                driver: format!("{} {}", info.driver, info.driver_info)
                    .trim()
                    .to_string(),
                max_buffer_size: limits.max_buffer_size,
                max_binding_size: limits.max_storage_buffer_binding_size,
                max_workgroup_storage: limits.max_compute_workgroup_storage_size,
                max_invocations: limits.max_compute_invocations_per_workgroup,
                subgroup_sizes: (info.subgroup_min_size, info.subgroup_max_size),
                features: GpuFeatures::of(a),
            }
        })
        .collect())
}

/// Errors reported by wgpu outside a wait: validation failures and device loss.
#[derive(Default)]
struct ErrorSink {
    first: Option<String>,
    lost: Option<String>,
    /// An error vibrant itself hit while recording (a kernel that failed to build).
    recorded: Option<BackendError>,
}

/// An opened GPU.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: GpuFeatures,
    pub options: GpuOptions,
    /// The driver's compiled pipelines, read from disk and written back.
    pub pipeline_cache: Option<KernelCache>,
    errors: Arc<Mutex<ErrorSink>>,
}

/// A pipeline cache and the file it is kept in.
pub struct KernelCache {
    pub cache: wgpu::PipelineCache,
    pub path: PathBuf,
    /// Bytes of driver data read from the file at open (0: started empty).
    pub loaded: usize,
    /// Length of the data last read or written: unchanged data is not written again. `None`
    /// once writing failed (warned about once).
    saved: Mutex<Option<usize>>,
}

/// Frees the device's memory and driver objects now rather than when wgpu next gets round to
/// it: a process that opened devices one after another (the GPU tests, run one at a time) ran
/// out of them on the H100 after about thirty. Kernels built since the cache was last saved
/// are saved first.
impl Drop for Gpu {
    fn drop(&mut self) {
        self.save_pipeline_cache();
        self.device.destroy();
    }
}

impl Gpu {
    pub fn open(options: GpuOptions) -> Result<Self> {
        let _one_at_a_time = OPENING.lock().unwrap_or_else(|p| p.into_inner());
        let mut all = adapters(options.api.as_deref())?;
        let which = match options.api.as_deref() {
            Some(api) => format!("{api} GPU adapter"),
            None => "GPU adapter".to_string(),
        };
        if all.is_empty() {
            return Err(BackendError::Unsupported(format!(
                "no such adapter: no {which} with compute support was found on this machine (see `vibrant devices`)"
            )));
        }
        let index = options.adapter.unwrap_or(0);
        if index >= all.len() {
            return Err(BackendError::Unsupported(format!(
                "no such adapter: --adapter {index}, but only {} {which}(s) exist (see `vibrant devices`)",
                all.len()
            )));
        }
        let adapter = all.swap_remove(index);
        let info = adapter.get_info();
        let features = GpuFeatures::of(&adapter);
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("vibrant"),
            required_features: features.wgpu_features(),
            required_limits: limits.clone(),
            // SAFETY of intent: cooperative matrices are an experimental wgpu feature; vibrant
            // only uses them through kernels that are tested against the CPU reference.
            experimental_features: if features.cooperative_matrix {
                unsafe { wgpu::ExperimentalFeatures::enabled() }
            } else {
                wgpu::ExperimentalFeatures::disabled()
            },
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&desc)).map_err(|e| BackendError::Gpu {
                stage: format!("opening {}", info.name),
                message: e.to_string(),
            })?;
        let errors = Arc::new(Mutex::new(ErrorSink::default()));
        {
            let errors = errors.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                let mut sink = errors.lock().unwrap_or_else(|p| p.into_inner());
                sink.first.get_or_insert_with(|| e.to_string());
            }));
        }
        {
            let errors = errors.clone();
            device.set_device_lost_callback(move |reason, message| {
                let mut sink = errors.lock().unwrap_or_else(|p| p.into_inner());
                sink.lost
                    .get_or_insert_with(|| format!("{reason:?}: {message}"));
            });
        }
        let mut gpu = Self {
            device,
            queue,
            info,
            limits,
            features,
            options,
            pipeline_cache: None,
            errors,
        };
        if features.pipeline_cache {
            gpu.pipeline_cache = gpu.open_pipeline_cache();
        }
        Ok(gpu)
    }

    /// The pipeline cache of the file the options name, or an empty one where the file is
    /// missing or unusable; `None` where caching is off or the API keeps no cache.
    fn open_pipeline_cache(&self) -> Option<KernelCache> {
        let path = self.options.pipeline_cache.path(&self.info)?;
        let data = pipeline_cache::read(&path);
        let create = |data: Option<&[u8]>| {
            self.scoped("creating the kernel cache", || {
                // SAFETY: the data was written by get_data of a cache on an adapter of this
                // key (wgpu checks the device and driver before the driver sees it), and
                // checksummed by pipeline_cache::decode; `fallback` drops data the driver
                // refuses.
                unsafe {
                    self.device
                        .create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                            label: Some("vibrant kernels"),
                            data,
                            fallback: true,
                        })
                }
            })
        };
        let (cache, loaded) = match create(data.as_deref()) {
            Ok(cache) => (cache, data.as_ref().map_or(0, Vec::len)),
            Err(e) => {
                eprintln!("warning: ignoring the kernel cache {}: {e}", path.display());
                (create(None).ok()?, 0)
            }
        };
        Some(KernelCache {
            cache,
            path,
            loaded,
            saved: Mutex::new(Some(loaded)),
        })
    }

    /// Writes the pipeline cache back to its file if it grew since it was read or last
    /// written; a failure is a warning, once.
    pub fn save_pipeline_cache(&self) {
        let Some(c) = &self.pipeline_cache else {
            return;
        };
        let mut saved = c.saved.lock().unwrap_or_else(|p| p.into_inner());
        let Some(data) = c.cache.get_data() else {
            return;
        };
        if saved.is_none_or(|len| len == data.len()) {
            return;
        }
        match pipeline_cache::write(&c.path, &data) {
            Ok(()) => *saved = Some(data.len()),
            Err(e) => {
                eprintln!(
                    "warning: could not save compiled kernels to {}: {e}",
                    c.path.display()
                );
                *saved = None;
            }
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?}; features: {})",
            self.info.name,
            self.info.backend,
            self.info.device_type,
            self.features.summary()
        )
    }

    /// Reports the first error wgpu raised since the last check, blamed on `stage`.
    pub fn check(&self, stage: &str) -> Result<()> {
        let mut sink = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(reason) = sink.lost.clone() {
            return Err(BackendError::DeviceLost {
                stage: stage.to_string(),
                reason,
            });
        }
        if let Some(error) = sink.recorded.take() {
            return Err(error);
        }
        if let Some(message) = sink.first.take() {
            return Err(classify(stage, message));
        }
        Ok(())
    }

    /// Records an error of the device's own (a submission past the timeout); it is reported
    /// at the next check, to whichever backend on the device checks first.
    pub fn report(&self, error: BackendError) {
        let mut sink = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        sink.recorded.get_or_insert(error);
    }

    /// Sends `commands` to the queue. A driver that runs the work inside the submission
    /// (Mesa's llvmpipe through GL runs compute dispatches before returning) leaves no wait to
    /// bound: a submission that outlasted the timeout is reported as one at the next check.
    pub fn submit(&self, stage: &str, commands: wgpu::CommandBuffer) -> wgpu::SubmissionIndex {
        let start = std::time::Instant::now();
        let submission = self.queue.submit([commands]);
        let timeout = self.options.timeout;
        if start.elapsed() > timeout {
            self.report(BackendError::Timeout {
                stage: stage.to_string(),
                seconds: timeout.as_secs_f64(),
            });
        }
        submission
    }

    /// Waits for all submitted work, at most the configured timeout.
    pub fn wait(&self, stage: &str) -> Result<()> {
        self.wait_until(stage, None, || true)
    }

    /// Waits for `submission` (all submitted work if `None`), then until `done` holds (a
    /// callback has run), within the device's timeout. Naming the submission leaves later
    /// ones running (the next token's step). While other backends poll the same device, a
    /// wait can end early and callbacks can run on their threads (seen on the H100): only the
    /// deadline makes it a timeout.
    pub fn wait_until(
        &self,
        stage: &str,
        submission: Option<&wgpu::SubmissionIndex>,
        done: impl Fn() -> bool,
    ) -> Result<()> {
        let timeout = self.options.timeout;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let outcome = self.device.poll(wgpu::PollType::Wait {
                submission_index: submission.cloned(),
                timeout: Some(left),
            });
            self.check(stage)?;
            match outcome {
                Ok(_) if done() => return Ok(()),
                Ok(_) | Err(wgpu::PollError::Timeout) if std::time::Instant::now() < deadline => {
                    std::thread::yield_now();
                }
                Ok(_) | Err(wgpu::PollError::Timeout) => {
                    return Err(BackendError::Timeout {
                        stage: stage.to_string(),
                        seconds: timeout.as_secs_f64(),
                    })
                }
                Err(e) => {
                    return Err(BackendError::Gpu {
                        stage: stage.to_string(),
                        message: e.to_string(),
                    })
                }
            }
        }
    }

    /// Runs `f` inside a validation error scope, so a bad pipeline or resource is reported
    /// right where it was created.
    pub fn scoped<T>(&self, stage: &str, f: impl FnOnce() -> T) -> Result<T> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let value = f();
        let oom_error = pollster::block_on(oom.pop());
        let validation_error = pollster::block_on(scope.pop());
        if let Some(e) = oom_error {
            return Err(BackendError::OutOfMemory {
                device: self.info.name.clone(),
                what: format!("{stage}: {e}"),
            });
        }
        if let Some(e) = validation_error {
            return Err(classify(stage, e.to_string()));
        }
        Ok(value)
    }
}

fn classify(stage: &str, message: String) -> BackendError {
    BackendError::Gpu {
        stage: stage.to_string(),
        message,
    }
}
