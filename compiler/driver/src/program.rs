//! Program assembly: the runtime `Program` of lowered kernels. Buffers for values
//! (constants packed into one blob), a launch per kernel (and one per contraction's
//! epilogue), copies for outputs that are inputs or constants, and the arena placed by
//! the memory plan from the fusion layout's views and lifetimes.

use crate::SmeltError;
use smelt_fuse::kernel::{Body, Contraction, FoldedActivation, Role};
use smelt_fuse::{Layout, LoweredKernel};
use smelt_ir::{DType, Graph, Op, PoolKind, ValueId};
use smelt_runtime::ElemType;
use smelt_runtime::kernels::{
    Activation, AxisTaps, ConvGeometry, PoolGeometry, PoolMode, ResizeGeometry,
    prepack_skinny_weight_le, skinny_applies, skinny_packed_len,
};
use smelt_runtime::memory::{BufferLife, plan_arena};
use smelt_runtime::program::{AlignedBytes, BufferSpec, IoSpec, Launch, Place, Program};
use std::collections::HashMap;

/// The names the program gives its inputs and outputs, in the graph's order.
pub(crate) struct IoNames<'a> {
    pub inputs: &'a [String],
    pub outputs: &'a [String],
}

/// Elements of work per chunk that make a thread hand-off worth it.
const MIN_CHUNK_ELEMENTS: usize = 16 * 1024;

/// The values an integer graph input may hold when it indexes a gather or scatter
/// (directly or through a cast), as `IoSpec::index_bounds`: `[-n, n)` for an indexed axis
/// of `n`, the tightest over its uses. Gather, GatherElements and ScatterElements index
/// one axis; GatherND and ScatterND index one data axis per position of the indices' last
/// axis. Kernels clamp their loads, so an index outside would silently read a wrong
/// element; the program checks these inputs before each run instead. Empty when the
/// input indexes nothing, or an indexed axis is symbolic.
fn index_bounds(g: &Graph, input: ValueId) -> Vec<(i64, i64)> {
    if !matches!(g.ty(input).dtype, DType::I32 | DType::I64) {
        return Vec::new();
    }
    let mut indices = vec![input];
    for n in &g.nodes {
        if matches!(n.op, Op::Cast { to } if to.is_int()) && n.inputs[0] == input {
            indices.push(n.outputs[0]);
        }
    }
    let fixed = |v: ValueId, axis: usize| g.ty(v).shape.get(axis)?.fixed().map(|n| n as i64);
    let mut bounds: Vec<(i64, i64)> = Vec::new();
    for n in &g.nodes {
        if n.inputs.len() < 2 || !indices.contains(&n.inputs[1]) {
            continue;
        }
        let (data, idx) = (n.inputs[0], n.inputs[1]);
        // GatherND and ScatterND: one data axis per position of the last index axis,
        // from `first` (after GatherND's batch axes).
        let nd_sizes = |first: usize| {
            let last = g.ty(idx).shape.len().checked_sub(1)?;
            let depth = fixed(idx, last)? as usize;
            let sizes: Option<Vec<i64>> = (0..depth).map(|j| fixed(data, first + j)).collect();
            sizes.filter(|sizes| !sizes.is_empty())
        };
        // The sizes of the data axes that successive innermost index positions address.
        let axis_sizes = match n.op {
            Op::Gather { axis }
            | Op::GatherElements { axis }
            | Op::ScatterElements { axis, .. } => fixed(data, axis).map(|size| vec![size]),
            Op::GatherNd { batch_dims } => nd_sizes(batch_dims),
            Op::ScatterNd { .. } => nd_sizes(0),
            _ => continue,
        };
        let Some(axis_sizes) = axis_sizes else {
            return Vec::new();
        };
        let use_bounds: Vec<(i64, i64)> = axis_sizes.iter().map(|&n| (-n, n)).collect();
        bounds = intersect_bounds(&bounds, &use_bounds);
    }
    bounds
}

/// The tighter of two `index_bounds` lists of one input, each cycling along its
/// innermost axis, as one list cycling over the least common multiple of their lengths
/// (in practice the longer one's: a one-entry list applies to every position, and an ND
/// use's length is the input's innermost size).
fn intersect_bounds(a: &[(i64, i64)], b: &[(i64, i64)]) -> Vec<(i64, i64)> {
    if a.is_empty() {
        return b.to_vec();
    }
    let gcd = |mut x: usize, mut y: usize| {
        while y != 0 {
            (x, y) = (y, x % y);
        }
        x
    };
    let len = a.len() / gcd(a.len(), b.len()) * b.len();
    (0..len)
        .map(|i| {
            let (alo, ahi) = a[i % a.len()];
            let (blo, bhi) = b[i % b.len()];
            (alo.max(blo), ahi.min(bhi))
        })
        .collect()
}

