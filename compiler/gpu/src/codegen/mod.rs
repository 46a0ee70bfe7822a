//! Kernel IR loop nests to LLVM IR: one logical thread per domain element, walked by a
//! grid-stride loop, with the scalar DAG's semantics exactly as the CPU back end has them
//! (integers in i64 wrapped to their type after each op, halves computed in f32 and
//! rounded after each op, clamped loads, total integer division).

use crate::GpuError;
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::types::{BasicMetadataTypeEnum, BasicType, BasicTypeEnum};
use inkwell::values::{
    BasicMetadataValueEnum, BasicValue, BasicValueEnum, FloatValue, FunctionValue, IntValue,
    PhiValue, PointerValue,
};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate};
use smelt_fuse::kernel::{Body, Combine, Const, Expr, ExprId, Kernel, LoopNest, Variable};
use smelt_ir::{BinaryOp, DType, UnaryOp};
use std::collections::{HashMap, HashSet};

mod memory;
mod ops;
mod reduce;
mod tile;

use tile::*;

/// Which machine the function is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// A PTX kernel: buffer pointers in the global address space as parameters, the
    /// thread's position from the special registers, math from libdevice.
    Nvptx,
    /// The same loop for the host CPU, to emulate launches: `(args: ptr to the buffer
    /// pointers, first: i64, stride: i64)`, math and f16 conversions from the runtime's
    /// helpers (`smelt_runtime::mathfns`).
    Host,
}

/// The register type a dtype computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reg {
    F32,
    F64,
    Bool,
    I64,
}

fn reg(d: DType) -> Reg {
    match d {
        DType::F32 | DType::F16 | DType::BF16 => Reg::F32,
        DType::F64 => Reg::F64,
        DType::Bool => Reg::Bool,
        _ => Reg::I64,
    }
}

/// The name of a math function of libdevice (`Nvptx`) or of the runtime's helpers
/// (`Host`, which the emulator maps to their addresses).
fn math_symbol(base: &str, f64: bool, flavor: Flavor) -> String {
    match flavor {
        Flavor::Nvptx => format!("__nv_{base}{}", if f64 { "" } else { "f" }),
        Flavor::Host => format!("smelt_rt_{base}_{}", if f64 { "f64" } else { "f32" }),
    }
}

fn unary_math(op: UnaryOp) -> Option<&'static str> {
    Some(match op {
        UnaryOp::Exp => "exp",
        UnaryOp::Log => "log",
        UnaryOp::Sin => "sin",
        UnaryOp::Cos => "cos",
        UnaryOp::Tan => "tan",
        UnaryOp::Asin => "asin",
        UnaryOp::Acos => "acos",
        UnaryOp::Atan => "atan",
        UnaryOp::Sinh => "sinh",
        UnaryOp::Cosh => "cosh",
        UnaryOp::Asinh => "asinh",
        UnaryOp::Acosh => "acosh",
        UnaryOp::Atanh => "atanh",
        UnaryOp::Tanh => "tanh",
        UnaryOp::Erf => "erf",
        _ => return None,
    })
}

