//! The container's view of `/proc/driver/nvidia`, as libnvidia-container builds it: a tmpfs
//! over the driver's directory holding copies of `params` (with `ModifyDeviceFiles: 0`),
//! `version` and `registry`, and read-only binds of the selected GPUs' `gpus/<bus id>`
//! directories and MIG devices' access files. Pure: the caller reads the host's tree under
//! `proc-root` into [`HostProcDriver`]; this decides what the container sees.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::inventory::Gpu;
use crate::plan::PlannedMig;

/// The driver's directory as the container sees it (its runtime-mounted procfs).
pub const PROC_DRIVER: &str = "/proc/driver/nvidia";

/// The files NVIDIA copies into the container's tmpfs, in its order. The rest of the
/// directory (other GPUs, `capabilities`, `warnings`, `patches`, …) is hidden.
pub const COPIED: [&str; 3] = ["params", "version", "registry"];

/// One file of the host's driver directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFile {
    pub contents: String,
    /// Permission bits (procfs shows `0444`).
    pub mode: u32,
}

/// What the caller found under `<proc-root>/driver/nvidia`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostProcDriver {
    /// The directory itself: `<proc-root>/driver/nvidia`.
    pub dir: PathBuf,
    /// Those of [`COPIED`] that exist, by name.
    pub files: BTreeMap<String, HostFile>,
    /// The entries of `gpus/` (bus ids as the driver spells them).
    pub gpu_dirs: BTreeSet<String>,
    /// Files present below `capabilities/`, relative to the driver directory
    /// (`capabilities/gpu1/mig/gi2/access`).
    pub capability_files: BTreeSet<PathBuf>,
}

/// A file the container's tmpfs holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct MaskFile {
    pub name: String,
    pub contents: String,
    pub mode: u32,
}

/// A host directory or file bound read-only at `target`, a path relative to the tmpfs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct MaskBind {
    pub source: PathBuf,
    pub target: PathBuf,
    pub dir: bool,
}

/// The masked directory: what goes in the tmpfs over [`PROC_DRIVER`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProcMask {
    /// The container path masked: always [`PROC_DRIVER`].
    pub target: PathBuf,
    pub files: Vec<MaskFile>,
    pub binds: Vec<MaskBind>,
    /// MIG access files the host's directory lacks (logged; NVIDIA fails on these).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    #[error("GPU {bus_id}: no gpus/{bus_id} in {} to show in the container (set mask-proc-driver = false in [gres-oci] to skip masking)", .dir.display())]
    MissingGpuDir { bus_id: String, dir: PathBuf },
}

/// `params` with `ModifyDeviceFiles: 1` turned into `0`, so that NVML and libcuda in the
/// container never create or chmod device nodes for GPUs it was not given. Only that exact
/// line changes, as in NVIDIA's CLI and its CDI hook; any other value is kept.
pub fn params_without_node_modification(params: &str) -> String {
    let mut out = String::with_capacity(params.len());
    for line in params.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        if body == "ModifyDeviceFiles: 1" {
            out.push_str("ModifyDeviceFiles: 0");
        } else {
            out.push_str(body);
        }
        out.push_str(nl);
    }
    out
}

/// The host's entry of `gpus/` for `bus_id`: the driver names it with a 4-digit domain, NVML
/// and the inventory may use 8 digits; case-insensitive (NVML is upper-case).
fn gpu_dir<'a>(bus_id: &str, present: &'a BTreeSet<String>) -> Option<&'a String> {
    let norm = |s: &str| -> Option<String> {
        let (domain, rest) = s.split_once(':')?;
        let d = u32::from_str_radix(domain, 16).ok()?;
        Some(format!("{d:04x}:{}", rest.to_ascii_lowercase()))
    };
    let want = norm(bus_id)?;
    present.iter().find(|p| norm(p).as_deref() == Some(&want))
}

