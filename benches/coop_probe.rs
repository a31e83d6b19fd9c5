//! Where the tensor-core ceiling of WGSL cooperative matrices lies on this device: products
//! alone, and products fed from workgroup or storage memory through f16 or vec4<f16>
//! pointers (shaders/coop_probe.wgsl). Prints TFLOP/s per variant. Needs a GPU with
//! cooperative matrices: `cargo bench --bench coop_probe`.

use std::time::Instant;
use vibrant::backend::gpu::{Gpu, GpuOptions};

const ITERS: u64 = 2048;
const GROUPS: u32 = 1056;
const REPS: u32 = 10;

fn main() {
    let gpu = Gpu::open(GpuOptions::default()).expect("a GPU");
    println!("device: {}", gpu.describe());
    if !gpu.features.cooperative_matrix {
        println!("no cooperative matrices on this device: nothing to probe");
        return;
    }
    let device = &gpu.device;
    let source = format!(
        "enable f16;\nenable wgpu_cooperative_matrix;\n{}",
        include_str!("../shaders/coop_probe.wgsl")
    );
    let desc = wgpu::ShaderModuleDescriptor {
        label: Some("coop_probe"),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    };
    let checks = wgpu::ShaderRuntimeChecks {
        bounds_checks: false,
        force_loop_bounding: false,
        ..wgpu::ShaderRuntimeChecks::checked()
    };
    // SAFETY: the probe's loops are bounded by constants and its indices stay in range.
    let module = unsafe { device.create_shader_module_trusted(desc, checks) };
    let storage = |read_only| wgpu::BindingType::Buffer {
        ty: wgpu::BufferBindingType::Storage { read_only },
        has_dynamic_offset: false,
        min_binding_size: None,
    };
    let entries: Vec<_> = [storage(true), storage(true), storage(false)]
        .into_iter()
        .enumerate()
        .map(|(i, ty)| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty,
            count: None,
        })
        .collect();
    let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: None,
        entries: &entries,
    });
    let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: None,
        bind_group_layouts: &[Some(&bgl)],
        immediate_size: 0,
    });
    let buffer = |size: u64, usage| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage,
            mapped_at_creation: false,
        })
    };
    let src_bytes = 64 * 192 * 32 * 2;
    let a = buffer(src_bytes, wgpu::BufferUsages::STORAGE);
    let b = buffer(src_bytes, wgpu::BufferUsages::STORAGE);
    let out = buffer(GROUPS as u64 * 4, wgpu::BufferUsages::STORAGE);
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &bgl,
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: a.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: b.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 2,
                resource: out.as_entire_binding(),
            },
        ],
    });
    for entry in ["mma_only", "lds_f16", "lds_v4", "global_f16", "global_v4"] {
        let built = gpu.scoped(entry, || {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        });
        let pipeline = match built {
            Ok(p) => p,
            Err(e) => {
                println!("{entry:12} does not build: {e}");
                continue;
            }
        };
        let run = |reps: u32| -> f64 {
            let mut encoder = device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind, &[]);
                for _ in 0..reps {
                    pass.dispatch_workgroups(GROUPS, 1, 1);
                }
            }
            let started = Instant::now();
            gpu.queue.submit([encoder.finish()]);
            gpu.wait(entry).expect("probe finishes");
            started.elapsed().as_secs_f64()
        };
        run(1);
        let seconds = run(REPS) / REPS as f64;
        let flops = GROUPS as f64 * 8.0 * ITERS as f64 * 4.0 * 2.0 * 4096.0;
        println!(
            "{entry:12} {:8.3} ms  {:7.1} TFLOP/s",
            seconds * 1e3,
            flops / seconds / 1e12
        );
    }
}