/// Emits `kernel` (a loop nest) as function `symbol` of `module`; returns the number of
/// logical threads it runs over (its domain's element count).
pub fn emit_kernel<'ctx>(
    ctx: &'ctx Context,
    module: &Module<'ctx>,
    kernel: &Kernel,
    symbol: &str,
    flavor: Flavor,
) -> Result<u64, GpuError> {
    let nest = match &kernel.body {
        Body::Loop(nest) => nest,
        Body::Contraction { .. } => {
            return Err(GpuError::Unsupported {
                kernel: kernel.name.clone(),
                reason: "runtime contraction calls are CPU kernels; lower for the GPU target (every group a loop)".into(),
            });
        }
    };
    let i64t = ctx.i64_type();
    let global = ctx.ptr_type(match flavor {
        Flavor::Nvptx => AddressSpace::from(1u16),
        Flavor::Host => AddressSpace::default(),
    });
    let fn_type = match flavor {
        Flavor::Nvptx => {
            let params: Vec<BasicMetadataTypeEnum> =
                kernel.params.iter().map(|_| global.into()).collect();
            ctx.void_type().fn_type(&params, false)
        }
        Flavor::Host => ctx.void_type().fn_type(
            &[
                ctx.ptr_type(AddressSpace::default()).into(),
                i64t.into(),
                i64t.into(),
            ],
            false,
        ),
    };
    let func = module.add_function(symbol, fn_type, Some(Linkage::External));
    let b = ctx.create_builder();
    let entry = ctx.append_basic_block(func, "entry");
    b.position_at_end(entry);
    let (params, first, stride): (Vec<PointerValue>, IntValue, IntValue) = match flavor {
        Flavor::Nvptx => {
            let params = (0..kernel.params.len())
                .map(|i| {
                    let p = func
                        .get_nth_param(i as u32)
                        .expect("declared")
                        .into_pointer_value();
                    p.set_name(&format!("p{i}"));
                    p
                })
                .collect();
            let sreg = |name: &str| -> Result<IntValue, GpuError> {
                let f = declare(module, name, ctx.i32_type().into(), &[]);
                let v = b
                    .build_call(f, &[], "")
                    .map_err(llvm)?
                    .try_as_basic_value()
                    .unwrap_basic()
                    .into_int_value();
                b.build_int_z_extend(v, i64t, "").map_err(llvm)
            };
            let tid = sreg("llvm.nvvm.read.ptx.sreg.tid.x")?;
            let ctaid = sreg("llvm.nvvm.read.ptx.sreg.ctaid.x")?;
            let ntid = sreg("llvm.nvvm.read.ptx.sreg.ntid.x")?;
            let nctaid = sreg("llvm.nvvm.read.ptx.sreg.nctaid.x")?;
            let base = b.build_int_mul(ctaid, ntid, "").map_err(llvm)?;
            let first = b.build_int_add(base, tid, "first").map_err(llvm)?;
            let stride = b.build_int_mul(nctaid, ntid, "stride").map_err(llvm)?;
            (params, first, stride)
        }
        Flavor::Host => {
            let args = func
                .get_nth_param(0)
                .expect("declared")
                .into_pointer_value();
            let ptr = ctx.ptr_type(AddressSpace::default());
            let mut params = Vec::new();
            for i in 0..kernel.params.len() {
                let slot = unsafe {
                    b.build_in_bounds_gep(ptr, args, &[i64t.const_int(i as u64, false)], "")
                }
                .map_err(llvm)?;
                let p = b.build_load(ptr, slot, &format!("p{i}")).map_err(llvm)?;
                params.push(p.into_pointer_value());
            }
            let first = func.get_nth_param(1).expect("declared").into_int_value();
            let stride = func.get_nth_param(2).expect("declared").into_int_value();
            (params, first, stride)
        }
    };
    // A product computes a TILE x TILE block of outputs per thread (see `Product`);
    // anything else one element per thread.
    let tiled = tiled_product(nest);
    let rank = nest.domain.len();
    let mut axes: Vec<u64> = nest.domain.iter().map(|&d| d as u64).collect();
    if let Some(p) = tiled {
        axes[p.rows] = axes[p.rows].div_ceil(TILE as u64);
        axes[p.cols] = axes[p.cols].div_ceil(TILE as u64);
    }
    let total: u64 = axes.iter().product();
    let head = ctx.append_basic_block(func, "elements");
    let body = ctx.append_basic_block(func, "element");
    let exit = ctx.append_basic_block(func, "done");
    b.build_unconditional_branch(head).map_err(llvm)?;
    b.position_at_end(head);
    let i = b.build_phi(i64t, "i").map_err(llvm)?;
    i.add_incoming(&[(&first, entry)]);
    let iv = i.as_basic_value().into_int_value();
    let more = b
        .build_int_compare(IntPredicate::ULT, iv, i64t.const_int(total, false), "")
        .map_err(llvm)?;
    b.build_conditional_branch(more, body, exit).map_err(llvm)?;
    b.position_at_end(body);
    // The thread's coordinates (of its element, or of its tile), innermost axis
    // fastest: in 32 bits when they fit, as 64-bit division is several times slower on
    // the GPU.
    let narrow = total <= i32::MAX as u64;
    let index_type = if narrow { ctx.i32_type() } else { i64t };
    let mut rest = if narrow {
        b.build_int_truncate(iv, index_type, "").map_err(llvm)?
    } else {
        iv
    };
    let mut vars = vec![i64t.const_zero(); rank];
    for k in (0..rank).rev() {
        let d = index_type.const_int(axes[k], false);
        let coordinate = if k == 0 {
            rest
        } else {
            let c = b.build_int_unsigned_rem(rest, d, "").map_err(llvm)?;
            rest = b.build_int_unsigned_div(rest, d, "").map_err(llvm)?;
            c
        };
        vars[k] = if narrow {
            b.build_int_z_extend(coordinate, i64t, "").map_err(llvm)?
        } else {
            coordinate
        };
    }
    let mut em = Emitter {
        ctx,
        module,
        b: &b,
        flavor,
        kernel,
        nest,
        func,
        params,
        vars,
        values: vec![None; nest.nodes.len()],
        set_log: Vec::new(),
        rvars: HashMap::new(),
        free: free_rvars(nest),
        ranges: nest.index_ranges(),
    };
    match tiled {
        Some(product) => em.tiled_product(product)?,
        None => {
            for s in &nest.stores {
                em.ensure(s.index)?;
                em.ensure(s.value)?;
            }
            for s in &nest.stores {
                em.store(s.param, s.index, s.value)?;
            }
        }
    }
    let latch = b.get_insert_block().expect("positioned");
    let next = b.build_int_add(iv, stride, "next").map_err(llvm)?;
    i.add_incoming(&[(&next, latch)]);
    b.build_unconditional_branch(head).map_err(llvm)?;
    b.position_at_end(exit);
    b.build_return(None).map_err(llvm)?;
    if flavor == Flavor::Nvptx {
        let md = ctx.metadata_node(&[
            func.as_global_value().as_pointer_value().into(),
            ctx.metadata_string("kernel").into(),
            ctx.i32_type().const_int(1, false).into(),
        ]);
        module
            .add_global_metadata("nvvm.annotations", &md)
            .map_err(|e| GpuError::Llvm(e.to_string()))?;
    }
    Ok(total)
}

