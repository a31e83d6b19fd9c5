//! A decode step as one CUDA graph: the kernels between a step's embedding of the last pick
//! and its own pick are recorded instead of launched ([`Device::start_recording`]), then
//! launched as a graph built once and replayed, with the arguments that changed since the
//! last step (positions, pick slots) set in place. Launching ~250 small kernels one by one
//! leaves gaps between them on the device; a graph launch queues them all at once. On Hopper
//! and later each kernel is also a programmatic dependent of the one before, so that its
//! launch overlaps that kernel's last blocks (cuda/common.cuh's wait_for_prior_grids).
//!
//! [`Device::start_recording`]: super::device::Device::start_recording

use super::device::driver_error;
use crate::backend::Result;
use cudarc::driver::sys;
use std::ffi::c_void;

/// A kernel launch: its function and the values of its parameters, each in an 8-byte slot
/// (the driver copies each parameter's size from its slot, little-endian).
pub(crate) struct Launch {
    pub(crate) func: sys::CUfunction,
    pub(crate) name: &'static str,
    pub(crate) grid: (u32, u32, u32),
    pub(crate) block: u32,
    pub(crate) args: Vec<u64>,
}

impl Launch {
    /// Launches now on `stream`.
    pub(crate) fn launch(mut self, stream: sys::CUstream) -> Result<()> {
        let mut params = pointers(&mut self.args);
        // SAFETY: the function's parameters are `args` in order, each at most 8 bytes and read
        // from its slot during the call; pointers point into live device buffers, which are
        // freed in stream order after the kernel.
        unsafe {
            cudarc::driver::result::launch_kernel(
                self.func,
                self.grid,
                (self.block, 1, 1),
                0,
                stream,
                &mut params,
            )
        }
        .map_err(|e| driver_error(&format!("launching kernel {}", self.name), e))
    }

    /// Whether `other` launches the same function on the same grid (arguments aside).
    fn same_shape(&self, other: &Launch) -> bool {
        (self.func, self.grid, self.block) == (other.func, other.grid, other.block)
    }

    /// The node's parameters, pointing into `slots` (a copy of the arguments that must outlive
    /// the call that reads them).
    fn node_params(&self, params: &mut [*mut c_void]) -> sys::CUDA_KERNEL_NODE_PARAMS {
        sys::CUDA_KERNEL_NODE_PARAMS {
            func: self.func,
            gridDimX: self.grid.0,
            gridDimY: self.grid.1,
            gridDimZ: self.grid.2,
            blockDimX: self.block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: 0,
            kernelParams: params.as_mut_ptr(),
            extra: std::ptr::null_mut(),
            kern: std::ptr::null_mut(),
            ctx: std::ptr::null_mut(),
        }
    }
}

fn pointers(slots: &mut [u64]) -> Vec<*mut c_void> {
    slots
        .iter_mut()
        .map(|s| s as *mut u64 as *mut c_void)
        .collect()
}

/// A graph edge from a kernel node to the next that lets the next start once every block of
/// the first has started (it waits for the first's end in wait_for_prior_grids).
fn programmatic_edge() -> sys::CUgraphEdgeData {
    sys::CUgraphEdgeData {
        from_port: sys::CU_GRAPH_KERNEL_NODE_PORT_LAUNCH_ORDER as u8,
        to_port: 0,
        type_: sys::CUgraphDependencyType::CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC as u8,
        reserved: [0; 5],
    }
}

fn check(what: &str, r: sys::CUresult) -> Result<()> {
    r.result().map_err(|e| driver_error(what, e))
}

/// The graph of one decode step: its kernels in a chain, as recorded.
pub(crate) struct StepGraph {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    nodes: Vec<sys::CUgraphNode>,
    launches: Vec<Launch>,
}

impl StepGraph {
    /// The graph of `launches` in a chain; with `programmatic`, each kernel a programmatic
    /// dependent of the one before.
    pub(crate) fn build(launches: Vec<Launch>, programmatic: bool) -> Result<Self> {
        let mut graph = std::ptr::null_mut();
        // SAFETY: writes one handle; the context is current.
        check("creating a step's graph", unsafe {
            sys::cuGraphCreate(&mut graph, 0)
        })?;
        let mut built = Self {
            graph,
            exec: std::ptr::null_mut(),
            nodes: Vec::with_capacity(launches.len()),
            launches: Vec::new(),
        };
        for l in &launches {
            let mut slots = l.args.clone();
            let mut params = pointers(&mut slots);
            let node_params = l.node_params(&mut params);
            let mut node = std::ptr::null_mut();
            // SAFETY: a live graph; the parameters point into `slots`, which the call copies.
            check(
                &format!("adding kernel {} to a step's graph", l.name),
                unsafe {
                    sys::cuGraphAddKernelNode_v2(
                        &mut node,
                        graph,
                        std::ptr::null(),
                        0,
                        &node_params,
                    )
                },
            )?;
            if let Some(&before) = built.nodes.last() {
                let edge = programmatic.then(programmatic_edge);
                // SAFETY: two nodes of this graph; the edge data (if any) outlives the call.
                check(
                    &format!("chaining kernel {} in a step's graph", l.name),
                    unsafe {
                        sys::cuGraphAddDependencies_v2(
                            graph,
                            &before,
                            &node,
                            edge.as_ref().map_or(std::ptr::null(), |e| e as *const _),
                            1,
                        )
                    },
                )?;
            }
            built.nodes.push(node);
        }
        // SAFETY: a complete graph; writes one handle.
        check("instantiating a step's graph", unsafe {
            sys::cuGraphInstantiateWithFlags(&mut built.exec, graph, 0)
        })?;
        built.launches = launches;
        Ok(built)
    }

    /// Whether `launches` are this graph's kernels on its grids (their arguments may differ).
    pub(crate) fn fits(&self, launches: &[Launch]) -> bool {
        self.launches.len() == launches.len()
            && self
                .launches
                .iter()
                .zip(launches)
                .all(|(a, b)| a.same_shape(b))
    }

    /// Sets the arguments that differ from the last launch's (see [`Self::fits`]).
    pub(crate) fn update(&mut self, launches: Vec<Launch>) -> Result<()> {
        for (i, (old, new)) in self.launches.iter().zip(&launches).enumerate() {
            if old.args == new.args {
                continue;
            }
            let mut slots = new.args.clone();
            let mut params = pointers(&mut slots);
            let node_params = new.node_params(&mut params);
            // SAFETY: a node of this graph, instantiated in `exec`, with a kernel of the same
            // function; launches already queued keep their arguments.
            check(
                &format!("updating kernel {} of a step's graph", new.name),
                unsafe {
                    sys::cuGraphExecKernelNodeSetParams_v2(self.exec, self.nodes[i], &node_params)
                },
            )?;
        }
        self.launches = launches;
        Ok(())
    }

    pub(crate) fn launch(&self, stream: sys::CUstream) -> Result<()> {
        // SAFETY: an instantiated graph and a live stream.
        check("launching a step's graph", unsafe {
            sys::cuGraphLaunch(self.exec, stream)
        })
    }
}

impl Drop for StepGraph {
    /// An executable graph still running is freed when it completes (cuGraphExecDestroy), so
    /// dropping one never waits.
    fn drop(&mut self) {
        // SAFETY: made in build, destroyed once.
        unsafe {
            if !self.exec.is_null() {
                let _ = sys::cuGraphExecDestroy(self.exec);
            }
            let _ = sys::cuGraphDestroy(self.graph);
        }
    }
}
