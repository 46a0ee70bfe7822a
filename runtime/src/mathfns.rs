//! Scalar math helpers that generated code calls for what it does not inline.
//!
//! Generated kernels inline arithmetic and the f32 polynomials (exp, log, tanh, sigmoid,
//! erf); everything else calls these functions by symbol name, both from the JIT (the
//! driver registers [`symbols`]) and from linked object code (hence `no_mangle`). f32 variants compute in
//! f64 and round once, which is what the reference interpreter does.

macro_rules! unary_helpers {
    ($($name32:ident, $name64:ident = $f:expr;)*) => {
        $(
            #[unsafe(no_mangle)]
            pub extern "C" fn $name32(x: f32) -> f32 {
                let f: fn(f64) -> f64 = $f;
                f(x as f64) as f32
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn $name64(x: f64) -> f64 {
                let f: fn(f64) -> f64 = $f;
                f(x)
            }
        )*
        /// Names of the unary helpers, with their f32 and f64 entry points.
        pub fn unary_symbols() -> Vec<(&'static str, *const u8, &'static str, *const u8)> {
            vec![$((
                stringify!($name32), $name32 as *const u8,
                stringify!($name64), $name64 as *const u8,
            )),*]
        }
    };
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

unary_helpers! {
    smelt_rt_sin_f32, smelt_rt_sin_f64 = f64::sin;
    smelt_rt_cos_f32, smelt_rt_cos_f64 = f64::cos;
    smelt_rt_tan_f32, smelt_rt_tan_f64 = f64::tan;
    smelt_rt_asin_f32, smelt_rt_asin_f64 = f64::asin;
    smelt_rt_acos_f32, smelt_rt_acos_f64 = f64::acos;
    smelt_rt_atan_f32, smelt_rt_atan_f64 = f64::atan;
    smelt_rt_sinh_f32, smelt_rt_sinh_f64 = f64::sinh;
    smelt_rt_cosh_f32, smelt_rt_cosh_f64 = f64::cosh;
    smelt_rt_asinh_f32, smelt_rt_asinh_f64 = f64::asinh;
    smelt_rt_acosh_f32, smelt_rt_acosh_f64 = f64::acosh;
    smelt_rt_atanh_f32, smelt_rt_atanh_f64 = f64::atanh;
    smelt_rt_exp_f32, smelt_rt_exp_f64 = f64::exp;
    smelt_rt_log_f32, smelt_rt_log_f64 = f64::ln;
    smelt_rt_tanh_f32, smelt_rt_tanh_f64 = f64::tanh;
    smelt_rt_erf_f32, smelt_rt_erf_f64 = libm::erf;
    smelt_rt_sigmoid_f32, smelt_rt_sigmoid_f64 = sigmoid;
}

#[unsafe(no_mangle)]
pub extern "C" fn smelt_rt_pow_f64(a: f64, b: f64) -> f64 {
    a.powf(b)
}

#[unsafe(no_mangle)]
pub extern "C" fn smelt_rt_pow_f32(a: f32, b: f32) -> f32 {
    (a as f64).powf(b as f64) as f32
}

#[unsafe(no_mangle)]
pub extern "C" fn smelt_rt_fmod_f64(a: f64, b: f64) -> f64 {
    a % b
}

#[unsafe(no_mangle)]
pub extern "C" fn smelt_rt_fmod_f32(a: f32, b: f32) -> f32 {
    ((a as f64) % (b as f64)) as f32
}

/// Integer power with the reference's semantics (wrapping; negative exponents through f64).
#[unsafe(no_mangle)]
pub extern "C" fn smelt_rt_pow_i64(a: i64, b: i64) -> i64 {
    if b >= 0 {
        a.wrapping_pow(b.min(u32::MAX as i64) as u32)
    } else {
        (a as f64).powf(b as f64) as i64
    }
}

/// Rounds an f32 to f16 and back (f16 values compute in f32 between ops).
#[unsafe(no_mangle)]
pub extern "C" fn smelt_rt_round_f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

#[unsafe(no_mangle)]
pub extern "C" fn smelt_rt_round_bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

#[unsafe(no_mangle)]
pub extern "C" fn smelt_rt_f16_to_f32(bits: i32) -> f32 {
    half::f16::from_bits(bits as u16).to_f32()
}

#[unsafe(no_mangle)]
pub extern "C" fn smelt_rt_bf16_to_f32(bits: i32) -> f32 {
    half::bf16::from_bits(bits as u16).to_f32()
}

#[unsafe(no_mangle)]
pub extern "C" fn smelt_rt_f32_to_f16(x: f32) -> i32 {
    half::f16::from_f32(x).to_bits() as i32
}

#[unsafe(no_mangle)]
pub extern "C" fn smelt_rt_f32_to_bf16(x: f32) -> i32 {
    half::bf16::from_f32(x).to_bits() as i32
}

/// Every helper by symbol name, for a JIT to resolve.
pub fn symbols() -> Vec<(&'static str, *const u8)> {
    let mut v: Vec<(&'static str, *const u8)> = Vec::new();
    for (n32, p32, n64, p64) in unary_symbols() {
        v.push((n32, p32));
        v.push((n64, p64));
    }
    v.extend([
        ("smelt_rt_pow_f64", smelt_rt_pow_f64 as *const u8),
        ("smelt_rt_pow_f32", smelt_rt_pow_f32 as *const u8),
        ("smelt_rt_fmod_f64", smelt_rt_fmod_f64 as *const u8),
        ("smelt_rt_fmod_f32", smelt_rt_fmod_f32 as *const u8),
        ("smelt_rt_pow_i64", smelt_rt_pow_i64 as *const u8),
        ("smelt_rt_round_f16", smelt_rt_round_f16 as *const u8),
        ("smelt_rt_round_bf16", smelt_rt_round_bf16 as *const u8),
        ("smelt_rt_f16_to_f32", smelt_rt_f16_to_f32 as *const u8),
        ("smelt_rt_bf16_to_f32", smelt_rt_bf16_to_f32 as *const u8),
        ("smelt_rt_f32_to_f16", smelt_rt_f32_to_f16 as *const u8),
        ("smelt_rt_f32_to_bf16", smelt_rt_f32_to_bf16 as *const u8),
    ]);
    v.extend(crate::softmax_rows::symbols());
    v
}
