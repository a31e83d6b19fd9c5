//! Device buffers: allocation within the binding limit, and the backend's own scratch (the
//! fused ops' intermediates, q8_0 caches' staging rows).

use super::*;

/// A storage buffer the kernels read and write, and the host copies to and from.
pub(super) fn storage_buffer(gpu: &Gpu, id: u64, label: &str, size: u64) -> Result<Arc<GpuBuf>> {
    let buffer = gpu.scoped(&format!("allocating {label}"), || {
        gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    })?;
    Ok(Arc::new(GpuBuf { id, buffer }))
}

impl WgpuBackend {
    pub(super) fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(super) fn storage(&mut self, label: &str, size: u64) -> Result<Arc<GpuBuf>> {
        self.check_size(label, size)?;
        let size = size.next_multiple_of(4).max(16);
        let id = self.new_id();
        let buf = storage_buffer(&self.gpu, id, label, size)?;
        self.bytes_allocated += size;
        Ok(buf)
    }

    pub(super) fn storage_init(&mut self, label: &str, contents: &[u8]) -> Result<Arc<GpuBuf>> {
        self.check_size(label, contents.len() as u64)?;
        let buffer = self.gpu.scoped(&format!("uploading {label}"), || {
            self.gpu
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                })
        })?;
        self.bytes_allocated += contents.len() as u64;
        Ok(Arc::new(GpuBuf {
            id: self.new_id(),
            buffer,
        }))
    }

    pub(super) fn max_binding(&self) -> u64 {
        self.gpu
            .limits
            .max_storage_buffer_binding_size
            .min(self.gpu.limits.max_buffer_size)
    }

    pub(super) fn check_size(&self, label: &str, size: u64) -> Result<()> {
        if size > self.max_binding() {
            return Err(BackendError::Unsupported(format!(
                "{label} needs a {} MiB buffer, but {} binds at most {} MiB: use a smaller --ctx-size or --batch-size, or another device",
                size >> 20,
                self.gpu.info.name,
                self.max_binding() >> 20
            )));
        }
        Ok(())
    }

    /// The scratch tensor `which` as `[n, width]`, its buffer grown as needed: the normalised
    /// input of unfused products, or a prompt's intermediate products (interleaved gate/up,
    /// or `[q | k | v]` before RoPE).
    pub(super) fn scratch_tensor(
        &mut self,
        which: Scratch,
        n: usize,
        width: usize,
    ) -> Result<GpuTensor> {
        let bytes = (n * width * 4) as u64;
        let buf = match self.scratch.get(&which) {
            Some(b) if b.buffer.size() >= bytes => b.clone(),
            _ => {
                let label = match which {
                    Scratch::Normed => "normalised activations",
                    Scratch::Products => "prompt products",
                    Scratch::ExpertLists => "experts' lists of choices",
                };
                let b = self.storage(label, bytes)?;
                self.scratch.insert(which, b.clone());
                b
            }
        };
        Ok(GpuTensor {
            buf,
            rows: n,
            cols: width,
        })
    }

    /// The key and value staging rows of q8_0 caches, grown to `bytes` each.
    pub(super) fn kv_staging(&mut self, bytes: u64) -> Result<[Arc<GpuBuf>; 2]> {
        match &self.kv_staging {
            Some(s) if s[0].buffer.size() >= bytes => Ok(s.clone()),
            _ => {
                let staging = [
                    self.storage("staged keys", bytes)?,
                    self.storage("staged values", bytes)?,
                ];
                self.kv_staging = Some(staging.clone());
                Ok(staging)
            }
        }
    }
}