/// The function `name` of `module`, declared if it is not there yet.
fn declare<'ctx>(
    module: &Module<'ctx>,
    name: &str,
    ret: BasicTypeEnum<'ctx>,
    params: &[BasicMetadataTypeEnum<'ctx>],
) -> FunctionValue<'ctx> {
    module
        .get_function(name)
        .unwrap_or_else(|| module.add_function(name, ret.fn_type(params, false), None))
}

/// For every expression, the reduction variables it uses that no reduction inside it binds.
fn free_rvars(nest: &LoopNest) -> Vec<Vec<u32>> {
    let mut free: Vec<Vec<u32>> = Vec::with_capacity(nest.nodes.len());
    for (i, n) in nest.nodes.iter().enumerate() {
        let mut f: Vec<u32> = nest
            .operands(i as ExprId)
            .iter()
            .flat_map(|&o| free[o as usize].clone())
            .collect();
        match n.expr {
            Expr::RVar(v) => f.push(v),
            Expr::Reduce { var, .. } => f.retain(|&v| v != var),
            _ => {}
        }
        f.sort_unstable();
        f.dedup();
        free.push(f);
    }
    free
}

struct Emitter<'a, 'ctx> {
    ctx: &'ctx Context,
    module: &'a Module<'ctx>,
    b: &'a Builder<'ctx>,
    flavor: Flavor,
    kernel: &'a Kernel,
    nest: &'a LoopNest,
    func: FunctionValue<'ctx>,
    params: Vec<PointerValue<'ctx>>,
    vars: Vec<IntValue<'ctx>>,
    /// The value of every expression computed in the current scope.
    values: Vec<Option<BasicValueEnum<'ctx>>>,
    /// Expressions given values, in order, so a reduction's loop can forget its own.
    set_log: Vec<ExprId>,
    rvars: HashMap<u32, IntValue<'ctx>>,
    free: Vec<Vec<u32>>,
    ranges: Vec<Option<(i64, i64)>>,
}

type R<T> = Result<T, GpuError>;

fn llvm(e: inkwell::builder::BuilderError) -> GpuError {
    GpuError::Llvm(e.to_string())
}

