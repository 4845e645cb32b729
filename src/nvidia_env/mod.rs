//! NVIDIA's container-selection language: `NVIDIA_VISIBLE_DEVICES`, `NVIDIA_DRIVER_CAPABILITIES`,
//! the `NVIDIA_REQUIRE_*` DSL and the legacy-image rules, with the semantics of NVIDIA's hook and
//! `nvidia-container-cli` reproduced. Pure: strings in, data out; no I/O, no environment reads.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

mod capabilities;
mod devices;
mod requirements;

pub use capabilities::*;
pub use devices::*;
pub use requirements::*;

/// Everything a container can get wrong in these variables. Each message names the offending
/// value, because the hook prints it as its one line on stderr and the user has nothing else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("invalid device {item:?} in NVIDIA_VISIBLE_DEVICES: {reason}")]
    InvalidDevice { item: String, reason: String },
    /// A word of `NVIDIA_DRIVER_CAPABILITIES` that is unknown, or known but not in the config's
    /// `supported-driver-capabilities`; NVIDIA treats both alike ("unsupported capabilities").
    #[error(
        "unsupported driver capability {word:?} in NVIDIA_DRIVER_CAPABILITIES (supported: {})",
        list_or_none(.supported)
    )]
    UnsupportedCapability {
        word: String,
        supported: Capabilities,
    },
    /// A word that names no capability at all (the config key, `Capability::from_str`).
    #[error(
        "unknown driver capability {0:?} (known: compat32, compute, display, graphics, ngx, utility, video, all)"
    )]
    UnknownCapability(String),
    #[error("invalid requirement expression {expr:?}{}: {reason}", in_var(.var))]
    InvalidRequirement {
        /// The variable it came from, when known.
        var: Option<String>,
        expr: String,
        reason: String,
    },
    /// The CLI's wording, so scripts that match NVIDIA's message keep working.
    #[error(
        "requirement error: unsatisfied condition: {condition}{}",
        update_hint(*.update_driver_hint)
    )]
    Unsatisfied {
        condition: String,
        update_driver_hint: bool,
    },
    #[error("invalid CUDA_VERSION {0:?}: expected a version such as 12.4 or 12.4.1")]
    InvalidCudaVersion(String),
}

fn list_or_none(c: &Capabilities) -> String {
    if c.is_empty() {
        "none".to_owned()
    } else {
        c.to_string()
    }
}

fn update_hint(on: bool) -> &'static str {
    if on {
        ", please update your driver to a newer version, or use an earlier cuda container"
    } else {
        ""
    }
}

fn in_var(var: &Option<String>) -> String {
    var.as_ref().map(|v| format!(" in {v}")).unwrap_or_default()
}

