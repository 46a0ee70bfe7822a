//! Loads and stores: addresses in the global address space, clamped to their buffer
//! unless the index is proven inside, f16 and bf16 storage computed in f32 and rounded
//! after each op, integers wrapped to their type.

use super::*;

impl<'ctx> Emitter<'_, 'ctx> {
    /// Element `index` of a parameter, clamped to it unless its range is proven inside.
    pub(super) fn address(&self, param: u32, index: ExprId) -> R<(PointerValue<'ctx>, DType)> {
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

    pub(super) fn storage_type(&self, d: DType) -> BasicTypeEnum<'ctx> {
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

    pub(super) fn load(&mut self, param: u32, index: ExprId) -> R<BasicValueEnum<'ctx>> {
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

    pub(super) fn store(&mut self, param: u32, index: ExprId, value: ExprId) -> R<()> {
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
    pub(super) fn f16_bits(&self, x: FloatValue<'ctx>) -> R<IntValue<'ctx>> {
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
    pub(super) fn f16_to_f32(&self, bits: IntValue<'ctx>) -> R<BasicValueEnum<'ctx>> {
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
    pub(super) fn bf16_bits(&self, x: FloatValue<'ctx>) -> R<IntValue<'ctx>> {
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
    pub(super) fn round_half(
        &self,
        v: BasicValueEnum<'ctx>,
        dtype: DType,
    ) -> R<BasicValueEnum<'ctx>> {
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
    pub(super) fn wrap(&self, v: IntValue<'ctx>, dtype: DType) -> R<BasicValueEnum<'ctx>> {
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
}