impl<'ctx> Emitter<'_, 'ctx> {
    pub(super) fn set(&mut self, e: ExprId, v: BasicValueEnum<'ctx>) {
        self.values[e as usize] = Some(v);
        self.set_log.push(e);
    }

    pub(super) fn value(&self, e: ExprId) -> BasicValueEnum<'ctx> {
        self.values[e as usize].expect("operands are emitted first")
    }

    pub(super) fn int(&self, e: ExprId) -> IntValue<'ctx> {
        self.value(e).into_int_value()
    }

    pub(super) fn reg_type(&self, r: Reg) -> BasicTypeEnum<'ctx> {
        match r {
            Reg::F32 => self.ctx.f32_type().into(),
            Reg::F64 => self.ctx.f64_type().into(),
            Reg::Bool => self.ctx.bool_type().into(),
            Reg::I64 => self.ctx.i64_type().into(),
        }
    }

    /// Computes `e` (and whatever it needs that is not computed yet) in the current
    /// scope. Iterative over the cone, so deep expression chains use no stack; a
    /// reduction's body is left to its loop.
    pub(super) fn ensure(&mut self, e: ExprId) -> R<BasicValueEnum<'ctx>> {
        if let Some(v) = self.values[e as usize] {
            return Ok(v);
        }
        for x in self.uncomputed_cone(e) {
            let v = self.emit(x)?;
            self.set(x, v);
        }
        Ok(self.value(e))
    }

    /// What `e` needs that has no value in the current scope (`e` included), in
    /// evaluation order; a reduction's body is not entered (its loop computes it).
    pub(super) fn uncomputed_cone(&self, e: ExprId) -> Vec<ExprId> {
        let mut cone = Vec::new();
        let mut seen = HashSet::new();
        let mut stack = vec![e];
        while let Some(x) = stack.pop() {
            if self.values[x as usize].is_some() || !seen.insert(x) {
                continue;
            }
            cone.push(x);
            if !matches!(self.nest.node(x).expr, Expr::Reduce { .. }) {
                stack.extend(self.nest.operands(x));
            }
        }
        cone.sort_unstable();
        cone
    }

    pub(super) fn emit(&mut self, e: ExprId) -> R<BasicValueEnum<'ctx>> {
        let node = *self.nest.node(e);
        let dtype = node.dtype;
        let b = self.b;
        Ok(match node.expr {
            Expr::Var(k) => self.vars[k as usize].into(),
            Expr::RVar(v) => self.rvars[&v].into(),
            Expr::Const(c) => self.constant(c, dtype),
            Expr::Load { param, index } => self.load(param, index)?,
            Expr::Unary(op, a) => self.unary(op, self.nest.node(a).dtype, self.value(a))?,
            Expr::Binary(op, a, c) => self.binary(
                op,
                self.nest.node(a).dtype,
                dtype,
                self.value(a),
                self.value(c),
            )?,
            Expr::Select(c, a, d) => b
                .build_select(self.int(c), self.value(a), self.value(d), "")
                .map_err(llvm)?,
            Expr::Cast(a) => self.cast(self.value(a), self.nest.node(a).dtype, dtype)?,
            Expr::Reduce { .. } => self.reduce(e)?,
        })
    }

    pub(super) fn constant(&self, c: Const, dtype: DType) -> BasicValueEnum<'ctx> {
        match reg(dtype) {
            Reg::F32 => self
                .ctx
                .f32_type()
                .const_float(c.as_f64() as f32 as f64)
                .into(),
            Reg::F64 => self.ctx.f64_type().const_float(c.as_f64()).into(),
            Reg::Bool => self
                .ctx
                .bool_type()
                .const_int(u64::from(c.as_i64() != 0), false)
                .into(),
            Reg::I64 => self
                .ctx
                .i64_type()
                .const_int(c.as_i64() as u64, true)
                .into(),
        }
    }

    pub(super) fn call(
        &self,
        name: &str,
        ret: BasicTypeEnum<'ctx>,
        args: &[BasicValueEnum<'ctx>],
    ) -> R<BasicValueEnum<'ctx>> {
        let types: Vec<BasicMetadataTypeEnum> = args.iter().map(|a| a.get_type().into()).collect();
        let f = declare(self.module, name, ret, &types);
        let args: Vec<BasicMetadataValueEnum> = args.iter().map(|&a| a.into()).collect();
        Ok(self
            .b
            .build_call(f, &args, "")
            .map_err(llvm)?
            .try_as_basic_value()
            .unwrap_basic())
    }

    /// An LLVM intrinsic overloaded on its operands' type (`llvm.fabs.f32`, ...).
    pub(super) fn intrinsic(
        &self,
        base: &str,
        args: &[BasicValueEnum<'ctx>],
    ) -> R<BasicValueEnum<'ctx>> {
        let ty = args[0].get_type();
        let suffix = match ty {
            BasicTypeEnum::FloatType(f) if f == self.ctx.f64_type() => "f64",
            BasicTypeEnum::FloatType(_) => "f32",
            BasicTypeEnum::IntType(i) => match i.get_bit_width() {
                1 => "i1",
                _ => "i64",
            },
            _ => unreachable!("intrinsics of scalars only"),
        };
        self.call(&format!("llvm.{base}.{suffix}"), ty, args)
    }

    pub(super) fn fconst(&self, like: FloatValue<'ctx>, v: f64) -> FloatValue<'ctx> {
        like.get_type().const_float(v)
    }
}

fn int_predicate(op: BinaryOp, unsigned: bool) -> IntPredicate {
    match (op, unsigned) {
        (BinaryOp::Equal, _) => IntPredicate::EQ,
        (BinaryOp::Less, false) => IntPredicate::SLT,
        (BinaryOp::LessEqual, false) => IntPredicate::SLE,
        (BinaryOp::Greater, false) => IntPredicate::SGT,
        (BinaryOp::GreaterEqual, false) => IntPredicate::SGE,
        (BinaryOp::Less, true) => IntPredicate::ULT,
        (BinaryOp::LessEqual, true) => IntPredicate::ULE,
        (BinaryOp::Greater, true) => IntPredicate::UGT,
        _ => IntPredicate::UGE,
    }
}