/// Go strconv.ParseBool truth for NVIDIA_DISABLE_REQUIRE ("1 t T TRUE true True").
/// No trimming, as in Go; anything else, including ParseBool's errors, is false.
pub fn go_bool_true(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "TRUE" | "true" | "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const U1: &str = "GPU-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a7b";
    const M1: &str = "MIG-5c89e3b2-0a1f-5d6e-8b7c-9d0e1f2a3b4c";

    fn caps(list: &[Capability]) -> Capabilities {
        list.iter().copied().collect()
    }

    fn list(ids: Vec<DeviceId>) -> Option<DeviceRequest> {
        Some(DeviceRequest::List(ids))
    }

    // ---- §2 NVIDIA_VISIBLE_DEVICES ----

    #[test]
    fn visible_devices_table() {
        use DeviceId::Index;
        use DeviceRequest::{All, None as NoGpus};
        let rows: Vec<(Option<&str>, bool, Option<DeviceRequest>)> = vec![
            // unset
            (None, true, Some(All)),
            (None, false, None),
            // set but empty / only separators: not a GPU container, legacy too
            (Some(""), true, None),
            (Some(""), false, None),
            (Some(" , ,, "), true, None),
            // void anywhere
            (Some("void"), true, None),
            (Some("0,void"), false, None),
            (Some("all,void"), false, None),
            (Some("none,void"), false, None),
            (Some(" void ,bogus"), false, None),
            // none / all: the first keyword decides
            (Some("none"), false, Some(NoGpus)),
            (Some("none"), true, Some(NoGpus)),
            (Some("0,none"), false, Some(NoGpus)),
            (Some("none,all"), false, Some(NoGpus)),
            (Some("all"), false, Some(All)),
            (Some(" all "), false, Some(All)),
            (Some("0,all"), false, Some(All)),
            (Some("all,none"), false, Some(All)),
            (Some("bogus,all"), false, Some(All)),
            // the CLI's case-insensitive all, which ends its walk
            (Some("ALL"), false, Some(All)),
            (Some("0,All"), false, Some(All)),
            (Some("ALL,bogus"), false, Some(All)),
            // lists: trimmed, empties dropped, duplicates removed keeping the first
            (Some("0"), false, list(vec![Index(0)])),
            (Some("1,0"), false, list(vec![Index(1), Index(0)])),
            (Some("0,0,1"), false, list(vec![Index(0), Index(1)])),
            (Some("1,0,1"), false, list(vec![Index(1), Index(0)])),
            (
                Some(" 0 ,, 1 ,\t2\n,"),
                false,
                list(vec![Index(0), Index(1), Index(2)]),
            ),
            (Some("0,00"), false, list(vec![Index(0)])),
            (Some("3"), true, list(vec![Index(3)])),
        ];
        for (value, legacy, want) in rows {
            assert_eq!(
                parse_visible_devices(value, legacy),
                Ok(want),
                "value {value:?} legacy {legacy}"
            );
        }
    }

    #[test]
    fn visible_devices_mixed_ids_and_duplicate_spellings() {
        let upper = U1.to_ascii_uppercase().replacen("GPU-", "gpu-", 1);
        let v = format!("{U1},0000:1B:00.0,{upper},00000000:1b:00.0,{M1},0:1,2");
        assert_eq!(
            parse_visible_devices(Some(&v), false),
            Ok(list(vec![
                DeviceId::GpuUuid(U1.into()),
                DeviceId::PciBusId("00000000:1b:00.0".into()),
                DeviceId::MigUuid(M1.into()),
                DeviceId::MigIndex { gpu: 0, mig: 1 },
                DeviceId::Index(2),
            ]))
        );
    }

    #[test]
    fn visible_devices_errors_name_the_item() {
        for (value, item) in [
            ("bogus", "bogus"),
            ("0,bogus,1", "bogus"),
            ("bogus,ALL", "bogus"),
            ("NONE", "NONE"),
            ("Void", "Void"),
            ("0,GPU-fef8089b", "GPU-fef8089b"),
        ] {
            let err = parse_visible_devices(Some(value), false).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!(
                    "invalid device {item:?} in NVIDIA_VISIBLE_DEVICES"
                )),
                "{value:?}: {msg}"
            );
        }
    }

    #[test]
    fn device_id_table() {
        use DeviceId::*;
        let ok: Vec<(&str, DeviceId)> = vec![
            ("0", Index(0)),
            ("7", Index(7)),
            ("007", Index(7)),
            ("4294967295", Index(u32::MAX)),
            (U1, GpuUuid(U1.into())),
            (
                "GPU-3F9A2C1E-7B44-5D0E-9A1B-2C3D4E5F6A7B",
                GpuUuid(U1.into()),
            ),
            (
                "gpu-3f9a2c1e-7b44-5d0e-9a1b-2c3D4e5f6a7b",
                GpuUuid(U1.into()),
            ),
            // PCI: 4- or 8-digit domain, any padding, upper or lower case
            ("0000:1b:00.0", PciBusId("00000000:1b:00.0".into())),
            ("00000000:1B:00.0", PciBusId("00000000:1b:00.0".into())),
            ("0:1b:0.0", PciBusId("00000000:1b:00.0".into())),
            ("0001:c1:1f.0", PciBusId("00000001:c1:1f.0".into())),
            ("DEADBEEF:FF:0a.0", PciBusId("deadbeef:ff:0a.0".into())),
            ("0000:1b:00", PciBusId("00000000:1b:00.0".into())),
            ("1:2:3", PciBusId("00000001:02:03.0".into())),
            // MIG
            (M1, MigUuid(M1.into())),
            (
                "mig-5C89E3B2-0A1F-5D6E-8B7C-9D0E1F2A3B4C",
                MigUuid(M1.into()),
            ),
            ("0:1", MigIndex { gpu: 0, mig: 1 }),
            ("12:06", MigIndex { gpu: 12, mig: 6 }),
        ];
        for (item, want) in ok {
            assert_eq!(parse_device_id(item), Ok(want), "{item:?}");
        }
        let bad: Vec<(&str, &str)> = vec![
            ("", "unknown device"),
            ("4294967296", "unknown device"),
            ("+1", "unknown device"),
            ("-1", "unknown device"),
            ("1.5", "unknown device"),
            ("0x1", "unknown device"),
            ("all", "keyword"),
            ("All", "keyword"),
            ("none", "keyword"),
            ("void", "keyword"),
            ("GPU-fef8089b", "prefixes are not accepted"),
            ("GPU-3f9a2c1e-7b44", "prefixes are not accepted"),
            ("GPU-", "not a GPU UUID"),
            ("GPU-????????-????-????-????-????????????", "not a GPU UUID"),
            (
                "GPU-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a7bc",
                "not a GPU UUID",
            ),
            ("GPU-3f9a2c1e7b445d0e9a1b2c3d4e5f6a7b", "not a GPU UUID"),
            ("GPU-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a7g", "not a GPU UUID"),
            (
                "MIG-GPU-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a7b/1/0",
                "pre-R470",
            ),
            ("MIG-5c89e3b2", "not a MIG UUID"),
            ("0000:1b:00.1", "function 0"),
            ("0000:1b:00.", "not a PCI bus id"),
            ("0000:1b:00.0.0", "not a PCI bus id"),
            ("000000000:1b:00.0", "not a PCI bus id"),
            ("0000:1bc:00.0", "not a PCI bus id"),
            ("0000:1b:100.0", "not a PCI bus id"),
            ("g000:1b:00.0", "not a PCI bus id"),
            ("0000::00.0", "not a PCI bus id"),
            ("1b:00.0", "needs its domain"),
            ("0:x", "<gpu index>:<mig index>"),
            ("0:", "<gpu index>:<mig index>"),
            (":1", "<gpu index>:<mig index>"),
            ("0:-1", "<gpu index>:<mig index>"),
            ("a:b:c:d", "unknown device"),
        ];
        for (item, reason) in bad {
            let err = parse_device_id(item).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!(
                    "invalid device {item:?} in NVIDIA_VISIBLE_DEVICES: "
                )),
                "{item:?}: {msg}"
            );
            assert!(msg.contains(reason), "{item:?}: {msg} lacks {reason:?}");
        }
    }

    #[test]
    fn device_id_display_round_trips() {
        for s in ["0", "42", U1, M1, "00000000:1b:00.0", "3:4"] {
            let id = parse_device_id(s).unwrap();
            assert_eq!(id.to_string(), s);
            assert_eq!(parse_device_id(&id.to_string()), Ok(id));
        }
    }

    // ---- §3 NVIDIA_DRIVER_CAPABILITIES ----

    #[test]
    fn capability_names_and_order() {
        let names: Vec<&str> = Capability::ALL.iter().map(Capability::as_str).collect();
        assert_eq!(
            names,
            ["compat32", "compute", "display", "graphics", "ngx", "utility", "video"]
        );
        let mut sorted = Capability::ALL;
        sorted.sort();
        assert_eq!(sorted, Capability::ALL, "declaration order is flag order");
        for c in Capability::ALL {
            assert_eq!(c.as_str().parse::<Capability>(), Ok(c));
            assert_eq!(c.to_string(), c.as_str());
        }
        for bad in ["Compute", "COMPUTE", " compute", "all", "none", ""] {
            assert_eq!(
                bad.parse::<Capability>(),
                Err(EnvError::UnknownCapability(bad.into()))
            );
        }
        assert_eq!(
            Capabilities::all().to_string(),
            "compat32,compute,display,graphics,ngx,utility,video"
        );
        let set: Capabilities = [Capability::Video, Capability::Compute, Capability::Video]
            .into_iter()
            .collect();
        assert_eq!(set.len(), 2);
        assert_eq!(set.to_string(), "compute,video");
        assert!(set.contains(Capability::Video) && !set.contains(Capability::Utility));
        assert_eq!(Capabilities::default().to_string(), "");
        assert!(Capabilities::default().is_empty());
    }

    #[test]
    fn capabilities_table() {
        use Capability::*;
        let all = Capabilities::all();
        let cu = caps(&[Compute, Utility]);
        let rows: Vec<(Option<&str>, bool, Capabilities, Capabilities)> = vec![
            // unset
            (None, true, all.clone(), all.clone()),
            (None, true, cu.clone(), cu.clone()),
            (None, false, all.clone(), cu.clone()),
            (None, false, caps(&[Utility, Video]), caps(&[Utility])),
            // empty: the default, legacy too
            (Some(""), false, all.clone(), cu.clone()),
            (Some(""), true, all.clone(), cu.clone()),
            // all anywhere: everything supported, other words unchecked
            (Some("all"), false, all.clone(), all.clone()),
            (Some("compute,all"), false, all.clone(), all.clone()),
            (Some(" all ,bogus"), false, all.clone(), all.clone()),
            (Some("all"), false, caps(&[Graphics]), caps(&[Graphics])),
            // lists
            (Some("compute"), false, all.clone(), caps(&[Compute])),
            (
                Some(" utility , compute ,,"),
                false,
                all.clone(),
                cu.clone(),
            ),
            (Some("video,video"), true, all.clone(), caps(&[Video])),
            (
                Some("ngx,display,compat32,graphics"),
                false,
                all.clone(),
                caps(&[Ngx, Display, Compat32, Graphics]),
            ),
            // non-empty but only separators: nothing at all
            (Some(","), false, all.clone(), Capabilities::default()),
            (Some(" , "), true, all.clone(), Capabilities::default()),
        ];
        for (value, legacy, supported, want) in rows {
            assert_eq!(
                parse_capabilities(value, legacy, &supported),
                Ok(want),
                "{value:?} legacy {legacy} supported {supported}"
            );
        }
    }

    #[test]
    fn capabilities_errors() {
        let all = Capabilities::all();
        let cu = caps(&[Capability::Compute, Capability::Utility]);
        for (value, supported, word) in [
            ("none", &all, "none"),
            ("foo", &all, "foo"),
            ("compute,comput", &all, "comput"),
            ("Compute", &all, "Compute"),
            ("compute utility", &all, "compute utility"),
            ("compute,graphics,bogus", &cu, "graphics"),
        ] {
            let err = parse_capabilities(Some(value), false, supported).unwrap_err();
            assert_eq!(
                err,
                EnvError::UnsupportedCapability {
                    word: word.into(),
                    supported: supported.clone()
                }
            );
            assert!(err.to_string().starts_with(&format!(
                "unsupported driver capability {word:?} in NVIDIA_DRIVER_CAPABILITIES"
            )));
        }
        assert_eq!(
            parse_capabilities(Some("foo"), false, &cu).unwrap_err().to_string(),
            "unsupported driver capability \"foo\" in NVIDIA_DRIVER_CAPABILITIES (supported: compute,utility)"
        );
        let none = Capabilities::default();
        assert!(parse_capabilities(Some("compute"), false, &none)
            .unwrap_err()
            .to_string()
            .ends_with("(supported: none)"));
    }

    #[test]
    fn capability_list_for_the_config() {
        use Capability::*;
        assert_eq!(parse_capability_list("all"), Ok(Capabilities::all()));
        assert_eq!(
            parse_capability_list("compute,all"),
            Ok(Capabilities::all())
        );
        assert_eq!(
            parse_capability_list(" compute , utility,"),
            Ok(caps(&[Compute, Utility]))
        );
        assert_eq!(
            parse_capability_list("compat32,compute,display,graphics,ngx,utility,video"),
            Ok(Capabilities::all())
        );
        assert_eq!(parse_capability_list(""), Ok(Capabilities::default()));
        for bad in ["bogus", "compute,bogus", "none", "Compute"] {
            let err = parse_capability_list(bad).unwrap_err();
            assert!(matches!(err, EnvError::UnknownCapability(_)));
            let word = bad.rsplit(',').next().unwrap();
            assert!(err.to_string().contains(&format!("{word:?}")), "{err}");
        }
    }

    // ---- §4 the require DSL ----

    fn req(s: &str) -> Requirement {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn facts<'a>(
        cuda: Option<&'a str>,
        driver: Option<&'a str>,
        arch: Option<&'a str>,
        brand: Option<&'a str>,
    ) -> Facts<'a> {
        Facts {
            cuda,
            driver,
            arch,
            brand,
        }
    }

    #[test]
    fn requirement_syntax_errors() {
        for (expr, reason) in [
            ("cuda", "no operator"),
            ("cuda>=", "no value"),
            (">=12", "no key"),
            ("foo>=1", "unknown key \"foo\""),
            ("cuda=>12", "unknown operator \"=>\""),
            ("cuda==12", "unknown operator \"==\""),
            ("cuda>>12", "unknown operator"),
            ("cuda!12", "unknown operator \"!\""),
            ("cuda>=abc", "\"abc\" is not a version"),
            ("cuda>=.1", "not a version"),
            ("cuda>=12-rc", "not a version"),
            ("cuda>=1<2", "\"1<2\" is not a version"),
            ("driver>=470 arch>=x", "\"x\" is not a version"),
            ("arch>=8.0,brand>tesla", "brand takes only"),
            ("cuda>=99999999999999999999", "not a version"),
            ("cuda>=18446744073709551615", "not a version"),
            // only the ASCII space separates clauses, as in the CLI
            ("cuda>=12.6\tbrand=tesla", "not a version"),
        ] {
            let err = expr.parse::<Requirement>().unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("invalid requirement expression {expr:?}: ")),
                "{expr:?}: {msg}"
            );
            assert!(msg.contains(reason), "{expr:?}: {msg} lacks {reason:?}");
        }
    }

    #[test]
    fn requirement_keys_are_case_insensitive_operators_exact() {
        let f = facts(Some("12.4"), Some("550.54.15"), Some("9.0"), Some("Tesla"));
        for (expr, want) in [
            ("CUDA>=12.4", true),
            ("Cuda>12.4", false),
            ("DRIVER>=550", true),
            ("Arch=9", true),
            ("BRAND=tesla", true),
            ("brand=TESLA", true),
            ("brand!=tesla", false),
            ("brand=GeForce", false),
            ("brand!=GeForce", true),
        ] {
            assert_eq!(req(expr).is_satisfied(&f), want, "{expr}");
        }
    }

    #[test]
    fn version_operators() {
        // (fact, expression value, op, expected)
        let rows = [
            ("12.4", ">=", "12.4", true),
            ("12.4", ">", "12.4", false),
            ("12.4", "<=", "12.4", true),
            ("12.4", "<", "12.4", false),
            ("12.4", "=", "12.4", true),
            ("12.4", "!=", "12.4", false),
            ("12.4", "<", "12.10", true),
            ("12.10", ">", "12.9", true),
            ("12", "=", "12.0", true),
            ("12.0.0", "=", "12", true),
            ("12", "!=", "12.0.0", false),
            ("12.00", "=", "12", true),
            ("12.0.1", ">", "12", true),
            ("12", "<", "12.0.1", true),
            ("12.05", "=", "12.5", true),
            ("12..4", "=", "12.4", true),
            ("12.4.", "=", "12.4", true),
            ("11.8", ">=", "12.0", false),
            ("13.0", ">=", "12.6", true),
            ("550.54.15", ">=", "470", true),
            ("550.54.15", "<", "471", false),
            ("470.82.01", ">=", "470", true),
            ("470.82.01", "<", "471", true),
            ("470", "<", "470.0.1", true),
        ];
        for key in ["cuda", "driver", "arch"] {
            for (fact, op, value, want) in rows {
                let f = match key {
                    "cuda" => facts(Some(fact), None, None, None),
                    "driver" => facts(None, Some(fact), None, None),
                    _ => facts(None, None, Some(fact), None),
                };
                let expr = format!("{key}{op}{value}");
                assert_eq!(req(&expr).is_satisfied(&f), want, "{fact} vs {expr}");
            }
        }
    }

    #[test]
    fn unknown_facts_satisfy() {
        let r = req("cuda>=99 driver>=999,arch=9.0,brand=tesla");
        assert!(r.is_satisfied(&Facts::default()));
        let r = req("cuda>=99,driver>=999,arch=9.0,brand=tesla");
        assert!(r.is_satisfied(&Facts::default()));
        // only the unknown one passes
        let f = facts(Some("12.4"), None, None, None);
        assert!(!req("cuda>=99,driver>=999").is_satisfied(&f));
        // a fact that is not a version counts as unknown
        let f = facts(Some("n/a"), None, None, None);
        assert!(req("cuda>=99").is_satisfied(&f));
    }

    #[test]
    fn or_and_structure() {
        let fc = "cuda>=12.6 brand=tesla,driver>=470,driver<471";
        let r = req(fc);
        let rows = [
            // new enough CUDA: first clause
            (
                facts(Some("12.6"), Some("560.28.03"), None, Some("GeForce")),
                true,
            ),
            (
                facts(Some("13.0"), Some("580.1"), Some("9.0"), Some("Tesla")),
                true,
            ),
            // old CUDA, Tesla on R470: forward-compat escape
            (
                facts(Some("11.4"), Some("470.82.01"), Some("8.0"), Some("Tesla")),
                true,
            ),
            (
                facts(Some("11.4"), Some("470.82.01"), Some("8.0"), Some("tesla")),
                true,
            ),
            // old CUDA, Tesla but not R470
            (
                facts(Some("12.4"), Some("550.54.15"), Some("9.0"), Some("Tesla")),
                false,
            ),
            (
                facts(Some("11.2"), Some("460.1"), Some("8.0"), Some("Tesla")),
                false,
            ),
            // old CUDA, R470 but GeForce
            (
                facts(
                    Some("11.4"),
                    Some("470.82.01"),
                    Some("8.6"),
                    Some("GeForce"),
                ),
                false,
            ),
        ];
        for (f, want) in rows {
            assert_eq!(r.is_satisfied(&f), want, "{f:?}");
        }
        // extra spaces and commas are skipped
        let r2 = req("  cuda>=12.6   brand=tesla,,driver>=470,driver<471, ");
        for (f, want) in rows {
            assert_eq!(r2.is_satisfied(&f), want, "{f:?}");
        }
        // a clause of only commas is an empty AND, which holds (as in the CLI)
        let f = facts(Some("11.0"), None, None, None);
        assert!(!req("cuda>=99").is_satisfied(&f));
        assert!(req("cuda>=99 ,").is_satisfied(&f));
        // empty expressions always hold
        for e in ["", "   ", ","] {
            assert!(req(e).is_satisfied(&f), "{e:?}");
        }
        assert_eq!(r.to_string(), fc);
        assert_eq!(r.as_str(), fc);
    }

    #[test]
    fn needs_nvml_facts() {
        assert!(!req("driver>=470").needs_nvml_facts());
        assert!(!req("").needs_nvml_facts());
        assert!(req("driver>=470 cuda>=12").needs_nvml_facts());
        assert!(req("arch>=8.0").needs_nvml_facts());
        assert!(req("driver>=470,BRAND=tesla").needs_nvml_facts());
    }

    #[test]
    fn failure_message_shape() {
        const HINT: &str =
            ", please update your driver to a newer version, or use an earlier cuda container";
        let system = facts(Some("12.4"), Some("550.54.15"), None, None);
        let tesla = facts(None, None, Some("9.0"), Some("Tesla"));
        let rows: [(&str, Option<String>); 9] = [
            (
                "cuda>=12.6 brand=tesla,driver>=470,driver<471",
                Some(format!(
                    "requirement error: unsatisfied condition: cuda>=12.6{HINT}"
                )),
            ),
            (
                "cuda>=12.6,driver>=600",
                Some(format!(
                    "requirement error: unsatisfied condition: cuda>=12.6,driver>=600{HINT}"
                )),
            ),
            // the CLI reports the first clause, even when another one failed
            (
                "brand=geforce cuda>=13",
                Some("requirement error: unsatisfied condition: brand=geforce".into()),
            ),
            (
                "driver>=560",
                Some("requirement error: unsatisfied condition: driver>=560".into()),
            ),
            // the hint needs the exact lower-case `cuda>=` prefix
            (
                "cuda>12.4",
                Some("requirement error: unsatisfied condition: cuda>12.4".into()),
            ),
            (
                "CUDA>=13",
                Some("requirement error: unsatisfied condition: CUDA>=13".into()),
            ),
            (
                "  cuda>=13",
                Some(format!(
                    "requirement error: unsatisfied condition: cuda>=13{HINT}"
                )),
            ),
            ("cuda>=12.4", None),
            ("cuda>=12.6 brand=tesla", None),
        ];
        for (expr, want) in rows {
            let got =
                check_requirements(&[req(expr)], &system, &[tesla]).map_err(|e| e.to_string());
            match want {
                Some(msg) => assert_eq!(got, Err(msg), "{expr}"),
                None => assert_eq!(got, Ok(()), "{expr}"),
            }
        }
        let err = check_requirements(&[req("cuda>=13")], &system, &[]).unwrap_err();
        assert_eq!(
            err,
            EnvError::Unsatisfied {
                condition: "cuda>=13".into(),
                update_driver_hint: true
            }
        );
    }

    #[test]
    fn requirements_are_anded_and_checked_per_gpu() {
        let system = facts(Some("12.4"), Some("550.54.15"), None, None);
        let tesla = facts(None, None, Some("9.0"), Some("Tesla"));
        let geforce = facts(None, None, Some("8.6"), Some("GeForce"));
        let reqs = [req("cuda>=12.0"), req("brand=tesla"), req("arch>=9.0")];
        assert_eq!(check_requirements(&reqs, &system, &[tesla]), Ok(()));
        assert_eq!(check_requirements(&reqs, &system, &[tesla, tesla]), Ok(()));
        // any GPU failing fails the container; the first failing requirement is reported
        let err = check_requirements(&reqs, &system, &[tesla, geforce]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "requirement error: unsatisfied condition: brand=tesla"
        );
        let err = check_requirements(&reqs[2..], &system, &[geforce, tesla]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "requirement error: unsatisfied condition: arch>=9.0"
        );
        // separate requirements are ANDed even when each alone would hold
        let old = facts(Some("11.0"), Some("450.1"), None, None);
        assert!(check_requirements(&[req("cuda>=11")], &old, &[]).is_ok());
        assert!(check_requirements(&[req("driver>=450")], &old, &[]).is_ok());
        assert!(check_requirements(&[req("cuda>=11"), req("driver>=460")], &old, &[]).is_err());
        // no requirements at all
        assert_eq!(check_requirements(&[], &system, &[geforce]), Ok(()));
    }

    #[test]
    fn gpu_less_evaluation_and_fact_fallback() {
        // No GPU: arch and brand unknown even if the system facts carry them.
        let system = facts(
            Some("12.4"),
            Some("550.54.15"),
            Some("5.0"),
            Some("GeForce"),
        );
        let reqs = [req("arch>=8.0"), req("brand=tesla")];
        assert_eq!(check_requirements(&reqs, &system, &[]), Ok(()));
        assert!(check_requirements(&[req("cuda>=12.6")], &system, &[]).is_err());
        assert!(check_requirements(&[req("driver>=560")], &system, &[]).is_err());
        // GPU facts without cuda/driver take the system's
        let gpu = facts(None, None, Some("9.0"), None);
        assert!(check_requirements(&[req("cuda>=12.6")], &system, &[gpu]).is_err());
        assert!(check_requirements(&[req("driver<500")], &system, &[gpu]).is_err());
        // and a GPU's own facts win
        let gpu = facts(Some("12.8"), None, Some("9.0"), Some("Tesla"));
        assert!(check_requirements(&[req("cuda>=12.6,brand=tesla")], &system, &[gpu]).is_ok());
        // nothing known at all: everything holds
        let none = Facts::default();
        assert!(check_requirements(&[req("cuda>=99,driver>=999")], &none, &[]).is_ok());
    }

    #[test]
    fn requirements_from_env_selection() {
        let env = [
            ("PATH", "/usr/bin"),
            (
                "NVIDIA_REQUIRE_CUDA",
                "cuda>=12.4 brand=tesla,driver>=470,driver<471",
            ),
            ("NVIDIA_REQUIRE_JETPACK", "csv-mounts=all"),
            ("NVIDIA_REQUIRE_JETPACK_HOST_MOUNTS", "whatever"),
            ("NVIDIA_REQUIRE_ARCH", "arch>=8.0"),
            ("nvidia_require_lower", "cuda>=99"),
            ("XNVIDIA_REQUIRE_X", "cuda>=99"),
            ("NVIDIA_REQUIRE_", "driver>=470"),
            ("NVIDIA_REQUIRE_EMPTY", ""),
            ("CUDA_VERSION", "12.4.1"),
        ];
        let got: Vec<String> = requirements_from_env(env)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "cuda>=12.4 brand=tesla,driver>=470,driver<471",
                "arch>=8.0",
                "driver>=470",
                ""
            ]
        );
        assert_eq!(requirements_from_env([]), Ok(vec![]));
    }

    #[test]
    fn requirements_from_env_names_the_variable() {
        let err = requirements_from_env([("NVIDIA_REQUIRE_FOO", "cuda>=x")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid requirement expression \"cuda>=x\" in NVIDIA_REQUIRE_FOO: "),
            "{err}"
        );
        // a JETPACK value is never parsed
        assert_eq!(
            requirements_from_env([("NVIDIA_REQUIRE_JETPACK", "not a >= requirement")]),
            Ok(vec![])
        );
    }

    #[test]
    fn legacy_cuda_requirement() {
        let legacy = |cuda_version: &str| {
            requirements_from_env([
                ("CUDA_VERSION", cuda_version),
                ("NVIDIA_REQUIRE_X", "driver>=1"),
            ])
            .map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        for (v, want) in [
            ("12.4.1", "cuda>=12.4"),
            ("12.4", "cuda>=12.4"),
            ("12", "cuda>=12.0"),
            ("v11.0.3", "cuda>=11.0"),
            ("9.0.176", "cuda>=9.0"),
            ("0.0.0", "cuda>=0.0"),
            ("12.4.1-rc.1+build.5", "cuda>=12.4"),
            ("12.4.1+20240101", "cuda>=12.4"),
            ("12.4.1-rc-1", "cuda>=12.4"),
        ] {
            assert_eq!(
                legacy(v),
                Ok(vec![want.to_owned(), "driver>=1".into()]),
                "{v}"
            );
        }
        for v in [
            "12.04",
            "012.4",
            "12.4-rc",
            "12.4.1-",
            "12.4.1-01",
            "12.4.1+",
            "12.4.1.2",
            "vv12",
            "12.",
            "x",
            " 12.4",
            "12.4.1-rc..1",
            "4294967296.0",
        ] {
            assert_eq!(
                legacy(v),
                Err(EnvError::InvalidCudaVersion(v.into())),
                "{v}"
            );
        }
        assert_eq!(
            EnvError::InvalidCudaVersion("x".into()).to_string(),
            "invalid CUDA_VERSION \"x\": expected a version such as 12.4 or 12.4.1"
        );
        // an empty NVIDIA_REQUIRE_CUDA still means legacy; a set one means modern
        let got = requirements_from_env([("CUDA_VERSION", "11.8.0"), ("NVIDIA_REQUIRE_CUDA", "")])
            .unwrap();
        assert_eq!(got, vec![req("cuda>=11.8"), req("")]);
        let got = requirements_from_env([
            ("CUDA_VERSION", "11.8.0"),
            ("NVIDIA_REQUIRE_CUDA", "cuda>=11.8"),
        ])
        .unwrap();
        assert_eq!(got, vec![req("cuda>=11.8")]);
        // empty CUDA_VERSION: not legacy, not parsed
        assert_eq!(requirements_from_env([("CUDA_VERSION", "")]), Ok(vec![]));
        // the legacy requirement carries the driver-update hint
        let err = check_requirements(
            &requirements_from_env([("CUDA_VERSION", "12.6.0")]).unwrap(),
            &facts(Some("12.4"), None, None, None),
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "requirement error: unsatisfied condition: cuda>=12.6, please update your driver to a newer version, or use an earlier cuda container"
        );
    }

    #[test]
    fn legacy_detection() {
        for (cuda_version, require_cuda, want) in [
            (Some("12.4.1"), None, true),
            (Some("12.4.1"), Some(""), true),
            (Some("12.4.1"), Some("cuda>=12.4"), false),
            (Some(""), None, false),
            (None, None, false),
            (None, Some("cuda>=12.4"), false),
            (Some("garbage"), None, true),
        ] {
            assert_eq!(
                is_legacy_image(cuda_version, require_cuda),
                want,
                "{cuda_version:?} {require_cuda:?}"
            );
        }
    }

    #[test]
    fn go_bool() {
        for v in ["1", "t", "T", "TRUE", "true", "True"] {
            assert!(go_bool_true(v), "{v}");
        }
        for v in [
            "", "0", "f", "false", "FALSE", "tRUE", "TRue", "yes", "y", "on", " true", "true ",
            "2", "enabled",
        ] {
            assert!(!go_bool_true(v), "{v}");
        }
    }

    // ---- never panic ----

    fn facts_strategy() -> impl Strategy<Value = [Option<String>; 4]> {
        let one = || proptest::option::of("[0-9.]{0,8}|\\PC{0,8}");
        [one(), one(), one(), one()]
    }

    proptest! {
        #[test]
        fn visible_devices_never_panic(s in "\\PC*", legacy: bool) {
            let _ = parse_visible_devices(Some(&s), legacy);
        }

        #[test]
        fn visible_devices_shaped_never_panic(
            s in "([0-9a-fA-F:.,GPUMIgpumi -]|all|none|void|ALL|GPU-|MIG-|€|ü|𐍈|\u{301}|\u{fffd}){0,40}",
            legacy: bool,
        ) {
            if let Ok(Some(DeviceRequest::List(ids))) = parse_visible_devices(Some(&s), legacy) {
                prop_assert!(!ids.is_empty());
                let mut dedup = ids.clone();
                dedup.sort();
                dedup.dedup();
                prop_assert_eq!(dedup.len(), ids.len());
            }
        }

        #[test]
        fn device_id_never_panics(s in "\\PC*") {
            if let Ok(id) = parse_device_id(&s) {
                // whatever parses prints back to itself, normalised
                prop_assert_eq!(parse_device_id(&id.to_string()), Ok(id));
            }
        }

        #[test]
        fn pci_normalisation(domain in 0u32.., bus in 0u32..256, dev in 0u32..256, wide: bool, upper: bool) {
            let mut s = if wide {
                format!("{domain:08x}:{bus:02x}:{dev:02x}.0")
            } else {
                format!("{domain:x}:{bus:x}:{dev:x}.0")
            };
            if upper { s = s.to_ascii_uppercase(); }
            prop_assert_eq!(
                parse_device_id(&s),
                Ok(DeviceId::PciBusId(format!("{domain:08x}:{bus:02x}:{dev:02x}.0")))
            );
        }

        #[test]
        fn capabilities_never_panic(s in "\\PC*", legacy: bool, mask in 0u8..128) {
            let supported: Capabilities = Capability::ALL
                .into_iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, c)| c)
                .collect();
            if let Ok(c) = parse_capabilities(Some(&s), legacy, &supported) {
                prop_assert!(c.iter().all(|x| supported.contains(*x)));
            }
            let _ = parse_capability_list(&s);
        }

        #[test]
        fn requirement_never_panics(s in "\\PC*", f in facts_strategy()) {
            if let Ok(r) = s.parse::<Requirement>() {
                let facts = Facts {
                    cuda: f[0].as_deref(),
                    driver: f[1].as_deref(),
                    arch: f[2].as_deref(),
                    brand: f[3].as_deref(),
                };
                let _ = r.is_satisfied(&facts);
                let _ = check_requirements(std::slice::from_ref(&r), &facts, &[facts]);
                let _ = check_requirements(&[r], &facts, &[]);
            }
        }

        #[test]
        fn requirement_shaped_never_panics(
            s in "((cuda|driver|arch|brand|CUDA|x|€)(=|!=|<|<=|>|>=|=>|!)([0-9.]{0,6}|tesla|€|𐍈|\u{fffd})[, ]{0,2}){0,5}",
            f in facts_strategy(),
        ) {
            if let Ok(r) = s.parse::<Requirement>() {
                let facts = Facts {
                    cuda: f[0].as_deref(),
                    driver: f[1].as_deref(),
                    arch: f[2].as_deref(),
                    brand: f[3].as_deref(),
                };
                let ok = r.is_satisfied(&facts);
                let checked = check_requirements(std::slice::from_ref(&r), &facts, &[facts]);
                prop_assert_eq!(ok, checked.is_ok());
            }
        }

        #[test]
        fn trailing_zero_components_do_not_matter(a in "[0-9]{1,4}(\\.[0-9]{1,4}){0,3}", b in "[0-9]{1,4}(\\.[0-9]{1,4}){0,3}") {
            for op in ["=", "!=", "<", "<=", ">", ">="] {
                let r1 = req(&format!("cuda{op}{b}"));
                let r2 = req(&format!("cuda{op}{b}.0.0"));
                let f1 = Facts { cuda: Some(&a), ..Facts::default() };
                let a0 = format!("{a}.0");
                let f2 = Facts { cuda: Some(&a0), ..Facts::default() };
                prop_assert_eq!(r1.is_satisfied(&f1), r2.is_satisfied(&f2));
            }
            // exactly one of <, =, > holds
            let f = Facts { cuda: Some(&a), ..Facts::default() };
            let n = ["<", "=", ">"].iter().filter(|op| req(&format!("cuda{op}{b}")).is_satisfied(&f)).count();
            prop_assert_eq!(n, 1);
        }

        #[test]
        fn env_never_panics(pairs in proptest::collection::vec(("(NVIDIA_REQUIRE_|CUDA_VERSION|NVIDIA_REQUIRE_CUDA)?\\PC{0,6}", "\\PC{0,20}"), 0..6)) {
            let _ = requirements_from_env(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
    }
}
