//! Kernel timing for `vibrant bench --profile`: a timestamp before and after every dispatch
//! (inside the one compute pass), resolved once at the end.

use crate::backend::KernelTiming;

use super::Kernel;

/// What a dispatch has to move through memory and compute, for achieved GB/s and FLOP/s.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cost {
    pub bytes: u64,
    pub flops: u64,
}

impl Cost {
    pub fn bytes(bytes: u64) -> Self {
        Self { bytes, flops: 0 }
    }
}

/// Most dispatches one profile records (a query set holds at most 4096 queries).
const MAX_DISPATCHES: u32 = 2048;

pub struct Profiler {
    queries: wgpu::QuerySet,
    launches: Vec<(Kernel, Cost)>,
}

impl Profiler {
    pub fn new(device: &wgpu::Device) -> Self {
        Self {
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("kernel timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * MAX_DISPATCHES,
            }),
            launches: Vec::new(),
        }
    }

    /// Writes the start timestamp of a dispatch; `None` once the query set is full.
    pub fn begin(
        &mut self,
        pass: &mut wgpu::ComputePass<'static>,
        kernel: Kernel,
        cost: Cost,
    ) -> Option<u32> {
        let slot = self.launches.len() as u32;
        if slot >= MAX_DISPATCHES {
            return None;
        }
        pass.write_timestamp(&self.queries, 2 * slot);
        self.launches.push((kernel, cost));
        Some(slot)
    }

    pub fn end(&mut self, pass: &mut wgpu::ComputePass<'static>, slot: u32) {
        pass.write_timestamp(&self.queries, 2 * slot + 1);
    }

    pub fn ticks_needed(&self) -> u64 {
        2 * self.launches.len() as u64
    }

    pub fn resolve_buffer(&self, device: &wgpu::Device) -> wgpu::Buffer {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("resolved timestamps"),
            size: self.ticks_needed() * 8,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    pub fn resolve(&self, encoder: &mut wgpu::CommandEncoder, into: &wgpu::Buffer) {
        encoder.resolve_query_set(&self.queries, 0..self.ticks_needed() as u32, into, 0);
    }

    /// Pairs the raw ticks with the launches; `period` is nanoseconds per tick.
    pub fn timings(&self, ticks: &[u64], period: f64) -> Vec<KernelTiming> {
        self.launches
            .iter()
            .zip(ticks.chunks_exact(2))
            .map(|((kernel, cost), t)| KernelTiming {
                kernel: kernel.name(),
                seconds: t[1].saturating_sub(t[0]) as f64 * period * 1e-9,
                bytes: cost.bytes,
                flops: cost.flops,
            })
            .collect()
    }
}