/// One constant of the program, by the graph node that holds it: the node's tensor as it
/// is, or an f32 weight in a packed form.
enum ConstantPiece {
    Tensor {
        node: usize,
        bytes: usize,
    },
    /// An f32 weight (`k x n`, or `n x k` when transposed) in `kernels::skinny`'s panels.
    SkinnyPanels {
        node: usize,
        k: usize,
        n: usize,
        transposed: bool,
    },
}

impl ConstantPiece {
    fn byte_len(&self) -> usize {
        match self {
            ConstantPiece::Tensor { bytes, .. } => *bytes,
            ConstantPiece::SkinnyPanels { k, n, .. } => skinny_packed_len(*k, *n) * 4,
        }
    }

    fn node(&self) -> usize {
        match self {
            ConstantPiece::Tensor { node, .. } | ConstantPiece::SkinnyPanels { node, .. } => *node,
        }
    }
}

/// The program's constants, placed first and then written once into a blob of the exact
/// size, each graph constant moved out of the graph as soon as it is written: weights are
/// held once, in the blob, and the process never holds them twice (a graph kept beside
/// its blob doubled a model's resident memory).
#[derive(Default)]
struct ConstantBlob {
    pieces: Vec<(usize, ConstantPiece)>,
    len: usize,
}

impl ConstantBlob {
    /// The offset of `piece`, on a 64-byte boundary.
    fn place(&mut self, piece: ConstantPiece) -> usize {
        let offset = self.len.div_ceil(64) * 64;
        self.len = offset + piece.byte_len();
        self.pieces.push((offset, piece));
        offset
    }

    /// The blob, each placed node of `g` left as an `Op::ProgramConstant` of its type once
    /// its piece is written (its tensor freed there). A node has one piece: its value gets
    /// one buffer, packed or plain (`build_program` caches buffers by value).
    fn into_blob(self, g: &mut Graph) -> AlignedBytes {
        // Zeroed pages count towards resident memory only once written, so the blob
        // grows as the graph's tensors shrink.
        let mut blob = AlignedBytes::zeroed(self.len);
        let bytes = blob.as_mut_slice();
        for (offset, piece) in self.pieces {
            let node = piece.node();
            let Op::Constant(t) = &g.nodes[node].op else {
                unreachable!("pieces are placed from constant nodes, one piece each")
            };
            let dst = &mut bytes[offset..offset + piece.byte_len()];
            match piece {
                ConstantPiece::Tensor { .. } => t.write_le_bytes_to(dst),
                ConstantPiece::SkinnyPanels {
                    k, n, transposed, ..
                } => {
                    let smelt_ir::Data::F32(weight) = t.data() else {
                        unreachable!("only f32 weights are packed")
                    };
                    prepack_skinny_weight_le(weight, k, n, transposed, dst)
                        .expect("sizes checked when placed")
                }
            }
            let ty = t.tensor_type();
            g.nodes[node].op = Op::ProgramConstant(ty);
        }
        blob
    }
}

/// The buffers of the constant weights that MatMul kernels take packed
/// (`kernels::skinny`), added to `buffers` and `constants`, by value: f32 weights used by
/// that one kernel alone (a weight shared with another kernel stays plain), whose
/// products have few rows (`skinny_applies`).
fn pack_skinny_weights(
    g: &Graph,
    producer: &[Option<usize>],
    kernels: &[LoweredKernel],
    buffers: &mut Vec<BufferSpec>,
    constants: &mut ConstantBlob,
) -> HashMap<ValueId, usize> {
    let mut uses: HashMap<ValueId, usize> = HashMap::new();
    for &v in kernels.iter().flat_map(|lk| &lk.args).chain(&g.outputs) {
        *uses.entry(v).or_default() += 1;
    }
    let mut packed = HashMap::new();
    for lk in kernels {
        let Body::Contraction {
            call:
                Contraction::MatMul {
                    a,
                    b,
                    trans_a,
                    trans_b,
                    ..
                },
            ..
        } = &lk.kernel.body
        else {
            continue;
        };
        let weight = lk.args[*b as usize];
        let Some(node) = producer[weight.index()] else {
            continue;
        };
        let Op::Constant(t) = &g.nodes[node].op else {
            continue;
        };
        let smelt_ir::Data::F32(w) = t.data() else {
            continue;
        };
        let (a_shape, b_shape) = (
            &lk.kernel.params[*a as usize].shape,
            &lk.kernel.params[*b as usize].shape,
        );
        let (ra, rb) = (a_shape.len(), b_shape.len());
        if *trans_a
            || uses.get(&weight) != Some(&1)
            || ra < 2
            || rb < 2
            || b_shape[..rb - 2].iter().product::<usize>() != 1
        {
            continue;
        }
        let (k, n) = if *trans_b {
            (b_shape[rb - 1], b_shape[rb - 2])
        } else {
            (b_shape[rb - 2], b_shape[rb - 1])
        };
        let rows = a_shape[..ra - 1].iter().product::<usize>();
        if a_shape[ra - 1] != k || !skinny_applies(rows, k, n) {
            continue;
        }
        if w.len() != k * n {
            continue;
        }
        buffers.push(BufferSpec {
            name: format!("{} (packed)", g.value(weight).name),
            elem: ElemType::F32,
            shape: vec![skinny_packed_len(k, n)],
            place: Place::Constant {
                offset: constants.place(ConstantPiece::SkinnyPanels {
                    node,
                    k,
                    n,
                    transposed: *trans_b,
                }),
            },
        });
        packed.insert(weight, buffers.len() - 1);
    }
    packed
}