/// What the container sees in its `/proc/driver/nvidia`: the copied files (params edited),
/// the selected GPUs' directories and their MIG devices' access files.
///
/// # Errors
/// A selected GPU without its `gpus/<bus id>` directory on the host.
pub fn mask(
    host: &HostProcDriver,
    gpus: &[Gpu],
    migs: &[PlannedMig],
) -> Result<ProcMask, MaskError> {
    let files = COPIED
        .iter()
        .filter_map(|name| {
            let f = host.files.get(*name)?;
            let contents = if *name == "params" {
                params_without_node_modification(&f.contents)
            } else {
                f.contents.clone()
            };
            Some(MaskFile {
                name: (*name).to_owned(),
                contents,
                mode: f.mode & 0o444,
            })
        })
        .collect();
    let mut binds = Vec::new();
    for g in gpus {
        let name =
            gpu_dir(&g.pci_bus_id, &host.gpu_dirs).ok_or_else(|| MaskError::MissingGpuDir {
                bus_id: g.pci_bus_id.clone(),
                dir: host.dir.clone(),
            })?;
        let rel = Path::new("gpus").join(name);
        binds.push(MaskBind {
            source: host.dir.join(&rel),
            target: rel,
            dir: true,
        });
    }
    let mut missing = Vec::new();
    for m in migs {
        let gi = PathBuf::from(format!("capabilities/gpu{}/mig/gi{}", m.parent_minor, m.gi));
        for rel in [
            gi.join("access"),
            gi.join(format!("ci{}", m.ci)).join("access"),
        ] {
            if host.capability_files.contains(&rel) {
                binds.push(MaskBind {
                    source: host.dir.join(&rel),
                    target: rel,
                    dir: false,
                });
            } else {
                missing.push(rel.display().to_string());
            }
        }
    }
    binds.sort();
    binds.dedup();
    Ok(ProcMask {
        target: PathBuf::from(PROC_DRIVER),
        files,
        binds,
        missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARAMS: &str = "ResmanDebugLevel: 4294967295\nModifyDeviceFiles: 1\nDeviceFileUID: 0\nDeviceFileGID: 0\nDeviceFileMode: 438\n";

    fn gpu(minor: u32, bus: &str) -> Gpu {
        Gpu {
            index: minor,
            minor,
            uuid: None,
            pci_bus_id: bus.into(),
            model: None,
            arch: None,
            brand: None,
            migs: vec![],
        }
    }

    fn host() -> HostProcDriver {
        let file = |c: &str| HostFile {
            contents: c.into(),
            mode: 0o100444,
        };
        HostProcDriver {
            dir: "/p/driver/nvidia".into(),
            files: [
                ("params".to_string(), file(PARAMS)),
                ("version".to_string(), file("NVRM version: x  550.54.15\n")),
            ]
            .into_iter()
            .collect(),
            gpu_dirs: ["0000:1b:00.0", "0000:3d:00.0", "0000:86:00.0"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            capability_files: [
                "capabilities/gpu1/mig/gi2/access",
                "capabilities/gpu1/mig/gi2/ci0/access",
                "capabilities/gpu1/mig/gi3/access",
            ]
            .iter()
            .map(PathBuf::from)
            .collect(),
        }
    }

    #[test]
    fn params_edit_touches_only_the_exact_line() {
        let p = params_without_node_modification(PARAMS);
        assert!(p.contains("\nModifyDeviceFiles: 0\n"), "{p}");
        assert_eq!(p.len(), PARAMS.len());
        assert_eq!(
            p.replace("ModifyDeviceFiles: 0", "ModifyDeviceFiles: 1"),
            PARAMS
        );
        for kept in [
            "ModifyDeviceFiles: 0\n",
            "ModifyDeviceFiles: 11\n",
            "XModifyDeviceFiles: 1",
            "",
        ] {
            assert_eq!(params_without_node_modification(kept), kept);
        }
        assert_eq!(
            params_without_node_modification("ModifyDeviceFiles: 1"),
            "ModifyDeviceFiles: 0"
        );
    }

    #[test]
    fn only_the_selected_gpus_are_shown() {
        let gpus = [gpu(2, "00000000:1B:00.0"), gpu(1, "0000:86:00.0")];
        let m = mask(&host(), &gpus, &[]).unwrap();
        assert_eq!(m.target, PathBuf::from("/proc/driver/nvidia"));
        let files: Vec<_> = m.files.iter().map(|f| (f.name.as_str(), f.mode)).collect();
        assert_eq!(files, [("params", 0o444), ("version", 0o444)]);
        assert!(m.files[0].contents.contains("ModifyDeviceFiles: 0"));
        let binds: Vec<_> = m
            .binds
            .iter()
            .map(|b| {
                (
                    b.source.display().to_string(),
                    b.target.display().to_string(),
                    b.dir,
                )
            })
            .collect();
        assert_eq!(
            binds,
            [
                (
                    "/p/driver/nvidia/gpus/0000:1b:00.0".to_string(),
                    "gpus/0000:1b:00.0".to_string(),
                    true
                ),
                (
                    "/p/driver/nvidia/gpus/0000:86:00.0".to_string(),
                    "gpus/0000:86:00.0".to_string(),
                    true
                ),
            ]
        );
        // No GPU (`none`): the files, and an empty gpus/.
        let m = mask(&host(), &[], &[]).unwrap();
        assert!(m.binds.is_empty());
        assert_eq!(m.files.len(), 2);
    }

    #[test]
    fn mig_access_files_of_the_selected_devices() {
        let migs = [
            PlannedMig {
                parent_minor: 1,
                uuid: "MIG-a".into(),
                gi: 2,
                ci: 0,
            },
            PlannedMig {
                parent_minor: 1,
                uuid: "MIG-b".into(),
                gi: 3,
                ci: 1,
            },
        ];
        let m = mask(&host(), &[gpu(1, "0000:86:00.0")], &migs).unwrap();
        let targets: Vec<_> = m
            .binds
            .iter()
            .filter(|b| !b.dir)
            .map(|b| b.target.display().to_string())
            .collect();
        assert_eq!(
            targets,
            [
                "capabilities/gpu1/mig/gi2/access",
                "capabilities/gpu1/mig/gi2/ci0/access",
                "capabilities/gpu1/mig/gi3/access",
            ]
        );
        assert_eq!(m.missing, ["capabilities/gpu1/mig/gi3/ci1/access"]);
    }

    #[test]
    fn a_gpu_without_its_directory_is_an_error() {
        let e = mask(&host(), &[gpu(3, "0000:5e:00.0")], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("GPU 0000:5e:00.0: no gpus/0000:5e:00.0 in /p/driver/nvidia"),
            "{e}"
        );
        assert!(e.contains("mask-proc-driver"), "{e}");
    }
}
