//! The serialized form of a `Program` (without its code and constants): a protobuf
//! message, so that a deployed runtime loads what the compiler wrote.

use crate::kernels::{Activation, AxisTaps, ConvGeometry, PoolGeometry, PoolMode, ResizeGeometry};
use crate::program::{BufferSpec, Constants, IoSpec, Launch, Place, Program};
use crate::tensor::ElemType;
use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct ManifestProto {
    #[prost(string, tag = "1")]
    pub model_name: String,
    #[prost(message, repeated, tag = "2")]
    pub inputs: Vec<IoProto>,
    #[prost(message, repeated, tag = "3")]
    pub outputs: Vec<IoProto>,
    #[prost(message, repeated, tag = "4")]
    pub buffers: Vec<BufferProto>,
    #[prost(uint64, tag = "5")]
    pub arena_bytes: u64,
    #[prost(uint64, tag = "6")]
    pub intermediate_bytes: u64,
    #[prost(message, repeated, tag = "7")]
    pub launches: Vec<LaunchProto>,
    #[prost(uint64, tag = "8")]
    pub constants_bytes: u64,
    /// The CPU features the code needs, e.g. `x86-64-v3`, and their cpuid names.
    #[prost(string, tag = "9")]
    pub cpu: String,
    #[prost(string, repeated, tag = "10")]
    pub cpu_features: Vec<String>,
    #[prost(string, tag = "11")]
    pub smelt_version: String,
    /// Default thread count (0: every available core).
    #[prost(uint32, tag = "12")]
    pub threads: u32,
    /// For a model compiled for an NVIDIA GPU: its PTX module and kernels (the launches'
    /// functions index `symbols`).
    #[prost(message, optional, tag = "13")]
    pub gpu: Option<GpuProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct GpuProto {
    /// The architecture the PTX is for, e.g. `sm_90`.
    #[prost(string, tag = "1")]
    pub arch: String,
    #[prost(string, tag = "2")]
    pub ptx: String,
    /// Entry symbol of every function.
    #[prost(string, repeated, tag = "3")]
    pub symbols: Vec<String>,
    /// Logical threads of every function.
    #[prost(uint64, repeated, tag = "4")]
    pub threads: Vec<u64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct IoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub elem: String,
    #[prost(uint64, repeated, tag = "3")]
    pub shape: Vec<u64>,
    #[prost(uint64, tag = "4")]
    pub buffer: u64,
    /// `[index_lo[i], index_hi[i])` for the elements at innermost positions `i` modulo
    /// their count, when the input holds indices (`IoSpec::index_bounds`; equal lengths).
    #[prost(int64, repeated, tag = "5")]
    pub index_lo: Vec<i64>,
    #[prost(int64, repeated, tag = "6")]
    pub index_hi: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct BufferProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub elem: String,
    #[prost(uint64, repeated, tag = "3")]
    pub shape: Vec<u64>,
    #[prost(bool, tag = "4")]
    pub constant: bool,
    #[prost(uint64, tag = "5")]
    pub offset: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct LaunchProto {
    /// 0 loop, 1 matmul, 2 conv, 3 copy, 4 pool, 5 resize.
    #[prost(uint32, tag = "1")]
    pub kind: u32,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(uint64, tag = "3")]
    pub function: u64,
    /// Loop: the kernel's buffers. MatMul: a, b, out[, bias]. Conv: x, w, out[, bias].
    /// Copy: src, dst. Pool: x, out (input shape in `a_shape`, kernel in `b_shape`).
    /// Resize: x, out (input shape in `a_shape`, taps per row and column in `b_shape`).
    #[prost(uint64, repeated, tag = "4")]
    pub args: Vec<u64>,
    #[prost(uint64, tag = "5")]
    pub extent: u64,
    #[prost(uint64, tag = "6")]
    pub min_chunk: u64,
    #[prost(uint64, repeated, tag = "7")]
    pub a_shape: Vec<u64>,
    #[prost(uint64, repeated, tag = "8")]
    pub b_shape: Vec<u64>,
    #[prost(bool, tag = "9")]
    pub trans_a: bool,
    #[prost(bool, tag = "10")]
    pub trans_b: bool,
    #[prost(uint64, repeated, tag = "11")]
    pub strides: Vec<u64>,
    #[prost(uint64, repeated, tag = "12")]
    pub pads: Vec<u64>,
    #[prost(uint64, repeated, tag = "13")]
    pub dilations: Vec<u64>,
    #[prost(uint64, tag = "14")]
    pub group: u64,
    /// Pool: `PoolMode::code`.
    #[prost(uint32, tag = "15")]
    pub pool_mode: u32,
    /// Conv: a ReLU folded into the stores (also written as `activation` 1).
    #[prost(bool, tag = "16")]
    pub relu: bool,
    /// MatMul: `b` is the weight packed into column panels.
    #[prost(bool, tag = "17")]
    pub b_packed: bool,
    /// Resize: the row taps' input indices, then the column taps'.
    #[prost(uint32, repeated, tag = "18")]
    pub tap_index: Vec<u32>,
    /// Resize: the weights of `tap_index`.
    #[prost(float, repeated, tag = "19")]
    pub tap_weight: Vec<f32>,
    /// Resize: output rows (the output's columns follow from the rest).
    #[prost(uint64, tag = "20")]
    pub out_rows: u64,
    /// Conv and MatMul: `Activation::code` of the folded activation (for a Conv, 0 with
    /// `relu` set is a ReLU).
    #[prost(uint32, tag = "21")]
    pub activation: u32,
    /// Conv and MatMul: the folded Clip's low and high bounds (`activation` 4).
    #[prost(float, repeated, tag = "22")]
    pub clip_bounds: Vec<f32>,
}

fn u64s(v: &[usize]) -> Vec<u64> {
    v.iter().map(|&x| x as u64).collect()
}

fn usizes(v: &[u64]) -> Vec<usize> {
    v.iter().map(|&x| x as usize).collect()
}

impl Program {
    /// The manifest of this program, with the deployment facts the runtime reports.
    pub fn manifest(
        &self,
        model_name: &str,
        cpu: &str,
        cpu_features: &[String],
        threads: u32,
    ) -> ManifestProto {
        let io = |s: &IoSpec| IoProto {
            name: s.name.clone(),
            elem: s.elem.name().to_string(),
            shape: u64s(&s.shape),
            buffer: s.buffer as u64,
            index_lo: s.index_bounds.iter().map(|r| r.0).collect(),
            index_hi: s.index_bounds.iter().map(|r| r.1).collect(),
        };
        ManifestProto {
            model_name: model_name.to_string(),
            inputs: self.inputs.iter().map(io).collect(),
            outputs: self.outputs.iter().map(io).collect(),
            buffers: self
                .buffers
                .iter()
                .map(|b| {
                    let (constant, offset) = match b.place {
                        Place::Arena { offset } => (false, offset),
                        Place::Constant { offset } => (true, offset),
                    };
                    BufferProto {
                        name: b.name.clone(),
                        elem: b.elem.name().to_string(),
                        shape: u64s(&b.shape),
                        constant,
                        offset: offset as u64,
                    }
                })
                .collect(),
            arena_bytes: self.arena_bytes as u64,
            intermediate_bytes: self.intermediate_bytes as u64,
            launches: self.launches.iter().map(launch_proto).collect(),
            constants_bytes: self.constants.as_slice().len() as u64,
            cpu: cpu.to_string(),
            cpu_features: cpu_features.to_vec(),
            smelt_version: env!("CARGO_PKG_VERSION").to_string(),
            threads,
            gpu: None,
        }
    }

    /// Rebuilds a program from its manifest and its (linked) constants.
    pub fn from_manifest(m: &ManifestProto, constants: Constants) -> Result<Program, String> {
        let elem =
            |s: &str| ElemType::from_name(s).ok_or_else(|| format!("unknown element type {s}"));
        let nbuf = m.buffers.len();
        let buf = |b: u64| {
            let b = b as usize;
            if b < nbuf {
                Ok(b)
            } else {
                Err(format!("buffer {b} out of range"))
            }
        };
        let io = |p: &IoProto| -> Result<IoSpec, String> {
            Ok(IoSpec {
                name: p.name.clone(),
                elem: elem(&p.elem)?,
                shape: usizes(&p.shape),
                buffer: buf(p.buffer)?,
                index_bounds: if p.index_lo.len() == p.index_hi.len() {
                    p.index_lo
                        .iter()
                        .copied()
                        .zip(p.index_hi.iter().copied())
                        .collect()
                } else {
                    return Err(format!(
                        "input '{}' has {} lower and {} upper index bounds",
                        p.name,
                        p.index_lo.len(),
                        p.index_hi.len()
                    ));
                },
            })
        };
        let buffers = m
            .buffers
            .iter()
            .map(|b| {
                Ok(BufferSpec {
                    name: b.name.clone(),
                    elem: elem(&b.elem)?,
                    shape: usizes(&b.shape),
                    place: if b.constant {
                        Place::Constant {
                            offset: b.offset as usize,
                        }
                    } else {
                        Place::Arena {
                            offset: b.offset as usize,
                        }
                    },
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        // Every buffer must fit its region, so the executor's pointer arithmetic is sound.
        for b in &buffers {
            let (offset, limit) = match b.place {
                Place::Arena { offset } => (offset, m.arena_bytes as usize),
                Place::Constant { offset } => (offset, constants.as_slice().len()),
            };
            if offset.checked_add(b.bytes()).is_none_or(|end| end > limit) {
                return Err(format!("buffer {} does not fit its region", b.name));
            }
        }
        let launches = m
            .launches
            .iter()
            .map(|l| launch_from(l, nbuf))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Program {
            inputs: m.inputs.iter().map(io).collect::<Result<_, _>>()?,
            outputs: m.outputs.iter().map(io).collect::<Result<_, _>>()?,
            buffers,
            constants,
            arena_bytes: m.arena_bytes as usize,
            intermediate_bytes: m.intermediate_bytes as usize,
            launches,
            packed_filters: Default::default(),
        })
    }
}

impl ManifestProto {
    pub fn encode_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    pub fn decode_bytes(bytes: &[u8]) -> Result<ManifestProto, String> {
        ManifestProto::decode(bytes).map_err(|e| format!("bad manifest: {e}"))
    }
}

fn launch_proto(l: &Launch) -> LaunchProto {
    let mut p = LaunchProto {
        name: l.name().to_string(),
        ..Default::default()
    };
    match l {
        Launch::Loop {
            function,
            args,
            extent,
            min_chunk,
            ..
        } => {
            p.kind = 0;
            p.function = *function as u64;
            p.args = u64s(args);
            p.extent = *extent as u64;
            p.min_chunk = *min_chunk as u64;
        }
        Launch::MatMul {
            a,
            b,
            bias,
            out,
            a_shape,
            b_shape,
            trans_a,
            trans_b,
            b_packed,
            activation,
            ..
        } => {
            p.kind = 1;
            p.b_packed = *b_packed;
            p.args = [Some(*a), Some(*b), Some(*out), *bias]
                .into_iter()
                .flatten()
                .map(|x| x as u64)
                .collect();
            p.a_shape = u64s(a_shape);
            p.b_shape = u64s(b_shape);
            p.trans_a = *trans_a;
            p.trans_b = *trans_b;
            p.activation = activation.code();
            p.clip_bounds = activation.clip_bounds();
        }
        Launch::Conv {
            x,
            w,
            bias,
            out,
            geometry,
            ..
        } => {
            p.kind = 2;
            p.args = [Some(*x), Some(*w), Some(*out), *bias]
                .into_iter()
                .flatten()
                .map(|x| x as u64)
                .collect();
            p.a_shape = u64s(&geometry.input);
            p.b_shape = u64s(&geometry.weight);
            p.strides = u64s(&geometry.strides);
            p.pads = u64s(&geometry.pads);
            p.dilations = u64s(&geometry.dilations);
            p.group = geometry.group as u64;
            p.relu = geometry.activation == Activation::Relu;
            p.activation = geometry.activation.code();
            p.clip_bounds = geometry.activation.clip_bounds();
        }
        Launch::Copy { src, dst, .. } => {
            p.kind = 3;
            p.args = vec![*src as u64, *dst as u64];
        }
        Launch::Pool {
            x, out, geometry, ..
        } => {
            p.kind = 4;
            p.args = vec![*x as u64, *out as u64];
            p.a_shape = u64s(&geometry.input);
            p.b_shape = u64s(&geometry.kernel);
            p.strides = u64s(&geometry.strides);
            p.pads = u64s(&geometry.pads);
            p.pool_mode = geometry.mode.code();
        }
        Launch::Resize {
            x, out, geometry, ..
        } => {
            p.kind = 5;
            p.args = vec![*x as u64, *out as u64];
            p.a_shape = u64s(&geometry.input);
            let (rows, cols) = (&geometry.rows, &geometry.cols);
            p.b_shape = u64s(&[rows.taps, cols.taps]);
            p.out_rows = rows.len() as u64;
            p.tap_index = [&rows.index[..], &cols.index[..]].concat();
            p.tap_weight = [&rows.weight[..], &cols.weight[..]].concat();
        }
    }
    p
}

fn launch_from(p: &LaunchProto, nbuf: usize) -> Result<Launch, String> {
    let args: Vec<usize> = usizes(&p.args);
    if let Some(&b) = args.iter().find(|&&b| b >= nbuf) {
        return Err(format!("launch {}: buffer {b} out of range", p.name));
    }
    let need = |n: usize| {
        if args.len() >= n {
            Ok(())
        } else {
            Err(format!(
                "launch {}: {} buffers, expected {n}",
                p.name,
                args.len()
            ))
        }
    };
    let name = p.name.clone();
    Ok(match p.kind {
        0 => Launch::Loop {
            name,
            function: p.function as usize,
            args,
            extent: p.extent as usize,
            min_chunk: p.min_chunk as usize,
        },
        1 => {
            need(3)?;
            Launch::MatMul {
                name,
                a: args[0],
                b: args[1],
                out: args[2],
                bias: args.get(3).copied(),
                a_shape: usizes(&p.a_shape),
                b_shape: usizes(&p.b_shape),
                trans_a: p.trans_a,
                trans_b: p.trans_b,
                b_packed: p.b_packed,
                activation: Activation::decode(p.activation, &p.clip_bounds).ok_or_else(|| {
                    format!(
                        "launch {}: unknown activation {} (bounds {:?})",
                        p.name, p.activation, p.clip_bounds
                    )
                })?,
            }
        }
        2 => {
            need(3)?;
            Launch::Conv {
                name,
                x: args[0],
                w: args[1],
                out: args[2],
                bias: args.get(3).copied(),
                geometry: ConvGeometry {
                    input: usizes(&p.a_shape),
                    weight: usizes(&p.b_shape),
                    strides: usizes(&p.strides),
                    pads: usizes(&p.pads),
                    dilations: usizes(&p.dilations),
                    group: p.group as usize,
                    activation: match Activation::decode(p.activation, &p.clip_bounds) {
                        Some(Activation::None) if p.relu => Activation::Relu,
                        Some(a) => a,
                        None => {
                            return Err(format!(
                                "launch {}: unknown activation {} (bounds {:?})",
                                p.name, p.activation, p.clip_bounds
                            ));
                        }
                    },
                },
            }
        }
        3 => {
            need(2)?;
            Launch::Copy {
                name,
                src: args[0],
                dst: args[1],
            }
        }
        4 => {
            need(2)?;
            let geometry = PoolGeometry {
                mode: PoolMode::from_code(p.pool_mode).ok_or_else(|| {
                    format!("launch {}: unknown pool mode {}", p.name, p.pool_mode)
                })?,
                input: usizes(&p.a_shape),
                kernel: usizes(&p.b_shape),
                strides: usizes(&p.strides),
                pads: usizes(&p.pads),
            };
            geometry
                .out_spatial()
                .map_err(|e| format!("launch {}: {e}", p.name))?;
            Launch::Pool {
                name,
                x: args[0],
                out: args[1],
                geometry,
            }
        }
        5 => {
            need(2)?;
            let bad = || format!("launch {}: malformed resize taps", p.name);
            let [row_taps, col_taps] = usizes(&p.b_shape)[..] else {
                return Err(bad());
            };
            let split = row_taps
                .checked_mul(p.out_rows as usize)
                .filter(|&n| n <= p.tap_index.len() && p.tap_weight.len() == p.tap_index.len())
                .ok_or_else(bad)?;
            let axis = |taps: usize, r: std::ops::Range<usize>| AxisTaps {
                taps,
                index: p.tap_index[r.clone()].to_vec(),
                weight: p.tap_weight[r].to_vec(),
            };
            let geometry = ResizeGeometry {
                input: usizes(&p.a_shape),
                rows: axis(row_taps, 0..split),
                cols: axis(col_taps, split..p.tap_index.len()),
            };
            geometry
                .output()
                .map_err(|e| format!("launch {}: {e}", p.name))?;
            Launch::Resize {
                name,
                x: args[0],
                out: args[1],
                geometry,
            }
        }
        k => return Err(format!("launch {}: unknown kind {k}", p.name)),
    })
}