/// The program of `kernels`, the graph's constants moved into its blob (each placed
/// constant node of `graph` is left an `Op::ProgramConstant`).
pub(crate) fn build_program(
    graph: &mut Graph,
    names: &IoNames,
    kernels: &[LoweredKernel],
    function_of: &[usize],
    layout: &Layout,
) -> Result<Program, SmeltError> {
    let g: &Graph = graph;
    let producer = g.producers();
    let mut buffers: Vec<BufferSpec> = Vec::new();
    let mut buffer_of: HashMap<ValueId, usize> = HashMap::new();
    let mut constants = ConstantBlob::default();
    let shape = |v: ValueId| g.ty(v).fixed_shape().expect("shapes are fixed");
    // Constant weights of skinny products take the packed form in place of their own:
    // the constants then hold each weight once, and no run packs it again.
    let packed = pack_skinny_weights(g, &producer, kernels, &mut buffers, &mut constants);
    for (&v, &b) in &packed {
        buffer_of.insert(v, b);
    }
    let mut buffer =
        |v: ValueId, buffers: &mut Vec<BufferSpec>, constants: &mut ConstantBlob| -> usize {
            if let Some(&b) = buffer_of.get(&v) {
                return b;
            }
            let place = match producer[v.index()].map(|n| (n, &g.nodes[n].op)) {
                Some((node, Op::Constant(t))) => Place::Constant {
                    offset: constants.place(ConstantPiece::Tensor {
                        node,
                        bytes: t.byte_len(),
                    }),
                },
                _ => Place::Arena { offset: 0 },
            };
            buffers.push(BufferSpec {
                name: g.value(v).name.clone(),
                elem: elem(g, v),
                shape: shape(v),
                place,
            });
            buffer_of.insert(v, buffers.len() - 1);
            buffers.len() - 1
        };
    let inputs: Vec<IoSpec> = g
        .inputs
        .iter()
        .zip(names.inputs)
        .map(|(&v, name)| IoSpec {
            name: name.clone(),
            elem: elem(g, v),
            shape: shape(v),
            buffer: buffer(v, &mut buffers, &mut constants),
            index_bounds: index_bounds(g, v),
        })
        .collect();
    let mut launches = Vec::new();
    // The first and last launch of each kernel.
    let mut kernel_launches: Vec<(usize, usize)> = Vec::with_capacity(kernels.len());
    for (ki, lk) in kernels.iter().enumerate() {
        let first_launch = launches.len();
        let k = &lk.kernel;
        let args: Vec<usize> = lk
            .args
            .iter()
            .map(|&v| buffer(v, &mut buffers, &mut constants))
            .collect();
        let loop_launch = |nest: &smelt_fuse::LoopNest| {
            // A reduction reads many inputs per element it computes (a global average
            // pool of 112x112 planes: 12544), and its work is what makes a split worth
            // it: counted by elements computed, such kernels never left one thread.
            // (Only reductions: a slice or gather reads little of its largest input.)
            let computed = nest.domain.iter().product::<usize>().max(1);
            let read = k.params.iter().map(|p| p.len()).max().unwrap_or(0);
            let per_element = if nest.reduces() {
                (read / computed).max(1)
            } else {
                1
            };
            Launch::Loop {
                name: k.name.clone(),
                function: function_of[ki],
                args: args.clone(),
                extent: nest.outer_extent(),
                min_chunk: MIN_CHUNK_ELEMENTS.div_ceil(nest.inner_extent().max(1) * per_element),
            }
        };
        match &k.body {
            Body::Loop(nest) => launches.push(loop_launch(nest)),
            Body::Contraction {
                call,
                out,
                epilogue,
            } => {
                let p = |i: u32| args[i as usize];
                let pshape = |i: u32| k.params[i as usize].shape.clone();
                launches.push(match call {
                    Contraction::MatMul {
                        a,
                        b,
                        bias,
                        trans_a,
                        trans_b,
                        activation,
                    } => {
                        // Rank-1 operands are matrices of one row (a) or one column (b).
                        let mut a_shape = pshape(*a);
                        if a_shape.len() == 1 {
                            a_shape.insert(0, 1);
                        }
                        let mut b_shape = pshape(*b);
                        if b_shape.len() == 1 {
                            b_shape.push(1);
                        }
                        Launch::MatMul {
                            name: k.name.clone(),
                            a: p(*a),
                            b: p(*b),
                            bias: bias.map(p),
                            out: p(*out),
                            a_shape,
                            b_shape,
                            trans_a: *trans_a,
                            trans_b: *trans_b,
                            b_packed: packed.contains_key(&lk.args[*b as usize]),
                            activation: runtime_activation(*activation),
                        }
                    }
                    Contraction::Conv {
                        x,
                        w,
                        bias,
                        strides,
                        pads,
                        dilations,
                        group,
                        activation,
                    } => Launch::Conv {
                        name: k.name.clone(),
                        x: p(*x),
                        w: p(*w),
                        bias: bias.map(p),
                        out: p(*out),
                        geometry: ConvGeometry {
                            input: pshape(*x),
                            weight: pshape(*w),
                            strides: strides.clone(),
                            pads: pads.clone(),
                            dilations: dilations.clone(),
                            group: *group,
                            activation: runtime_activation(*activation),
                        }
                        .with_useful_strides(),
                    },
                    Contraction::Pool {
                        x,
                        kind,
                        kernel,
                        strides,
                        pads,
                    } => Launch::Pool {
                        name: k.name.clone(),
                        x: p(*x),
                        out: p(*out),
                        geometry: PoolGeometry {
                            mode: match kind {
                                PoolKind::Max => PoolMode::Max,
                                PoolKind::Avg => PoolMode::Avg,
                                PoolKind::AvgIncludePad => PoolMode::AvgIncludePad,
                            },
                            input: pshape(*x),
                            kernel: kernel.clone(),
                            strides: strides.clone(),
                            pads: pads.clone(),
                        }
                        .with_useful_strides(),
                    },
                    Contraction::Resize {
                        x,
                        sampling,
                        scales,
                        sizes,
                    } => Launch::Resize {
                        name: k.name.clone(),
                        x: p(*x),
                        out: p(*out),
                        geometry: resize_geometry(pshape(*x), sampling, scales, sizes),
                    },
                });
                if let Some(nest) = epilogue {
                    launches.push(loop_launch(nest));
                }
            }
        }
        debug_assert!(
            k.params
                .iter()
                .all(|p| p.role == Role::Input || p.role == Role::Output)
        );
        kernel_launches.push((first_launch, launches.len() - 1));
    }
    // Outputs: values that are inputs or constants are copied into a buffer of their own,
    // so that every output is written by the program.
    let mut outputs = Vec::new();
    // Each copy's destination buffer and its launch.
    let mut copies: Vec<(usize, usize)> = Vec::new();
    for (&v, name) in g.outputs.iter().zip(names.outputs) {
        let src = buffer(v, &mut buffers, &mut constants);
        let computed =
            !g.inputs.contains(&v) && !matches!(buffers[src].place, Place::Constant { .. });
        let buf = if computed {
            src
        } else {
            buffers.push(BufferSpec {
                name: format!("{name}.copy"),
                ..buffers[src].clone()
            });
            let dst = buffers.len() - 1;
            buffers[dst].place = Place::Arena { offset: 0 };
            copies.push((dst, launches.len()));
            launches.push(Launch::Copy {
                name: format!("copy_{name}"),
                src,
                dst,
            });
            dst
        };
        outputs.push(IoSpec {
            name: name.clone(),
            elem: elem(g, v),
            shape: shape(v),
            buffer: buf,
            index_bounds: Vec::new(),
        });
    }
    // Every buffer a view is part of exists, even one no launch names (a concatenation
    // written in place that only slices read).
    for &(whole, _) in layout.views.values() {
        buffer(whole, &mut buffers, &mut constants);
    }
    // The layout's lifetimes are over kernels; kernel k runs as launches
    // `kernel_launches[k]` (a contraction and its epilogue loop are two), and position
    // `kernels.len()` is the end of the run, where the output copies are.
    let end = launches.len();
    let launch_span = |k: usize| kernel_launches.get(k).copied().unwrap_or((end, end));
    let mut lives: Vec<(usize, BufferLife)> = Vec::new();
    for life in layout.lives(g, kernels) {
        let b = buffer_of[&life.value];
        if matches!(buffers[b].place, Place::Arena { .. }) {
            let (first, _) = launch_span(life.first);
            let (_, last) = launch_span(life.last);
            lives.push((
                b,
                BufferLife {
                    bytes: buffers[b].bytes(),
                    first,
                    last,
                },
            ));
        }
    }
    for &(b, launch) in &copies {
        lives.push((
            b,
            BufferLife {
                bytes: buffers[b].bytes(),
                first: launch,
                last: end,
            },
        ));
    }
    let plan = plan_arena(&lives.iter().map(|(_, l)| *l).collect::<Vec<_>>());
    // The arena is one allocation per run: it must fit the memory limit like any value.
    let limit = smelt_ir::limits::max_value_bytes();
    if plan.total_bytes as u64 > limit {
        return Err(SmeltError::Compile(format!(
            "the model's intermediate values need {} bytes at once, over the memory limit of {limit} bytes (SMELT_MEMORY_LIMIT)",
            plan.total_bytes
        )));
    }
    for (&(b, _), &offset) in lives.iter().zip(&plan.offsets) {
        buffers[b].place = Place::Arena { offset };
    }
    for (v, &(whole, offset)) in &layout.views {
        let Some(&b) = buffer_of.get(v) else { continue };
        let Place::Arena { offset: base } = buffers[buffer_of[&whole]].place else {
            unreachable!("views are of computed values, so in the arena")
        };
        buffers[b].place = Place::Arena {
            offset: base + offset,
        };
    }
    let blob = constants.into_blob(graph);
    Ok(Program {
        inputs,
        outputs,
        buffers,
        constants: smelt_runtime::program::Constants::Owned(blob),
        arena_bytes: plan.arena_bytes,
        intermediate_bytes: plan.total_bytes,
        launches,
        packed_filters: Default::default(),
    })
}

