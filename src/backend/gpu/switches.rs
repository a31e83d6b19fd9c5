//! The environment's switches for the GPU backend (`VIBRANT_*`), parsed once per process into
//! one struct: knobs for measurements and debugging, each defaulting to what the backend
//! would choose.

use super::pipeline_cache::CacheSetting;
use std::ffi::OsString;
use std::sync::OnceLock;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Switches {
    /// `VIBRANT_TRACE` (not `0`): log every dispatch and wait for each one (names a kernel
    /// that hangs).
    pub trace: bool,
    /// `VIBRANT_PIPELINE_CACHE`: where compiled kernels are kept (a file, or `0` for none).
    pub pipeline_cache: CacheSetting,
    /// `VIBRANT_MATVEC_TEAM`: threads that share a matvec row (a power of two up to the
    /// workgroup), instead of a choice per matrix.
    pub matvec_team: Option<u32>,
    /// `VIBRANT_MATVEC_ROWS` (1 to 8): rows each matvec team computes.
    pub matvec_rows: Option<u32>,
    /// `VIBRANT_MATVEC_WIDTH` (8, 16 or 32): weights a matvec thread decodes at a time, for
    /// every type.
    pub matvec_width: Option<u32>,
    /// `VIBRANT_FUSE_NORM=0`: RMSNorm gets its own launch before the decode matvecs.
    pub fuse_norm: bool,
    /// `VIBRANT_UNCHECKED_SHADERS`: `0` keeps every bounds check and loop counter, any other
    /// value drops them on every API; unset, the choice per API.
    pub unchecked_shaders: Option<bool>,
    /// `VIBRANT_COOP=0`: prompt matmuls stay off the tensor cores.
    pub coop: bool,
    /// `VIBRANT_COOP_ATTENTION=0`: prompt attention stays off the tensor cores.
    pub coop_attention: bool,
    /// `VIBRANT_INT8=0`: decode products keep f32 activations.
    pub int8: bool,
    /// `VIBRANT_INT8_GLOBAL_BYTES`: the bytes of activations a product's workgroups would
    /// re-read from which it reads them quantized once instead (`Tuning::int8_global_min_bytes`).
    pub int8_global_bytes: Option<usize>,
}

impl Switches {
    /// The switches of this process's environment, parsed on first use.
    pub fn get() -> &'static Switches {
        static SWITCHES: OnceLock<Switches> = OnceLock::new();
        SWITCHES.get_or_init(|| Self::parse(|name| std::env::var_os(name)))
    }

    /// The switches as `var` gives the variables (unparsable numbers count as unset).
    pub fn parse(var: impl Fn(&str) -> Option<OsString>) -> Self {
        let text = |name: &str| var(name).and_then(|v| v.into_string().ok());
        let number = |name: &str| text(name).and_then(|v| v.parse::<u32>().ok());
        let off = |name: &str| text(name).is_some_and(|v| v == "0");
        Self {
            trace: text("VIBRANT_TRACE").is_some_and(|v| v != "0"),
            pipeline_cache: CacheSetting::parse(var("VIBRANT_PIPELINE_CACHE")),
            matvec_team: number("VIBRANT_MATVEC_TEAM").filter(|t| t.is_power_of_two()),
            matvec_rows: number("VIBRANT_MATVEC_ROWS").filter(|r| (1..=8).contains(r)),
            matvec_width: number("VIBRANT_MATVEC_WIDTH").filter(|w| [8, 16, 32].contains(w)),
            fuse_norm: !off("VIBRANT_FUSE_NORM"),
            unchecked_shaders: text("VIBRANT_UNCHECKED_SHADERS")
                .filter(|v| !v.is_empty())
                .map(|v| v != "0"),
            coop: !off("VIBRANT_COOP"),
            coop_attention: !off("VIBRANT_COOP_ATTENTION"),
            int8: !off("VIBRANT_INT8"),
            int8_global_bytes: text("VIBRANT_INT8_GLOBAL_BYTES").and_then(|v| v.parse().ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parsed(vars: &[(&str, &str)]) -> Switches {
        let vars: HashMap<&str, &str> = vars.iter().copied().collect();
        Switches::parse(|name| vars.get(name).map(OsString::from))
    }

    #[test]
    fn unset_switches_leave_every_choice_to_the_backend() {
        let s = parsed(&[]);
        assert!(!s.trace && s.fuse_norm && s.coop && s.coop_attention && s.int8);
        assert_eq!(s.pipeline_cache, CacheSetting::Default);
        assert_eq!(
            (
                s.matvec_team,
                s.matvec_rows,
                s.matvec_width,
                s.unchecked_shaders
            ),
            (None, None, None, None)
        );
    }

    #[test]
    fn switches_parse_as_documented_and_refuse_values_out_of_range() {
        let s = parsed(&[
            ("VIBRANT_TRACE", "1"),
            ("VIBRANT_PIPELINE_CACHE", "0"),
            ("VIBRANT_MATVEC_TEAM", "64"),
            ("VIBRANT_MATVEC_ROWS", "9"),
            ("VIBRANT_MATVEC_WIDTH", "16"),
            ("VIBRANT_FUSE_NORM", "0"),
            ("VIBRANT_UNCHECKED_SHADERS", "0"),
            ("VIBRANT_COOP", "0"),
            ("VIBRANT_INT8", "1"),
        ]);
        assert!(s.trace && !s.fuse_norm && !s.coop && s.coop_attention && s.int8);
        assert_eq!(s.pipeline_cache, CacheSetting::Off);
        assert_eq!((s.matvec_team, s.matvec_rows), (Some(64), None));
        assert_eq!(s.matvec_width, Some(16));
        assert_eq!(s.unchecked_shaders, Some(false));
        let s = parsed(&[
            ("VIBRANT_TRACE", "0"),
            ("VIBRANT_MATVEC_TEAM", "48"),
            ("VIBRANT_UNCHECKED_SHADERS", "1"),
            ("VIBRANT_PIPELINE_CACHE", "/tmp/k.bin"),
        ]);
        assert!(!s.trace);
        assert_eq!(s.matvec_team, None, "not a power of two");
        assert_eq!(s.unchecked_shaders, Some(true));
        assert_eq!(s.pipeline_cache, CacheSetting::File("/tmp/k.bin".into()));
    }
}
