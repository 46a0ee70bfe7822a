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

/// Outputs per thread along each of a matrix product's two innermost axes.
const TILE: usize = 4;

/// A loop nest whose one store is a function of one float sum over `k` of products of
/// two factors, `a` not varying with domain axis `cols` and `b` not with axis `rows`: a
/// matrix product (rows and columns its last two axes), or a convolution (filters and
/// output columns). A thread computing a `TILE x TILE` block of outputs over those two
/// axes loads each `a` and `b` element once per `k` for the whole block.
#[derive(Debug, Clone, Copy)]
struct Product {
    reduce: ExprId,
    a: ExprId,
    b: ExprId,
    /// Where the term is the product (0 elsewhere), and which axis it varies with.
    mask: Option<(ExprId, Along)>,
    rows: usize,
    cols: usize,
}

/// The tile axis a factor or mask varies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Along {
    Rows,
    Columns,
}

/// The product `nest` computes, where it is one (see [`Product`]); the columns are the
/// innermost axis where possible, so neighbouring threads read neighbouring `b`s.
fn tiled_product(nest: &LoopNest) -> Option<Product> {
    let rank = nest.domain.len();
    if rank < 2 {
        return None;
    }
    if nest.stores.len() != 1 {
        return None;
    }
    let live = nest.live();
    let mut reductions = (0..nest.nodes.len())
        .filter(|&e| live[e] && matches!(nest.nodes[e].expr, Expr::Reduce { .. }));
    let reduce = reductions.next()? as ExprId;
    if reductions.next().is_some() {
        return None;
    }
    let node = nest.node(reduce);
    let Expr::Reduce {
        combine: Combine::Sum,
        extent,
        body,
        ..
    } = node.expr
    else {
        return None;
    };
    if extent == 0 || !matches!(node.dtype, DType::F32 | DType::F64) {
        return None;
    }
    // The product, or the product where a condition holds and 0 elsewhere (a padded
    // convolution's border).
    let (product, mask) = match nest.node(body).expr {
        Expr::Select(c, m, z) if matches!(nest.node(z).expr, Expr::Const(Const::Float(bits)) if bits == 0) => {
            (m, Some(c))
        }
        _ => (body, None),
    };
    let Expr::Binary(BinaryOp::Mul, x, y) = nest.node(product).expr else {
        return None;
    };
    // Whether expression `e` does not vary with axis `axis` (affinely zero, or not
    // using it at all). The factors are loads, or loads masked by a padding check.
    let constant_along = |e: ExprId, axis: usize| {
        nest.coefficient(e, Variable::Domain(axis as u32), &mut HashMap::new()) == Some(0)
    };
    let axes = (0..rank).rev().filter(|&ax| nest.domain[ax] >= 2);
    for cols in axes.clone() {
        for rows in axes.clone().filter(|&r| r != cols) {
            for (a, b) in [(x, y), (y, x)] {
                let useful = !constant_along(a, rows) && !constant_along(b, cols);
                if !useful || !constant_along(a, cols) || !constant_along(b, rows) {
                    continue;
                }
                let mask = match mask {
                    None => None,
                    Some(c) if constant_along(c, rows) => Some((c, Along::Columns)),
                    Some(c) if constant_along(c, cols) => Some((c, Along::Rows)),
                    Some(_) => continue,
                };
                return Some(Product {
                    reduce,
                    a,
                    b,
                    mask,
                    rows,
                    cols,
                });
            }
        }
    }
    None
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
    fn set(&mut self, e: ExprId, v: BasicValueEnum<'ctx>) {
        self.values[e as usize] = Some(v);
        self.set_log.push(e);
    }

    fn value(&self, e: ExprId) -> BasicValueEnum<'ctx> {
        self.values[e as usize].expect("operands are emitted first")
    }

    fn int(&self, e: ExprId) -> IntValue<'ctx> {
        self.value(e).into_int_value()
    }

    fn reg_type(&self, r: Reg) -> BasicTypeEnum<'ctx> {
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
    fn ensure(&mut self, e: ExprId) -> R<BasicValueEnum<'ctx>> {
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
    fn uncomputed_cone(&self, e: ExprId) -> Vec<ExprId> {
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

    fn emit(&mut self, e: ExprId) -> R<BasicValueEnum<'ctx>> {
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

    fn constant(&self, c: Const, dtype: DType) -> BasicValueEnum<'ctx> {
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

    fn call(
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
    fn intrinsic(&self, base: &str, args: &[BasicValueEnum<'ctx>]) -> R<BasicValueEnum<'ctx>> {
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

    /// Element `index` of a parameter, clamped to it unless its range is proven inside.
    fn address(&self, param: u32, index: ExprId) -> R<(PointerValue<'ctx>, DType)> {
        let p = &self.kernel.params[param as usize];
        let len = p.len().max(1) as i64;
        let idx = self.int(index);
        let in_bounds = self.ranges[index as usize].is_some_and(|(lo, hi)| lo >= 0 && hi < len);
        let idx = if in_bounds {
            idx
        } else {
            let max = self.ctx.i64_type().const_int(len as u64 - 1, false);
            self.intrinsic("umin", &[idx.into(), max.into()])?
                .into_int_value()
        };
        let elem = self.storage_type(p.dtype);
        let ptr = unsafe {
            self.b
                .build_in_bounds_gep(elem, self.params[param as usize], &[idx], "")
        }
        .map_err(llvm)?;
        Ok((ptr, p.dtype))
    }

    fn storage_type(&self, d: DType) -> BasicTypeEnum<'ctx> {
        let c = self.ctx;
        match d {
            DType::F32 => c.f32_type().into(),
            DType::F64 => c.f64_type().into(),
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => c.i16_type().into(),
            DType::Bool | DType::I8 | DType::U8 => c.i8_type().into(),
            DType::I32 | DType::U32 => c.i32_type().into(),
            DType::I64 | DType::U64 => c.i64_type().into(),
        }
    }

    fn load(&mut self, param: u32, index: ExprId) -> R<BasicValueEnum<'ctx>> {
        let (ptr, dtype) = self.address(param, index)?;
        let b = self.b;
        let raw = b
            .build_load(self.storage_type(dtype), ptr, "")
            .map_err(llvm)?;
        let i64t = self.ctx.i64_type();
        Ok(match dtype {
            DType::F32 | DType::F64 | DType::I64 | DType::U64 => raw,
            DType::Bool => b
                .build_int_compare(
                    IntPredicate::NE,
                    raw.into_int_value(),
                    self.ctx.i8_type().const_zero(),
                    "",
                )
                .map_err(llvm)?
                .into(),
            DType::I8 | DType::I16 | DType::I32 => b
                .build_int_s_extend(raw.into_int_value(), i64t, "")
                .map_err(llvm)?
                .into(),
            DType::U8 | DType::U16 | DType::U32 => b
                .build_int_z_extend(raw.into_int_value(), i64t, "")
                .map_err(llvm)?
                .into(),
            DType::F16 => self.f16_to_f32(raw.into_int_value())?,
            DType::BF16 => {
                let w = b
                    .build_int_z_extend(raw.into_int_value(), self.ctx.i32_type(), "")
                    .map_err(llvm)?;
                let w = b
                    .build_left_shift(w, self.ctx.i32_type().const_int(16, false), "")
                    .map_err(llvm)?;
                b.build_bit_cast(w, self.ctx.f32_type(), "").map_err(llvm)?
            }
        })
    }

    fn store(&mut self, param: u32, index: ExprId, value: ExprId) -> R<()> {
        let (ptr, dtype) = self.address(param, index)?;
        let v = self.value(value);
        let b = self.b;
        let c = self.ctx;
        let stored: BasicValueEnum = match dtype {
            DType::F32 | DType::F64 | DType::I64 | DType::U64 => v,
            DType::Bool => b
                .build_int_z_extend(v.into_int_value(), c.i8_type(), "")
                .map_err(llvm)?
                .into(),
            DType::I8 | DType::U8 | DType::I16 | DType::U16 | DType::I32 | DType::U32 => b
                .build_int_truncate(
                    v.into_int_value(),
                    self.storage_type(dtype).into_int_type(),
                    "",
                )
                .map_err(llvm)?
                .into(),
            DType::F16 => self.f16_bits(v.into_float_value())?.into(),
            DType::BF16 => {
                let bits = self.bf16_bits(v.into_float_value())?;
                b.build_int_truncate(bits, c.i16_type(), "")
                    .map_err(llvm)?
                    .into()
            }
        };
        b.build_store(ptr, stored).map_err(llvm)?;
        Ok(())
    }

    /// The f16 nearest to the f32 `x`, as its bits: a conversion instruction on the GPU,
    /// the runtime's helper on the host (where LLVM would call a libgcc routine).
    fn f16_bits(&self, x: FloatValue<'ctx>) -> R<IntValue<'ctx>> {
        let b = self.b;
        let i16t = self.ctx.i16_type();
        match self.flavor {
            Flavor::Nvptx => {
                let h = b
                    .build_float_trunc(x, self.ctx.f16_type(), "")
                    .map_err(llvm)?;
                Ok(b.build_bit_cast(h, i16t, "")
                    .map_err(llvm)?
                    .into_int_value())
            }
            Flavor::Host => {
                let w = self
                    .call(
                        "smelt_rt_f32_to_f16",
                        self.ctx.i32_type().into(),
                        &[x.into()],
                    )?
                    .into_int_value();
                b.build_int_truncate(w, i16t, "").map_err(llvm)
            }
        }
    }

    /// The f32 value of f16 bits.
    fn f16_to_f32(&self, bits: IntValue<'ctx>) -> R<BasicValueEnum<'ctx>> {
        let b = self.b;
        let f32t = self.ctx.f32_type();
        match self.flavor {
            Flavor::Nvptx => {
                let h = b
                    .build_bit_cast(bits, self.ctx.f16_type(), "")
                    .map_err(llvm)?
                    .into_float_value();
                Ok(b.build_float_ext(h, f32t, "").map_err(llvm)?.into())
            }
            Flavor::Host => {
                let w = b
                    .build_int_z_extend(bits, self.ctx.i32_type(), "")
                    .map_err(llvm)?;
                self.call("smelt_rt_f16_to_f32", f32t.into(), &[w.into()])
            }
        }
    }

    /// The bf16 nearest to `x` (ties to even; NaN stays a quiet NaN), in the high half
    /// of an i32 shifted down: what `half::bf16::from_f32` gives.
    fn bf16_bits(&self, x: FloatValue<'ctx>) -> R<IntValue<'ctx>> {
        let b = self.b;
        let i32t = self.ctx.i32_type();
        let k = |v: u64| i32t.const_int(v, false);
        let bits = b
            .build_bit_cast(x, i32t, "")
            .map_err(llvm)?
            .into_int_value();
        let hi = b.build_right_shift(bits, k(16), false, "").map_err(llvm)?;
        let odd = b.build_and(hi, k(1), "").map_err(llvm)?;
        let bias = b.build_int_add(odd, k(0x7fff), "").map_err(llvm)?;
        let rounded = b.build_int_add(bits, bias, "").map_err(llvm)?;
        let rounded = b
            .build_right_shift(rounded, k(16), false, "")
            .map_err(llvm)?;
        let quiet = b.build_or(hi, k(0x40), "").map_err(llvm)?;
        let nan = b
            .build_float_compare(FloatPredicate::UNO, x, x, "")
            .map_err(llvm)?;
        Ok(b.build_select(nan, quiet, rounded, "")
            .map_err(llvm)?
            .into_int_value())
    }

    /// Rounds an f32 register to the precision of `dtype` (f16, bf16) and back.
    fn round_half(&self, v: BasicValueEnum<'ctx>, dtype: DType) -> R<BasicValueEnum<'ctx>> {
        let b = self.b;
        let f32t = self.ctx.f32_type();
        Ok(match dtype {
            DType::F16 => {
                let bits = self.f16_bits(v.into_float_value())?;
                self.f16_to_f32(bits)?
            }
            DType::BF16 => {
                let bits = self.bf16_bits(v.into_float_value())?;
                let w = b
                    .build_left_shift(bits, self.ctx.i32_type().const_int(16, false), "")
                    .map_err(llvm)?;
                b.build_bit_cast(w, f32t, "").map_err(llvm)?
            }
            _ => v,
        })
    }

    /// Wraps an i64 to the range of `dtype` (two's complement, as a cast does).
    fn wrap(&self, v: IntValue<'ctx>, dtype: DType) -> R<BasicValueEnum<'ctx>> {
        let narrow = match dtype {
            DType::I8 | DType::U8 => self.ctx.i8_type(),
            DType::I16 | DType::U16 => self.ctx.i16_type(),
            DType::I32 | DType::U32 => self.ctx.i32_type(),
            _ => return Ok(v.into()),
        };
        let b = self.b;
        let r = b.build_int_truncate(v, narrow, "").map_err(llvm)?;
        let i64t = self.ctx.i64_type();
        Ok(if dtype.is_unsigned_int() {
            b.build_int_z_extend(r, i64t, "").map_err(llvm)?
        } else {
            b.build_int_s_extend(r, i64t, "").map_err(llvm)?
        }
        .into())
    }

    fn fconst(&self, like: FloatValue<'ctx>, v: f64) -> FloatValue<'ctx> {
        like.get_type().const_float(v)
    }

    fn unary(
        &mut self,
        op: UnaryOp,
        dtype: DType,
        x: BasicValueEnum<'ctx>,
    ) -> R<BasicValueEnum<'ctx>> {
        let b = self.b;
        let unsupported = || GpuError::Unsupported {
            kernel: self.kernel.name.clone(),
            reason: format!("{} of {}", op.name(), dtype.name()),
        };
        if dtype == DType::Bool {
            return Ok(match op {
                UnaryOp::Not | UnaryOp::BitNot => {
                    b.build_not(x.into_int_value(), "").map_err(llvm)?.into()
                }
                _ => x,
            });
        }
        if !dtype.is_float() {
            let x = x.into_int_value();
            let i64t = self.ctx.i64_type();
            let zero = i64t.const_zero();
            let unsigned = dtype.is_unsigned_int();
            let v = match op {
                UnaryOp::Neg => b.build_int_neg(x, "").map_err(llvm)?,
                UnaryOp::Abs if unsigned => x,
                UnaryOp::Abs => {
                    let neg = b.build_int_neg(x, "").map_err(llvm)?;
                    let lt = b
                        .build_int_compare(IntPredicate::SLT, x, zero, "")
                        .map_err(llvm)?;
                    b.build_select(lt, neg, x, "")
                        .map_err(llvm)?
                        .into_int_value()
                }
                UnaryOp::Sign => {
                    let pos = b
                        .build_int_compare(
                            if unsigned {
                                IntPredicate::NE
                            } else {
                                IntPredicate::SGT
                            },
                            x,
                            zero,
                            "",
                        )
                        .map_err(llvm)?;
                    let p = b.build_int_z_extend(pos, i64t, "").map_err(llvm)?;
                    if unsigned {
                        p
                    } else {
                        let neg = b
                            .build_int_compare(IntPredicate::SLT, x, zero, "")
                            .map_err(llvm)?;
                        let n = b.build_int_z_extend(neg, i64t, "").map_err(llvm)?;
                        b.build_int_sub(p, n, "").map_err(llvm)?
                    }
                }
                UnaryOp::Not => {
                    let z = b
                        .build_int_compare(IntPredicate::EQ, x, zero, "")
                        .map_err(llvm)?;
                    b.build_int_z_extend(z, i64t, "").map_err(llvm)?
                }
                UnaryOp::BitNot => b.build_not(x, "").map_err(llvm)?,
                _ => return Err(unsupported()),
            };
            return self.wrap(v, dtype);
        }
        let xf = x.into_float_value();
        let is_f64 = reg(dtype) == Reg::F64;
        let ty = self.reg_type(reg(dtype));
        let v: BasicValueEnum = match op {
            UnaryOp::Neg => b.build_float_neg(xf, "").map_err(llvm)?.into(),
            UnaryOp::Abs => self.intrinsic("fabs", &[x])?,
            UnaryOp::Sqrt => self.intrinsic("sqrt", &[x])?,
            UnaryOp::Floor => self.intrinsic("floor", &[x])?,
            UnaryOp::Ceil => self.intrinsic("ceil", &[x])?,
            UnaryOp::Round => self.intrinsic("roundeven", &[x])?,
            UnaryOp::Reciprocal => b
                .build_float_div(self.fconst(xf, 1.0), xf, "")
                .map_err(llvm)?
                .into(),
            UnaryOp::Sigmoid => {
                let neg = b.build_float_neg(xf, "").map_err(llvm)?;
                let e = self.call(&math_symbol("exp", is_f64, self.flavor), ty, &[neg.into()])?;
                let d = b
                    .build_float_add(self.fconst(xf, 1.0), e.into_float_value(), "")
                    .map_err(llvm)?;
                b.build_float_div(self.fconst(xf, 1.0), d, "")
                    .map_err(llvm)?
                    .into()
            }
            UnaryOp::Sign => {
                let (one, neg, zero) = (
                    self.fconst(xf, 1.0),
                    self.fconst(xf, -1.0),
                    self.fconst(xf, 0.0),
                );
                let pos = b
                    .build_float_compare(FloatPredicate::OGT, xf, zero, "")
                    .map_err(llvm)?;
                let lt = b
                    .build_float_compare(FloatPredicate::OLT, xf, zero, "")
                    .map_err(llvm)?;
                let t = b.build_select(lt, neg, xf, "").map_err(llvm)?;
                b.build_select(pos, one.into(), t, "").map_err(llvm)?
            }
            UnaryOp::IsNan => {
                return Ok(b
                    .build_float_compare(FloatPredicate::UNO, xf, xf, "")
                    .map_err(llvm)?
                    .into());
            }
            UnaryOp::IsInf => {
                let a = self.intrinsic("fabs", &[x])?.into_float_value();
                let inf = self.fconst(xf, f64::INFINITY);
                return Ok(b
                    .build_float_compare(FloatPredicate::OEQ, a, inf, "")
                    .map_err(llvm)?
                    .into());
            }
            UnaryOp::Not | UnaryOp::BitNot => return Err(unsupported()),
            other => {
                let base = unary_math(other).ok_or_else(unsupported)?;
                self.call(&math_symbol(base, is_f64, self.flavor), ty, &[x])?
            }
        };
        self.round_half(v, dtype)
    }

    fn binary(
        &mut self,
        op: BinaryOp,
        src: DType,
        out: DType,
        x: BasicValueEnum<'ctx>,
        y: BasicValueEnum<'ctx>,
    ) -> R<BasicValueEnum<'ctx>> {
        let b = self.b;
        let unsupported = || GpuError::Unsupported {
            kernel: self.kernel.name.clone(),
            reason: format!("{} of {}", op.name(), src.name()),
        };
        if src.is_float() {
            let (xf, yf) = (x.into_float_value(), y.into_float_value());
            let is_f64 = reg(src) == Reg::F64;
            let ty = self.reg_type(reg(src));
            let v: BasicValueEnum = match op {
                BinaryOp::Add => b.build_float_add(xf, yf, "").map_err(llvm)?.into(),
                BinaryOp::Sub => b.build_float_sub(xf, yf, "").map_err(llvm)?.into(),
                BinaryOp::Mul => b.build_float_mul(xf, yf, "").map_err(llvm)?.into(),
                BinaryOp::Div => b.build_float_div(xf, yf, "").map_err(llvm)?.into(),
                BinaryOp::Max => self.intrinsic("maximum", &[x, y])?,
                BinaryOp::Min => self.intrinsic("minimum", &[x, y])?,
                BinaryOp::Pow => {
                    self.call(&math_symbol("pow", is_f64, self.flavor), ty, &[x, y])?
                }
                BinaryOp::Rem => {
                    self.call(&math_symbol("fmod", is_f64, self.flavor), ty, &[x, y])?
                }
                BinaryOp::Mod => {
                    let r = self
                        .call(&math_symbol("fmod", is_f64, self.flavor), ty, &[x, y])?
                        .into_float_value();
                    let zero = self.fconst(xf, 0.0);
                    let nz = b
                        .build_float_compare(FloatPredicate::UNE, r, zero, "")
                        .map_err(llvm)?;
                    let rneg = b
                        .build_float_compare(FloatPredicate::OLT, r, zero, "")
                        .map_err(llvm)?;
                    let yneg = b
                        .build_float_compare(FloatPredicate::OLT, yf, zero, "")
                        .map_err(llvm)?;
                    let differ = b.build_xor(rneg, yneg, "").map_err(llvm)?;
                    let fix = b.build_and(nz, differ, "").map_err(llvm)?;
                    let shifted = b.build_float_add(r, yf, "").map_err(llvm)?;
                    b.build_select(fix, shifted, r, "").map_err(llvm)?
                }
                c if c.is_comparison() => {
                    let p = match c {
                        BinaryOp::Equal => FloatPredicate::OEQ,
                        BinaryOp::Less => FloatPredicate::OLT,
                        BinaryOp::LessEqual => FloatPredicate::OLE,
                        BinaryOp::Greater => FloatPredicate::OGT,
                        _ => FloatPredicate::OGE,
                    };
                    return Ok(b.build_float_compare(p, xf, yf, "").map_err(llvm)?.into());
                }
                _ => return Err(unsupported()),
            };
            return self.round_half(v, out);
        }
        let (xi, yi) = (x.into_int_value(), y.into_int_value());
        if src == DType::Bool {
            return Ok(match op {
                BinaryOp::And | BinaryOp::BitAnd | BinaryOp::Min => b.build_and(xi, yi, ""),
                BinaryOp::Or | BinaryOp::BitOr | BinaryOp::Max => b.build_or(xi, yi, ""),
                BinaryOp::Xor | BinaryOp::BitXor => b.build_xor(xi, yi, ""),
                c if c.is_comparison() => b.build_int_compare(int_predicate(c, true), xi, yi, ""),
                _ => return Err(unsupported()),
            }
            .map_err(llvm)?
            .into());
        }
        let unsigned = src.is_unsigned_int();
        let i64t = self.ctx.i64_type();
        let (zero, one) = (i64t.const_zero(), i64t.const_int(1, false));
        let v: IntValue = match op {
            BinaryOp::Add => b.build_int_add(xi, yi, "").map_err(llvm)?,
            BinaryOp::Sub => b.build_int_sub(xi, yi, "").map_err(llvm)?,
            BinaryOp::Mul => b.build_int_mul(xi, yi, "").map_err(llvm)?,
            BinaryOp::Pow => self.pow_i64(xi, yi)?,
            BinaryOp::Div | BinaryOp::Rem | BinaryOp::Mod => {
                // Divisors of 0 (and, signed, -1, whose MIN / -1 overflows) are replaced
                // before dividing; a zero divisor gives 0.
                let y_zero = b
                    .build_int_compare(IntPredicate::EQ, yi, zero, "")
                    .map_err(llvm)?;
                let r = if unsigned {
                    let safe = b
                        .build_select(y_zero, one, yi, "")
                        .map_err(llvm)?
                        .into_int_value();
                    if op == BinaryOp::Div {
                        b.build_int_unsigned_div(xi, safe, "").map_err(llvm)?
                    } else {
                        b.build_int_unsigned_rem(xi, safe, "").map_err(llvm)?
                    }
                } else {
                    let y_neg1 = b
                        .build_int_compare(IntPredicate::EQ, yi, i64t.const_all_ones(), "")
                        .map_err(llvm)?;
                    let special = b.build_or(y_zero, y_neg1, "").map_err(llvm)?;
                    let safe = b
                        .build_select(special, one, yi, "")
                        .map_err(llvm)?
                        .into_int_value();
                    match op {
                        BinaryOp::Div => {
                            let q = b.build_int_signed_div(xi, safe, "").map_err(llvm)?;
                            let neg = b.build_int_neg(xi, "").map_err(llvm)?;
                            b.build_select(y_neg1, neg, q, "")
                                .map_err(llvm)?
                                .into_int_value()
                        }
                        BinaryOp::Rem => {
                            let r = b.build_int_signed_rem(xi, safe, "").map_err(llvm)?;
                            b.build_select(y_neg1, zero, r, "")
                                .map_err(llvm)?
                                .into_int_value()
                        }
                        _ => {
                            let r = b.build_int_signed_rem(xi, safe, "").map_err(llvm)?;
                            let r = b
                                .build_select(y_neg1, zero, r, "")
                                .map_err(llvm)?
                                .into_int_value();
                            let nz = b
                                .build_int_compare(IntPredicate::NE, r, zero, "")
                                .map_err(llvm)?;
                            let rneg = b
                                .build_int_compare(IntPredicate::SLT, r, zero, "")
                                .map_err(llvm)?;
                            let yneg = b
                                .build_int_compare(IntPredicate::SLT, yi, zero, "")
                                .map_err(llvm)?;
                            let differ = b.build_xor(rneg, yneg, "").map_err(llvm)?;
                            let fix = b.build_and(nz, differ, "").map_err(llvm)?;
                            let shifted = b.build_int_add(r, yi, "").map_err(llvm)?;
                            b.build_select(fix, shifted, r, "")
                                .map_err(llvm)?
                                .into_int_value()
                        }
                    }
                };
                b.build_select(y_zero, zero, r, "")
                    .map_err(llvm)?
                    .into_int_value()
            }
            BinaryOp::Max => self
                .intrinsic(if unsigned { "umax" } else { "smax" }, &[x, y])?
                .into_int_value(),
            BinaryOp::Min => self
                .intrinsic(if unsigned { "umin" } else { "smin" }, &[x, y])?
                .into_int_value(),
            BinaryOp::BitAnd => b.build_and(xi, yi, "").map_err(llvm)?,
            BinaryOp::BitOr => b.build_or(xi, yi, "").map_err(llvm)?,
            BinaryOp::BitXor => b.build_xor(xi, yi, "").map_err(llvm)?,
            BinaryOp::Shl | BinaryOp::Shr => {
                let big = b
                    .build_int_compare(IntPredicate::UGE, yi, i64t.const_int(64, false), "")
                    .map_err(llvm)?;
                if op == BinaryOp::Shl || unsigned {
                    let safe = b
                        .build_select(big, zero, yi, "")
                        .map_err(llvm)?
                        .into_int_value();
                    let s = if op == BinaryOp::Shl {
                        b.build_left_shift(xi, safe, "").map_err(llvm)?
                    } else {
                        b.build_right_shift(xi, safe, false, "").map_err(llvm)?
                    };
                    b.build_select(big, zero, s, "")
                        .map_err(llvm)?
                        .into_int_value()
                } else {
                    let amt = b
                        .build_select(big, i64t.const_int(63, false), yi, "")
                        .map_err(llvm)?
                        .into_int_value();
                    b.build_right_shift(xi, amt, true, "").map_err(llvm)?
                }
            }
            BinaryOp::And | BinaryOp::Or | BinaryOp::Xor => {
                let xa = b
                    .build_int_compare(IntPredicate::NE, xi, zero, "")
                    .map_err(llvm)?;
                let ya = b
                    .build_int_compare(IntPredicate::NE, yi, zero, "")
                    .map_err(llvm)?;
                return Ok(match op {
                    BinaryOp::And => b.build_and(xa, ya, ""),
                    BinaryOp::Or => b.build_or(xa, ya, ""),
                    _ => b.build_xor(xa, ya, ""),
                }
                .map_err(llvm)?
                .into());
            }
            c => {
                return Ok(b
                    .build_int_compare(int_predicate(c, unsigned), xi, yi, "")
                    .map_err(llvm)?
                    .into());
            }
        };
        self.wrap(v, out)
    }

    /// `x` to the power `y` in i64 as the runtime's `smelt_rt_pow_i64`: wrapping
    /// repeated squaring for `y >= 0`; for `y < 0`, what the f64 power truncates to
    /// (1 for x = 1, +-1 for x = -1, i64::MAX for x = 0, else 0).
    fn pow_i64(&self, x: IntValue<'ctx>, y: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        let f = self.pow_helper()?;
        Ok(self
            .b
            .build_call(f, &[x.into(), y.into()], "")
            .map_err(llvm)?
            .try_as_basic_value()
            .unwrap_basic()
            .into_int_value())
    }

    fn pow_helper(&self) -> R<FunctionValue<'ctx>> {
        const NAME: &str = "smelt_pow_i64";
        if let Some(f) = self.module.get_function(NAME) {
            return Ok(f);
        }
        let c = self.ctx;
        let i64t = c.i64_type();
        let f = self.module.add_function(
            NAME,
            i64t.fn_type(&[i64t.into(), i64t.into()], false),
            Some(Linkage::Internal),
        );
        let b = c.create_builder();
        let entry = c.append_basic_block(f, "entry");
        let negative = c.append_basic_block(f, "negative");
        let prepare = c.append_basic_block(f, "prepare");
        let step = c.append_basic_block(f, "step");
        let done = c.append_basic_block(f, "done");
        let (x, y) = (
            f.get_nth_param(0).expect("x").into_int_value(),
            f.get_nth_param(1).expect("y").into_int_value(),
        );
        let k = |v: i64| i64t.const_int(v as u64, true);
        b.position_at_end(entry);
        let neg = b
            .build_int_compare(IntPredicate::SLT, y, k(0), "")
            .map_err(llvm)?;
        b.build_conditional_branch(neg, negative, prepare)
            .map_err(llvm)?;
        b.position_at_end(negative);
        let is_one = b
            .build_int_compare(IntPredicate::EQ, x, k(1), "")
            .map_err(llvm)?;
        let is_m1 = b
            .build_int_compare(IntPredicate::EQ, x, k(-1), "")
            .map_err(llvm)?;
        let is_zero = b
            .build_int_compare(IntPredicate::EQ, x, k(0), "")
            .map_err(llvm)?;
        let odd = b.build_and(y, k(1), "").map_err(llvm)?;
        let odd = b
            .build_int_compare(IntPredicate::NE, odd, k(0), "")
            .map_err(llvm)?;
        let m1 = b
            .build_select(odd, k(-1), k(1), "")
            .map_err(llvm)?
            .into_int_value();
        let r = b
            .build_select(is_zero, k(i64::MAX), k(0), "")
            .map_err(llvm)?
            .into_int_value();
        let r = b
            .build_select(is_m1, m1, r, "")
            .map_err(llvm)?
            .into_int_value();
        let r = b
            .build_select(is_one, k(1), r, "")
            .map_err(llvm)?
            .into_int_value();
        b.build_return(Some(&r)).map_err(llvm)?;
        // The exponent clamped to u32, as the runtime does; then squaring over its bits
        // (an exponent of 0 takes one step and leaves 1).
        b.position_at_end(prepare);
        let big = b
            .build_int_compare(IntPredicate::UGT, y, k(u32::MAX as i64), "")
            .map_err(llvm)?;
        let y_capped = b
            .build_select(big, k(u32::MAX as i64), y, "")
            .map_err(llvm)?
            .into_int_value();
        b.build_unconditional_branch(step).map_err(llvm)?;
        b.position_at_end(step);
        let acc = b.build_phi(i64t, "acc").map_err(llvm)?;
        let base = b.build_phi(i64t, "base").map_err(llvm)?;
        let e = b.build_phi(i64t, "e").map_err(llvm)?;
        let (accv, basev, ev) = (
            acc.as_basic_value().into_int_value(),
            base.as_basic_value().into_int_value(),
            e.as_basic_value().into_int_value(),
        );
        let bit = b.build_and(ev, k(1), "").map_err(llvm)?;
        let bit = b
            .build_int_compare(IntPredicate::NE, bit, k(0), "")
            .map_err(llvm)?;
        let times = b.build_int_mul(accv, basev, "").map_err(llvm)?;
        let acc2 = b
            .build_select(bit, times, accv, "")
            .map_err(llvm)?
            .into_int_value();
        let base2 = b.build_int_mul(basev, basev, "").map_err(llvm)?;
        let e2 = b.build_right_shift(ev, k(1), false, "").map_err(llvm)?;
        let more = b
            .build_int_compare(IntPredicate::NE, e2, k(0), "")
            .map_err(llvm)?;
        b.build_conditional_branch(more, step, done).map_err(llvm)?;
        acc.add_incoming(&[(&k(1), prepare), (&acc2, step)]);
        base.add_incoming(&[(&x, prepare), (&base2, step)]);
        e.add_incoming(&[(&y_capped, prepare), (&e2, step)]);
        b.position_at_end(done);
        b.build_return(Some(&acc2)).map_err(llvm)?;
        Ok(f)
    }

    fn cast(&mut self, x: BasicValueEnum<'ctx>, src: DType, dst: DType) -> R<BasicValueEnum<'ctx>> {
        if src == dst {
            return Ok(x);
        }
        let b = self.b;
        let c = self.ctx;
        let i64t = c.i64_type();
        if src.is_float() {
            let xf = x.into_float_value();
            if dst.is_float() {
                let v: BasicValueEnum = match (reg(src), reg(dst)) {
                    (s, d) if s == d => x,
                    (_, Reg::F64) => b
                        .build_float_ext(xf, c.f64_type(), "")
                        .map_err(llvm)?
                        .into(),
                    _ => b
                        .build_float_trunc(xf, c.f32_type(), "")
                        .map_err(llvm)?
                        .into(),
                };
                return self.round_half(v, dst);
            }
            if dst == DType::Bool {
                let zero = self.fconst(xf, 0.0);
                return Ok(b
                    .build_float_compare(FloatPredicate::UNE, xf, zero, "")
                    .map_err(llvm)?
                    .into());
            }
            let wide = if reg(src) == Reg::F32 {
                b.build_float_ext(xf, c.f64_type(), "").map_err(llvm)?
            } else {
                xf
            };
            if dst.is_unsigned_int() {
                let v = self
                    .call("llvm.fptoui.sat.i64.f64", i64t.into(), &[wide.into()])?
                    .into_int_value();
                if dst == DType::U64 {
                    return Ok(v.into());
                }
                let max = i64t.const_int(dst.int_limits().1 as u64, false);
                return self.intrinsic("umin", &[v.into(), max.into()]);
            }
            let v = self.call("llvm.fptosi.sat.i64.f64", i64t.into(), &[wide.into()])?;
            let (lo, hi) = dst.int_limits();
            let v = self.intrinsic("smax", &[v, i64t.const_int(lo as u64, true).into()])?;
            return self.intrinsic("smin", &[v, i64t.const_int(hi as u64, true).into()]);
        }
        let xi = x.into_int_value();
        let (wide, unsigned) = if src == DType::Bool {
            (b.build_int_z_extend(xi, i64t, "").map_err(llvm)?, true)
        } else {
            (xi, src.is_unsigned_int())
        };
        if dst == DType::Bool {
            return Ok(b
                .build_int_compare(IntPredicate::NE, wide, i64t.const_zero(), "")
                .map_err(llvm)?
                .into());
        }
        if dst.is_float() {
            let ft = if reg(dst) == Reg::F64 {
                c.f64_type()
            } else {
                c.f32_type()
            };
            let v = if unsigned {
                b.build_unsigned_int_to_float(wide, ft, "").map_err(llvm)?
            } else {
                b.build_signed_int_to_float(wide, ft, "").map_err(llvm)?
            };
            return self.round_half(v.into(), dst);
        }
        self.wrap(wide, dst)
    }

    fn identity(&self, combine: Combine, dtype: DType) -> BasicValueEnum<'ctx> {
        let r = reg(dtype);
        let unsigned = dtype.is_unsigned_int() || dtype == DType::Bool;
        let (lowest, highest): (i64, i64) = if unsigned {
            (0, -1)
        } else {
            (i64::MIN, i64::MAX)
        };
        let v = match (combine, r) {
            (Combine::Sum, _) => Const::Int(0),
            (Combine::Prod, _) => Const::Int(1),
            (Combine::Max | Combine::ArgMax { .. }, Reg::F32 | Reg::F64) => {
                Const::float(f64::NEG_INFINITY)
            }
            (Combine::Max | Combine::ArgMax { .. }, _) => Const::Int(lowest),
            (Combine::Min | Combine::ArgMin { .. }, Reg::F32 | Reg::F64) => {
                Const::float(f64::INFINITY)
            }
            (Combine::Min | Combine::ArgMin { .. }, _) => Const::Int(highest),
        };
        match r {
            Reg::F32 => self.ctx.f32_type().const_float(v.as_f64()).into(),
            Reg::F64 => self.ctx.f64_type().const_float(v.as_f64()).into(),
            Reg::Bool => self
                .ctx
                .bool_type()
                .const_int(v.as_i64() as u64 & 1, false)
                .into(),
            Reg::I64 => self
                .ctx
                .i64_type()
                .const_int(v.as_i64() as u64, true)
                .into(),
        }
    }

    fn combine(
        &self,
        combine: Combine,
        dtype: DType,
        acc: BasicValueEnum<'ctx>,
        x: BasicValueEnum<'ctx>,
    ) -> R<BasicValueEnum<'ctx>> {
        let b = self.b;
        let unsigned = dtype.is_unsigned_int() || dtype == DType::Bool;
        Ok(match (combine, dtype.is_float()) {
            (Combine::Sum, true) => b
                .build_float_add(acc.into_float_value(), x.into_float_value(), "")
                .map_err(llvm)?
                .into(),
            (Combine::Prod, true) => b
                .build_float_mul(acc.into_float_value(), x.into_float_value(), "")
                .map_err(llvm)?
                .into(),
            (Combine::Sum, false) => b
                .build_int_add(acc.into_int_value(), x.into_int_value(), "")
                .map_err(llvm)?
                .into(),
            (Combine::Prod, false) => b
                .build_int_mul(acc.into_int_value(), x.into_int_value(), "")
                .map_err(llvm)?
                .into(),
            (Combine::Max, true) => self.intrinsic("maximum", &[acc, x])?,
            (Combine::Min, true) => self.intrinsic("minimum", &[acc, x])?,
            (Combine::Max, false) => {
                self.intrinsic(if unsigned { "umax" } else { "smax" }, &[acc, x])?
            }
            (Combine::Min, false) => {
                self.intrinsic(if unsigned { "umin" } else { "smin" }, &[acc, x])?
            }
            _ => unreachable!("arg reductions combine through arg_better"),
        })
    }

    /// Whether `x` replaces the current best of an arg reduction.
    fn arg_better(
        &self,
        combine: Combine,
        dtype: DType,
        x: BasicValueEnum<'ctx>,
        best: BasicValueEnum<'ctx>,
    ) -> R<IntValue<'ctx>> {
        let (max, last) = match combine {
            Combine::ArgMax { last } => (true, last),
            Combine::ArgMin { last } => (false, last),
            _ => unreachable!("only arg reductions"),
        };
        let b = self.b;
        if dtype.is_float() {
            let p = match (max, last) {
                (true, false) => FloatPredicate::OGT,
                (true, true) => FloatPredicate::OGE,
                (false, false) => FloatPredicate::OLT,
                (false, true) => FloatPredicate::OLE,
            };
            return b
                .build_float_compare(p, x.into_float_value(), best.into_float_value(), "")
                .map_err(llvm);
        }
        let unsigned = dtype.is_unsigned_int() || dtype == DType::Bool;
        let p = match (max, last, unsigned) {
            (true, false, false) => IntPredicate::SGT,
            (true, true, false) => IntPredicate::SGE,
            (false, false, false) => IntPredicate::SLT,
            (false, true, false) => IntPredicate::SLE,
            (true, false, true) => IntPredicate::UGT,
            (true, true, true) => IntPredicate::UGE,
            (false, false, true) => IntPredicate::ULT,
            (false, true, true) => IntPredicate::ULE,
        };
        b.build_int_compare(p, x.into_int_value(), best.into_int_value(), "")
            .map_err(llvm)
    }

    /// The thread's tile of a product: `vars` hold the tile's coordinates on its row and
    /// column axes. One loop over `k` loads `TILE` elements of `a` and of `b` and
    /// accumulates the `TILE x TILE` products (in the order the one-element loop adds
    /// them); then each output of the tile inside the domain is computed from its sum as
    /// the one-element kernel would, and stored.
    fn tiled_product(&mut self, p: Product) -> R<()> {
        let (row_axis, col_axis) = (p.rows, p.cols);
        let Expr::Reduce { extent, var, .. } = self.nest.node(p.reduce).expr else {
            unreachable!("a product's reduction")
        };
        let i64t = self.ctx.i64_type();
        let acc_type = self.reg_type(reg(self.nest.node(p.reduce).dtype));
        let b = self.b;
        let tile = i64t.const_int(TILE as u64, false);
        let first_row = b
            .build_int_mul(self.vars[row_axis], tile, "")
            .map_err(llvm)?;
        let first_col = b
            .build_int_mul(self.vars[col_axis], tile, "")
            .map_err(llvm)?;
        // Each of the tile's rows and columns, and (clamped into the domain, so every
        // load stays where the one-element kernel's would) the coordinate it computes at.
        let line =
            |first: IntValue<'ctx>, extent: usize| -> R<Vec<(IntValue<'ctx>, IntValue<'ctx>)>> {
                let last = i64t.const_int(extent as u64 - 1, false);
                (0..TILE)
                    .map(|t| {
                        let at = b
                            .build_int_add(first, i64t.const_int(t as u64, false), "")
                            .map_err(llvm)?;
                        let clamped = self.intrinsic("umin", &[at.into(), last.into()])?;
                        Ok((at, clamped.into_int_value()))
                    })
                    .collect()
            };
        let rows = line(first_row, self.nest.domain[row_axis])?;
        let cols = line(first_col, self.nest.domain[col_axis])?;
        // The sums, over k.
        let pre = b.get_insert_block().expect("positioned");
        let looped = self.ctx.append_basic_block(self.func, "tile_k");
        let after = self.ctx.append_basic_block(self.func, "tile_sums");
        b.build_unconditional_branch(looped).map_err(llvm)?;
        b.position_at_end(looped);
        let k = b.build_phi(i64t, "k").map_err(llvm)?;
        k.add_incoming(&[(&i64t.const_zero(), pre)]);
        let zero = self.identity(Combine::Sum, self.nest.node(p.reduce).dtype);
        let mut sums = Vec::with_capacity(TILE * TILE);
        for _ in 0..TILE * TILE {
            let phi = b.build_phi(acc_type, "sum").map_err(llvm)?;
            phi.add_incoming(&[(&zero, pre)]);
            sums.push(phi);
        }
        let kv = k.as_basic_value().into_int_value();
        self.rvars.insert(var, kv);
        let load_at = |em: &mut Self, e: ExprId, axis: usize, at: IntValue<'ctx>| {
            em.vars[axis] = at;
            let mark = em.set_log.len();
            let v = em.ensure(e);
            for x in em.set_log.drain(mark..) {
                em.values[x as usize] = None;
            }
            v
        };
        let (saved_row, saved_col) = (self.vars[row_axis], self.vars[col_axis]);
        // `a` does not vary with the column, nor `b` with the row: any one will do.
        self.vars[col_axis] = cols[0].1;
        let mut a = Vec::with_capacity(TILE);
        for &(_, r) in &rows {
            a.push(load_at(self, p.a, row_axis, r)?.into_float_value());
        }
        self.vars[row_axis] = rows[0].1;
        let mut bs = Vec::with_capacity(TILE);
        for &(_, c) in &cols {
            bs.push(load_at(self, p.b, col_axis, c)?.into_float_value());
        }
        // The mask per row or per column (the other coordinate is any in the tile).
        let mut masks = Vec::new();
        if let Some((mask, along)) = p.mask {
            let (axis, line) = match along {
                Along::Rows => (row_axis, &rows),
                Along::Columns => (col_axis, &cols),
            };
            for &(_, at) in line {
                masks.push(load_at(self, mask, axis, at)?.into_int_value());
            }
        }
        let b = self.b;
        let mut next_sums = Vec::with_capacity(TILE * TILE);
        for (t, av) in a.iter().enumerate() {
            for (u, bv) in bs.iter().enumerate() {
                // One fused multiply-add per product: ptxas never contracts the
                // separately rounded `mul.rn` and `add.rn` LLVM emits for a plain
                // multiply and add, which would halve the peak.
                let sum = sums[t * TILE + u].as_basic_value();
                let fused = self
                    .intrinsic("fma", &[(*av).into(), (*bv).into(), sum])?
                    .into_float_value();
                let next = match p.mask.map(|(_, along)| along) {
                    None => fused,
                    // Outside the mask the term is 0: the sum stays as it was.
                    Some(along) => {
                        let m = masks[if along == Along::Rows { t } else { u }];
                        self.b
                            .build_select(m, fused, sum.into_float_value(), "")
                            .map_err(llvm)?
                            .into_float_value()
                    }
                };
                next_sums.push(next);
            }
        }
        let next_k = b
            .build_int_add(kv, i64t.const_int(1, false), "")
            .map_err(llvm)?;
        let latch = b.get_insert_block().expect("positioned");
        k.add_incoming(&[(&next_k, latch)]);
        for (phi, v) in sums.iter().zip(&next_sums) {
            phi.add_incoming(&[(v, latch)]);
        }
        let more = b
            .build_int_compare(IntPredicate::ULT, next_k, i64t.const_int(extent, false), "")
            .map_err(llvm)?;
        b.build_conditional_branch(more, looped, after)
            .map_err(llvm)?;
        b.position_at_end(after);
        self.rvars.remove(&var);
        // Each output of the tile from its sum.
        let store = self.nest.stores[0];
        let (m, n) = (
            i64t.const_int(self.nest.domain[row_axis] as u64, false),
            i64t.const_int(self.nest.domain[col_axis] as u64, false),
        );
        for (t, &(row, row_clamped)) in rows.iter().enumerate() {
            for (u, &(col, col_clamped)) in cols.iter().enumerate() {
                let b = self.b;
                let inside_row = b
                    .build_int_compare(IntPredicate::ULT, row, m, "")
                    .map_err(llvm)?;
                let inside_col = b
                    .build_int_compare(IntPredicate::ULT, col, n, "")
                    .map_err(llvm)?;
                let inside = b.build_and(inside_row, inside_col, "").map_err(llvm)?;
                let write = self.ctx.append_basic_block(self.func, "tile_store");
                let next = self.ctx.append_basic_block(self.func, "tile_next");
                b.build_conditional_branch(inside, write, next)
                    .map_err(llvm)?;
                b.position_at_end(write);
                self.vars[row_axis] = row_clamped;
                self.vars[col_axis] = col_clamped;
                let mark = self.set_log.len();
                self.set(p.reduce, next_sums[t * TILE + u].into());
                self.ensure(store.index)?;
                self.ensure(store.value)?;
                self.store(store.param, store.index, store.value)?;
                for x in self.set_log.drain(mark..) {
                    self.values[x as usize] = None;
                }
                self.b.build_unconditional_branch(next).map_err(llvm)?;
                self.b.position_at_end(next);
            }
        }
        self.vars[row_axis] = saved_row;
        self.vars[col_axis] = saved_col;
        Ok(())
    }

    /// A reduction as a counted loop. What its body needs that does not vary with its
    /// variable is computed before the loop; what the loop computes is forgotten after it.
    fn reduce(&mut self, e: ExprId) -> R<BasicValueEnum<'ctx>> {
        let Expr::Reduce {
            combine,
            extent,
            var,
            body,
        } = self.nest.node(e).expr
        else {
            unreachable!("called on reductions")
        };
        let body_dtype = self.nest.node(body).dtype;
        let arg = matches!(combine, Combine::ArgMax { .. } | Combine::ArgMin { .. });
        let init = self.identity(combine, body_dtype);
        let i64t = self.ctx.i64_type();
        if extent == 0 {
            return Ok(if arg { i64t.const_zero().into() } else { init });
        }
        // Hoist the invariant part of the body.
        for x in self.uncomputed_cone(body) {
            let varies = self.free[x as usize].contains(&var);
            let bound = self.free[x as usize]
                .iter()
                .all(|v| self.rvars.contains_key(v));
            if !varies && bound {
                self.ensure(x)?;
            }
        }
        let b = self.b;
        let pre = b.get_insert_block().expect("positioned");
        let looped = self.ctx.append_basic_block(self.func, "reduce");
        b.build_unconditional_branch(looped).map_err(llvm)?;
        b.position_at_end(looped);
        let r = b.build_phi(i64t, "r").map_err(llvm)?;
        let acc = b.build_phi(init.get_type(), "acc").map_err(llvm)?;
        // Arg reductions also carry the index of the best element so far.
        let best = if arg {
            let best = b.build_phi(i64t, "best").map_err(llvm)?;
            best.add_incoming(&[(&i64t.const_zero(), pre)]);
            Some(best)
        } else {
            None
        };
        r.add_incoming(&[(&i64t.const_zero(), pre)]);
        acc.add_incoming(&[(&init, pre)]);
        let rv = r.as_basic_value().into_int_value();
        let mark = self.set_log.len();
        self.rvars.insert(var, rv);
        let accv = acc.as_basic_value();
        if let Some(fused) = self.fused_sum_step(combine, body, accv)? {
            return self.close_reduction(ReductionLoop {
                var,
                extent,
                mark,
                r,
                acc,
                acc2: fused,
                best: None,
            });
        }
        let x = self.ensure(body)?;
        let (acc2, best2) = match best {
            Some(best) => {
                let bestv = best.as_basic_value().into_int_value();
                let better = self.arg_better(combine, body_dtype, x, accv)?;
                (
                    self.b.build_select(better, x, accv, "").map_err(llvm)?,
                    Some(
                        self.b
                            .build_select(better, rv, bestv, "")
                            .map_err(llvm)?
                            .into_int_value(),
                    ),
                )
            }
            None => (self.combine(combine, body_dtype, accv, x)?, None),
        };
        self.close_reduction(ReductionLoop {
            var,
            extent,
            mark,
            r,
            acc,
            acc2,
            best: best.zip(best2),
        })
    }

    /// The step of a float sum over products as one fused multiply-add (or, where the
    /// product is masked to 0, the sum kept outside the mask); `None` for other bodies.
    fn fused_sum_step(
        &mut self,
        combine: Combine,
        body: ExprId,
        acc: BasicValueEnum<'ctx>,
    ) -> R<Option<BasicValueEnum<'ctx>>> {
        if combine != Combine::Sum || !matches!(self.nest.node(body).dtype, DType::F32 | DType::F64)
        {
            return Ok(None);
        }
        let product = |e: ExprId| match self.nest.node(e).expr {
            Expr::Binary(BinaryOp::Mul, x, y) => Some((x, y)),
            _ => None,
        };
        let (mask, (x, y)) = match self.nest.node(body).expr {
            Expr::Select(c, m, z)
                if matches!(self.nest.node(z).expr, Expr::Const(Const::Float(0))) =>
            {
                match product(m) {
                    Some(p) => (Some(c), p),
                    None => return Ok(None),
                }
            }
            _ => match product(body) {
                Some(p) => (None, p),
                None => return Ok(None),
            },
        };
        let xv = self.ensure(x)?;
        let yv = self.ensure(y)?;
        let fused = self.intrinsic("fma", &[xv, yv, acc])?;
        Ok(Some(match mask {
            None => fused,
            Some(c) => {
                let cv = self.ensure(c)?.into_int_value();
                self.b.build_select(cv, fused, acc, "").map_err(llvm)?
            }
        }))
    }

    /// Closes a reduction's loop: the phis' back edges, the exit test and the values
    /// computed inside it forgotten; returns the accumulator (or the arg's best index).
    fn close_reduction(&mut self, l: ReductionLoop<'ctx>) -> R<BasicValueEnum<'ctx>> {
        let b = self.b;
        let i64t = self.ctx.i64_type();
        let rv = l.r.as_basic_value().into_int_value();
        let next = b
            .build_int_add(rv, i64t.const_int(1, false), "")
            .map_err(llvm)?;
        let latch = b.get_insert_block().expect("positioned");
        let looped = l.r.as_instruction().get_parent().expect("in the loop");
        let after = self.ctx.append_basic_block(self.func, "reduced");
        l.r.add_incoming(&[(&next, latch)]);
        l.acc.add_incoming(&[(&l.acc2, latch)]);
        if let Some((best, best2)) = l.best {
            best.add_incoming(&[(&best2, latch)]);
        }
        let more = b
            .build_int_compare(IntPredicate::ULT, next, i64t.const_int(l.extent, false), "")
            .map_err(llvm)?;
        b.build_conditional_branch(more, looped, after)
            .map_err(llvm)?;
        b.position_at_end(after);
        for x in self.set_log.drain(l.mark..) {
            self.values[x as usize] = None;
        }
        self.rvars.remove(&l.var);
        Ok(l.best.map_or(l.acc2, |(_, b)| b.as_basic_value_enum()))
    }
}

/// A reduction's loop as it is closed: its variable and extent, where its values'
/// log starts, the counter and accumulator phis and the accumulator's next value.
struct ReductionLoop<'ctx> {
    var: u32,
    extent: u64,
    mark: usize,
    r: PhiValue<'ctx>,
    acc: PhiValue<'ctx>,
    acc2: BasicValueEnum<'ctx>,
    best: Option<(PhiValue<'ctx>, IntValue<'ctx>)>,
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