fn elem(g: &Graph, v: ValueId) -> ElemType {
    ElemType::from_name(g.ty(v).dtype.name()).expect("runtime and IR share dtype names")
}

/// The runtime's form of a resize call: the taps of the two innermost axes, as ONNX's
/// reference works them out (in f64), with f32 weights. An output index with fewer taps
/// than its axis' most (cubic sampling that excludes the outside, at the borders) is
/// padded with zero weights, which the kernel skips.
fn resize_geometry(
    input: Vec<usize>,
    sampling: &smelt_ir::Sampling,
    scales: &[f64],
    sizes: &[usize],
) -> ResizeGeometry {
    let axis = |a: usize| {
        let per_output: Vec<smelt_ir::Taps> = sampling
            .taps(smelt_ir::ResizeAxis {
                n_in: input[a],
                n_out: sizes[a],
                scale: scales[a],
                roi: (0.0, 1.0),
            })
            .into_iter()
            .map(|t| t.expect("crop-and-resize never becomes a resize call"))
            .collect();
        let taps = per_output.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut axis = AxisTaps {
            taps,
            index: Vec::with_capacity(taps * per_output.len()),
            weight: Vec::with_capacity(taps * per_output.len()),
        };
        for t in &per_output {
            let pad = taps - t.len();
            axis.index.extend(
                t.iter()
                    .map(|&(i, _)| i as u32)
                    .chain(std::iter::repeat_n(0, pad)),
            );
            axis.weight.extend(
                t.iter()
                    .map(|&(_, w)| w as f32)
                    .chain(std::iter::repeat_n(0.0, pad)),
            );
        }
        axis
    };
    let r = input.len();
    let (rows, cols) = (axis(r - 2), axis(r - 1));
    ResizeGeometry { input, rows, cols }
}

/// The runtime's form of an activation folded into a call.
fn runtime_activation(a: FoldedActivation) -> Activation {
    match a {
        FoldedActivation::None => Activation::None,
        FoldedActivation::Relu => Activation::Relu,
        FoldedActivation::Silu => Activation::Silu,
        FoldedActivation::Gelu => Activation::Gelu,
        FoldedActivation::Clip { low, high } => Activation::Clip { low, high },
    }
}
