//! The emulated device's memory behaves like `cuMemAlloc`'s where it matters for finding
//! bugs: a fresh allocation holds a poison pattern (NaN bytes), not zeros, so a kernel
//! that reads a buffer nothing wrote gives NaN on the emulator as it gives garbage on a GPU.
#![cfg(feature = "cuda")]

use smelt_gpu::emulate::{HostDevice, POISON};
use smelt_runtime::gpu::Device;
use std::collections::HashMap;

/// The host code of `y = x + 1` over 8 floats, lowered for the GPU, and the launch's
/// buffers in its parameters' order given the addresses of x and y.
fn add_one_device() -> (HostDevice, u64, impl Fn(u64, u64) -> Vec<u64>) {
    let graph = smelt_ir::text::parse_graph(
        "graph add_one (%x: f32[8]) {\n  %one = constant f32[] [1.0]\n  %y = add(%x, %one) : f32[8]\n  return %y\n}\n",
    )
    .unwrap();
    let model = smelt::Model::from_graph(graph).unwrap();
    let compiled = model.compile(&smelt::Options::default()).unwrap();
    let shapes = HashMap::from([("x".to_string(), vec![8])]);
    let lowered = compiled
        .kernels_for_shapes(&shapes, smelt::Target::GpuEmulator)
        .unwrap();
    assert_eq!(lowered.len(), 1, "one kernel: {lowered:?}");
    let kernel = &lowered[0].kernel;
    let names: Vec<String> = kernel.params.iter().map(|p| p.value.clone()).collect();
    assert_eq!(names.len(), 2, "x and y: {names:?}");
    let (code, entries) = smelt_gpu::host_code(&[kernel]).unwrap();
    let order = move |x: u64, y: u64| names.iter().map(|n| if n == "x" { x } else { y }).collect();
    (HostDevice::new(code), entries[0].threads, order)
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn fresh_allocations_hold_nan_bytes() {
    let (mut device, _, _) = add_one_device();
    let buffer = device.alloc(64).unwrap();
    let mut bytes = vec![0u8; 64];
    device.download(buffer, &mut bytes).unwrap();
    assert!(bytes.iter().all(|&b| b == POISON), "{bytes:?}");
    assert!(floats(&bytes).iter().all(|v| v.is_nan()));
}

#[test]
fn a_kernel_reading_an_unwritten_buffer_gives_nan() {
    let (mut device, threads, order) = add_one_device();
    let (x, y) = (device.alloc(32).unwrap(), device.alloc(32).unwrap());
    let args = order(x, y);
    // The input was never uploaded: every result is NaN, which any comparison with the
    // expected ones catches (zero-filled memory would have given 1.0, a plausible value).
    device.launch("add_one", 0, threads, &args).unwrap();
    let mut out = vec![0u8; 32];
    device.download(y, &mut out).unwrap();
    assert!(
        floats(&out).iter().all(|v| v.is_nan()),
        "{:?}",
        floats(&out)
    );
    // Written first, the same launch gives the right values.
    let ones: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
    device.upload(x, &ones).unwrap();
    device.launch("add_one", 0, threads, &args).unwrap();
    device.download(y, &mut out).unwrap();
    assert_eq!(floats(&out), (1..=8).map(|i| i as f32).collect::<Vec<_>>());
}
