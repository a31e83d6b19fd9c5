//! Recording: kernels built on first use, one dispatch after another into one compute pass
//! with its parameters in the submission's uniform buffer, cached bind groups, submissions and
//! bounded waits, and reading results back.

use super::*;

/// Parameter slots per submission before recording flushes.
pub(super) const PARAM_SLOTS: u64 = 4096;

/// Identifies a bind group: the kernel and the buffers bound to it, in order.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct BindKey {
    pub(super) kernel: Kernel,
    pub(super) buffers: Vec<u64>,
}

pub(super) fn grid(groups: u64) -> (u32, u32) {
    let x = groups.min(MAX_GROUPS as u64) as u32;
    (x.max(1), groups.div_ceil(MAX_GROUPS as u64) as u32)
}

impl WgpuBackend {
    pub(super) fn pipeline(&mut self, kernel: Kernel) -> Result<()> {
        if !self.pipelines.contains_key(&kernel) {
            let started = Instant::now();
            let built = kernels::build(&self.gpu, &self.tuning, kernel)?;
            self.pipelines.insert(kernel, built);
            self.load_times.kernels += started.elapsed();
            self.load_times.kernels_built += 1;
        }
        Ok(())
    }

    /// The value of `result`; or `None` after marking recording as failed, with the error
    /// kept for the next wait to report (as every recording error is).
    pub(super) fn recorded<T>(&mut self, result: Result<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.failed.get_or_insert(e);
                None
            }
        }
    }

    /// Records `what` as an Unsupported error, reported at the next wait.
    pub(super) fn refuse(&mut self, what: String) {
        self.recorded::<()>(Err(BackendError::Unsupported(what)));
    }

    /// Records one dispatch. Recording errors (a failed pipeline) surface at the next wait.
    pub(super) fn dispatch<P: KernelParams>(
        &mut self,
        kernel: Kernel,
        params: &P,
        buffers: &[&Arc<GpuBuf>],
        groups: (u32, u32, u32),
        cost: Cost,
    ) {
        assert!(
            std::ptr::eq(kernel.params(), P::layout()),
            "{}: dispatched with another kernel's parameters",
            kernel.name()
        );
        if self.failed.is_some() {
            return;
        }
        let built = self.pipeline(kernel);
        if self.recorded(built).is_none() {
            return;
        }
        if self.params.len() as u64 >= self.param_stride * PARAM_SLOTS {
            self.submit();
        }
        let offset = self.params.len() as u64;
        let bytes = bytemuck::bytes_of(params);
        self.params.extend_from_slice(bytes);
        self.params.resize((offset + self.param_stride) as usize, 0);

        let key = BindKey {
            kernel,
            buffers: buffers.iter().map(|b| b.id).collect(),
        };
        if !self.bind_groups.contains_key(&key) {
            let pipeline = &self.pipelines[&kernel];
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &self.params_buf,
                    offset: 0,
                    size: wgpu::BufferSize::new(self.param_stride),
                }),
            }];
            for ((binding, _), buf) in kernel.bindings().into_iter().zip(buffers) {
                entries.push(wgpu::BindGroupEntry {
                    binding,
                    resource: buf.buffer.as_entire_binding(),
                });
            }
            let group = self
                .gpu
                .device
                .create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &pipeline.layout,
                    entries: &entries,
                });
            self.bind_groups.insert(key.clone(), group);
        }
        if self.gpu.options.trace {
            eprintln!(
                "[vibrant trace] dispatch {} groups {:?} params {:?}",
                kernel.name(),
                groups,
                &bytes[..bytes.len().min(32)]
            );
        }
        self.pass();
        let pass = self.pass.as_mut().expect("pass opened above");
        let pipeline = &self.pipelines[&kernel];
        let slot = self
            .profiler
            .as_mut()
            .and_then(|p| p.begin(pass, kernel, cost));
        pass.set_pipeline(&pipeline.pipeline);
        pass.set_bind_group(0, &self.bind_groups[&key], &[offset as u32]);
        pass.dispatch_workgroups(groups.0, groups.1, groups.2);
        if let (Some(p), Some(slot)) = (self.profiler.as_mut(), slot) {
            p.end(pass, slot);
        }
        if self.gpu.options.trace {
            // Finish each dispatch on its own, so a kernel that never ends is the last named.
            self.stage = format!("kernel {}", kernel.name());
            if let Err(e) = self.flush_and_wait() {
                eprintln!("[vibrant trace] {e}");
            }
        }
    }

    pub(super) fn pass(&mut self) -> &mut wgpu::ComputePass<'static> {
        if self.pass.is_none() {
            let encoder = self.encoder.get_or_insert_with(|| {
                self.gpu
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("step"),
                    })
            });
            let pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("step"),
                    timestamp_writes: None,
                })
                .forget_lifetime();
            self.pass = Some(pass);
        }
        self.pass.as_mut().expect("just created")
    }

    /// Ends the pass so that copies can be recorded on the encoder.
    pub(super) fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        // Recording starts once the weights are in: their staging memory is no longer needed.
        self.staging.clear();
        self.encoder.get_or_insert_with(|| {
            self.gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("step"),
                })
        })
    }

    /// Sends everything recorded so far to the GPU.
    pub(super) fn submit(&mut self) -> Option<wgpu::SubmissionIndex> {
        self.pass = None;
        let encoder = self.encoder.take()?;
        // The queue orders this write after the work already submitted, which may still be
        // running (greedy decoding submits a step while the one before runs): wgpu puts a
        // barrier between that work's reads of the parameters and the copy.
        if !self.params.is_empty() {
            self.gpu
                .queue
                .write_buffer(&self.params_buf, 0, &self.params);
            self.params.clear();
        }
        Some(self.gpu.submit(&self.stage, encoder.finish()))
    }

    pub(super) fn flush_and_wait(&mut self) -> Result<()> {
        self.submit();
        let stage = self.stage.clone();
        self.gpu.wait(&stage)?;
        self.recording_error()
    }

    /// This backend's recording error, if recording failed.
    fn recording_error(&self) -> Result<()> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Copies `size` bytes from the start of `src` to the host.
    pub(super) fn read_bytes(&mut self, src: &Arc<GpuBuf>, size: u64) -> Result<Vec<u8>> {
        let size = size.next_multiple_of(4);
        if self.readback.as_ref().is_none_or(|b| b.size() < size) {
            self.readback = Some(self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let readback = self.readback.clone().expect("allocated above");
        self.encoder()
            .copy_buffer_to_buffer(&src.buffer, 0, &readback, 0, size);
        self.flush_and_wait()?;
        self.map_read(&readback, size, None, "mapping the readback buffer")
    }

    /// The first `size` bytes of a MAP_READ buffer, once `submission` (all if `None`) is done.
    pub(super) fn map_read(
        &self,
        readback: &wgpu::Buffer,
        size: u64,
        submission: Option<&wgpu::SubmissionIndex>,
        stage: &str,
    ) -> Result<Vec<u8>> {
        self.recording_error()?;
        let slice = readback.slice(..size);
        let mapped = Arc::new(std::sync::Mutex::new(None));
        let sink = mapped.clone();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            *sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        });
        let lock = || mapped.lock().unwrap_or_else(|p| p.into_inner());
        self.gpu
            .wait_until(stage, submission, || lock().is_some())?;
        if let Some(Err(e)) = lock().take() {
            return Err(BackendError::Gpu {
                stage: "reading results back".into(),
                message: e.to_string(),
            });
        }
        let bytes = slice
            .get_mapped_range()
            .map_err(|e| BackendError::Gpu {
                stage: "reading results back".into(),
                message: e.to_string(),
            })?
            .to_vec();
        readback.unmap();
        Ok(bytes)
    }

    /// out[t] = row `ids[t]` of `table` for the first `n` ids, which are on the device.
    /// Sends the recorded work, ending with a copy of the picked id (result[0]) to `slot`.
    pub(super) fn send_pick(&mut self, slot: usize) {
        self.stage = "forward step".into();
        let (result, copy) = (self.result.clone(), self.argmax_slots[slot].buffer.clone());
        self.encoder()
            .copy_buffer_to_buffer(&result.buffer, 0, &copy, 0, 4);
        self.argmax_slots[slot].written_by = self.submit();
    }

    pub(super) fn elementwise(
        &mut self,
        kernel: Kernel,
        params: ElementParams,
        buffers: &[&Arc<GpuBuf>],
    ) {
        let len = params.len;
        let (x, y) = grid((len as u64).div_ceil(256));
        let bytes = 4 * len as u64 * buffers.len() as u64;
        self.dispatch(kernel, &params, buffers, (x, y, 1), Cost::bytes(bytes));
    }
}
