//! CUDA forward compatibility: whether an image's `/usr/local/cuda/compat` libraries (a
//! `libcuda.so.<version>` newer than the host's driver, from NVIDIA's `cuda-compat` package)
//! must come first in the container's linker search, by NVIDIA's toolkit rule
//! (`nvidia-cdi-hook enable-cuda-compat`): with the compat libcuda's
//! `.note.cuda.fwd_compatibility` ELF note, the host driver's major must be one it lists and
//! the compat version must be newer than the host's; without the note (older releases), the
//! compat major must be greater than the host's. Pure: the caller reads the image.

use std::path::PathBuf;

/// The compat directory NVIDIA's hook looks at, as the container sees it.
pub const COMPAT_DIR: &str = "/usr/local/cuda/compat";

/// The ELF note section NVIDIA's compat libcuda carries.
pub const NOTE_SECTION: &str = ".note.cuda.fwd_compatibility";

/// What the note says: the host driver majors this compat library supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompatNote {
    pub driver_majors: Vec<u64>,
}

/// Parses the note section: an ELF note (`namesz`, `descsz`, `type`, 4-byte aligned) named
/// `NVIDIA Corporation` whose descriptor is JSON with a `Driver` list of majors. `None` for
/// anything else, as NVIDIA's hook ignores what it cannot read.
pub fn parse_note(section: &[u8]) -> Option<CompatNote> {
    let word = |o: usize| -> Option<usize> {
        let b: [u8; 4] = section.get(o..o + 4)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(b)).ok()
    };
    let (namesz, descsz) = (word(0)?, word(4)?);
    if namesz == 0 || descsz == 0 {
        return None;
    }
    let name_end = 12usize.checked_add(namesz)?;
    let name = section.get(12..name_end)?;
    if name.split(|&b| b == 0).next()? != b"NVIDIA Corporation" {
        return None;
    }
    let desc_start = 12 + namesz.checked_add(3)? / 4 * 4;
    let desc = section.get(desc_start..desc_start.checked_add(descsz)?)?;
    let desc = desc.split(|&b| b == 0).next()?;
    // NVIDIA's libraries write `"driver"`; its hook matches keys ignoring case (Go's JSON), so
    // this does too.
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(desc).ok()?;
    let driver = json
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("driver"))
        .map(|(_, v)| v);
    let driver_majors = match driver {
        None => Vec::new(),
        Some(v) => v
            .as_array()?
            .iter()
            .map(serde_json::Value::as_u64)
            .collect::<Option<Vec<u64>>>()?,
    };
    Some(CompatNote { driver_majors })
}

/// A dotted version as numbers (`535.261.03` → `[535, 261, 3]`); `None` if any part is not a
/// number.
fn version(s: &str) -> Option<Vec<u64>> {
    s.split('.').map(|p| p.parse().ok()).collect()
}

/// Whether the compat library `libcuda.so.<compat_version>` is to be used on a host whose
/// driver is `host_driver`.
pub fn use_compat(compat_version: &str, note: Option<&CompatNote>, host_driver: &str) -> bool {
    let (Some(compat), Some(host)) = (version(compat_version), version(host_driver)) else {
        return false;
    };
    match note {
        Some(n) => n.driver_majors.contains(&host[0]) && compat > host,
        None => host[0] < compat[0],
    }
}

/// What the plan puts first in the linker cache when the rule says so.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CompatLibs {
    /// The version of the compat libcuda.
    pub version: String,
    /// `(soname, container path)` of each library in the compat dir (`libcuda.so.1`, …).
    pub libraries: Vec<(String, PathBuf)>,
}

/// The compat libcuda's version, if `name` is `libcuda.so.<major>.<minor>[...]` (NVIDIA's glob
/// `libcuda.so.*.*`).
pub fn libcuda_version(name: &str) -> Option<&str> {
    let v = name.strip_prefix("libcuda.so.")?;
    (v.contains('.') && version(v).is_some()).then_some(v)
}

/// Whether a compat-dir file name is a soname link: `lib<x>.so.<n>`.
pub fn is_soname(name: &str) -> bool {
    name.starts_with("lib")
        && name
            .rsplit_once(".so.")
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &str, desc: &str) -> Vec<u8> {
        let mut n = Vec::new();
        let name = format!("{name}\0");
        n.extend((name.len() as u32).to_le_bytes());
        n.extend((desc.len() as u32).to_le_bytes());
        n.extend(1u32.to_le_bytes());
        n.extend(name.as_bytes());
        while n.len() % 4 != 0 {
            n.push(0);
        }
        n.extend(desc.as_bytes());
        n
    }

    #[test]
    fn note_parsing() {
        let good = note(
            "NVIDIA Corporation",
            r#"{"Format": 1, "CUDA Version": "12.9", "Driver": [535, 550, 570], "Device": [1]}"#,
        );
        assert_eq!(
            parse_note(&good),
            Some(CompatNote {
                driver_majors: vec![535, 550, 570]
            })
        );
        // As NVIDIA's compat libraries write it: lower-case keys.
        assert_eq!(
            parse_note(&note(
                "NVIDIA Corporation",
                r#"{"format": 1, "CUDA version": "12.9", "driver": [535], "device": []}"#
            )),
            Some(CompatNote {
                driver_majors: vec![535]
            })
        );
        assert_eq!(
            parse_note(&note("NVIDIA Corporation", r#"{"driver": ["x"]}"#)),
            None
        );
        assert_eq!(
            parse_note(&note("Someone Else", r#"{"Driver":[535]}"#)),
            None
        );
        assert_eq!(parse_note(&note("NVIDIA Corporation", "not json")), None);
        assert_eq!(parse_note(&good[..20]), None);
        assert_eq!(parse_note(&[]), None);
        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_note(&huge), None);
    }

    #[test]
    fn the_rule() {
        let n = CompatNote {
            driver_majors: vec![535, 550],
        };
        // With the note: a listed host major and a newer compat version.
        assert!(use_compat("575.57.08", Some(&n), "535.261.03"));
        assert!(
            !use_compat("575.57.08", Some(&n), "525.147.05"),
            "major not listed"
        );
        assert!(
            !use_compat("535.104.05", Some(&n), "535.261.03"),
            "older compat"
        );
        assert!(
            !use_compat("535.261.03", Some(&n), "535.261.03"),
            "same version"
        );
        // Without it: only a newer major.
        assert!(use_compat("545.23.08", None, "535.261.03"));
        assert!(!use_compat("535.300.01", None, "535.261.03"));
        assert!(!use_compat("x.y", None, "535.261.03"));
        assert!(!use_compat("545.23.08", None, ""));
    }

    #[test]
    fn names() {
        assert_eq!(libcuda_version("libcuda.so.575.57.08"), Some("575.57.08"));
        assert_eq!(libcuda_version("libcuda.so.1"), None);
        assert_eq!(libcuda_version("libcuda.so"), None);
        assert_eq!(libcuda_version("libcuda.so.5x.1"), None);
        assert!(is_soname("libcuda.so.1"));
        assert!(is_soname("libnvidia-nvvm.so.4"));
        assert!(!is_soname("libcuda.so.575.57.08"));
        assert!(!is_soname("libcuda.so"));
        assert!(!is_soname("notes.txt"));
    }
}
