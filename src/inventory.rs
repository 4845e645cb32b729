//! The node's GPUs and driver version, from procfs (cheap, no driver calls) or from NVML
//! (complete, but slow to start). Each source takes its root as a parameter.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// One physical GPU as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Gpu {
    /// NVML index: the position in PCI bus order.
    pub index: u32,
    /// The N of `/dev/nvidiaN`.
    pub minor: u32,
    /// `GPU-…`, lower-case; `None` when the driver has not initialised the GPU yet.
    pub uuid: Option<String>,
    /// `dddddddd:bb:dd.f`, lower-case, 8-digit domain.
    pub pci_bus_id: String,
    pub model: Option<String>,
    /// CUDA compute capability `maj.min` (NVML only).
    pub arch: Option<String>,
    /// NVML brand name (NVML only).
    pub brand: Option<String>,
    /// MIG devices, when MIG mode is on (NVML only).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub migs: Vec<Mig>,
}

/// One MIG device of a GPU.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mig {
    /// NVML's MIG index on the parent (the `M` of `G:M`).
    pub index: u32,
    /// `MIG-…`, lower-case.
    pub uuid: String,
    /// GPU instance id.
    pub gi: u32,
    /// Compute instance id.
    pub ci: u32,
}

impl Mig {
    /// The driver's names (in `mig-minors`) of the two capabilities a process needs to use
    /// this MIG device: its GPU instance's and its compute instance's access.
    pub fn capabilities(&self, parent_minor: u32) -> [String; 2] {
        [
            format!("gpu{parent_minor}/gi{}/access", self.gi),
            format!("gpu{parent_minor}/gi{}/ci{}/access", self.gi, self.ci),
        ]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Procfs,
    Nvml,
}

/// Everything the plan needs to know about the node's driver and GPUs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Inventory {
    pub source: Source,
    pub driver_version: String,
    /// `maj.min` of the CUDA driver API (NVML only).
    pub cuda_version: Option<String>,
    /// Sorted by PCI bus id; `gpus[i].index == i`.
    pub gpus: Vec<Gpu>,
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("{path}: cannot read")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("NVML ({library}): {message}")]
    Nvml { library: String, message: String },
    #[error("libnvidia-ml.so.1 not found in {}", .cache.display())]
    NoNvmlLibrary { cache: PathBuf },
}

/// Normalises a PCI bus id to `dddddddd:bb:dd.f`, lower-case; `None` if it is not one. The
/// function must be given; the domain may be left out.
pub fn normalize_pci_bus_id(s: &str) -> Option<String> {
    let addr = crate::ids::PciAddr::parse(s.trim())?;
    addr.function?;
    Some(addr.canonical())
}

/// Reads `<proc_root>/driver/nvidia/version` and `…/gpus/*/information`.
///
/// # Errors
/// A missing or unreadable file, or an `information` file without a usable bus id or minor.
pub fn read_procfs(proc_root: &Path) -> Result<Inventory, InventoryError> {
    let base = proc_root.join("driver/nvidia");
    let vpath = base.join("version");
    let version = read(&vpath)?;
    let driver_version = parse_version_file(&version).ok_or_else(|| InventoryError::Format {
        path: vpath.clone(),
        message: "no driver version on the NVRM line".into(),
    })?;
    let gdir = base.join("gpus");
    let mut gpus = Vec::new();
    let entries = match std::fs::read_dir(&gdir) {
        Ok(e) => e,
        // A driver with no GPU bound (all excluded) has no gpus dir: that is an empty node.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Inventory {
                source: Source::Procfs,
                driver_version,
                cuda_version: None,
                gpus,
            })
        }
        Err(source) => return Err(InventoryError::Read { path: gdir, source }),
    };
    for entry in entries {
        let entry = entry.map_err(|source| InventoryError::Read {
            path: gdir.clone(),
            source,
        })?;
        let path = entry.path().join("information");
        let text = read(&path)?;
        let info = parse_information(&text).map_err(|message| InventoryError::Format {
            path: path.clone(),
            message,
        })?;
        gpus.push(info);
    }
    Ok(finish(Source::Procfs, driver_version, None, gpus))
}

fn finish(
    source: Source,
    driver_version: String,
    cuda: Option<String>,
    mut gpus: Vec<Gpu>,
) -> Inventory {
    // NVML enumerates in PCI bus order, so the index is derived, never read.
    gpus.sort_by(|a, b| a.pci_bus_id.cmp(&b.pci_bus_id));
    for (i, g) in gpus.iter_mut().enumerate() {
        g.index = i as u32;
    }
    Inventory {
        source,
        driver_version,
        cuda_version: cuda,
        gpus,
    }
}

fn read(path: &Path) -> Result<String, InventoryError> {
    std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The driver version from `/proc/driver/nvidia/version`: the first token of the NVRM line
/// that starts with a digit and contains a dot.
pub fn parse_version_file(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("NVRM version:"))?;
    line.split_whitespace()
        .find(|t| t.starts_with(|c: char| c.is_ascii_digit()) && t.contains('.'))
        .filter(|t| t.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
        .map(str::to_owned)
}

/// One `gpus/<bus>/information` file. Unknown lines are ignored; uninitialised UUIDs
/// (`GPU-????…`) become `None`.
///
/// # Errors
/// No `Bus Location` or `Device Minor`, or an unparsable value for either.
pub fn parse_information(text: &str) -> Result<Gpu, String> {
    let (mut bus, mut minor, mut uuid, mut model) = (None, None, None, None);
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "Bus Location" => {
                bus =
                    Some(normalize_pci_bus_id(v).ok_or_else(|| format!("bad Bus Location {v:?}"))?)
            }
            "Device Minor" => {
                minor = Some(
                    v.parse::<u32>()
                        .map_err(|_| format!("bad Device Minor {v:?}"))?,
                )
            }
            "GPU UUID" => uuid = valid_uuid(v),
            "Model" => model = Some(v.to_owned()),
            _ => {}
        }
    }
    Ok(Gpu {
        index: 0,
        minor: minor.ok_or("no Device Minor line")?,
        uuid,
        pci_bus_id: bus.ok_or("no Bus Location line")?,
        model,
        arch: None,
        brand: None,
        migs: Vec::new(),
    })
}

fn valid_uuid(v: &str) -> Option<String> {
    crate::ids::prefixed_uuid(v, "GPU-")
}

/// `<proc_root>/driver/nvidia-caps/mig-minors`: capability name (`gpu0/gi1/access`,
/// `gpu0/gi1/ci0/access`, `config`, `monitor`) → minor of `/dev/nvidia-caps/nvidia-capN`.
/// A missing file is an empty map (no MIG on this node).
///
/// # Errors
/// The file exists but cannot be read, or a line is not `NAME NUMBER`.
pub fn read_mig_minors(
    proc_root: &Path,
) -> Result<std::collections::BTreeMap<String, u32>, InventoryError> {
    let path = proc_root.join("driver/nvidia-caps/mig-minors");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(source) => return Err(InventoryError::Read { path, source }),
    };
    let mut out = std::collections::BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = || InventoryError::Format {
            path: path.clone(),
            message: format!("line {}: expected \"NAME MINOR\", got {line:?}", n + 1),
        };
        let (name, minor) = line.split_once(char::is_whitespace).ok_or_else(bad)?;
        out.insert(name.to_owned(), minor.trim().parse().map_err(|_| bad())?);
    }
    Ok(out)
}

/// Whether the driver shows GPU instances (MIG) on the GPU with this minor:
/// `<proc_root>/driver/nvidia/capabilities/gpu<minor>/mig/gi<N>`.
pub fn has_mig_instances(proc_root: &Path, minor: u32) -> bool {
    let dir = proc_root.join(format!("driver/nvidia/capabilities/gpu{minor}/mig"));
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("gi"))
    })
}

/// The MIG devices of an NVML device, empty when MIG is off or unsupported.
fn nvml_migs(d: &nvml_wrapper::Device) -> Vec<Mig> {
    let on = d.mig_mode().map(|m| m.current == 1).unwrap_or(false);
    if !on {
        return Vec::new();
    }
    let lib = d.nvml().lib();
    // GI/CI ids have no safe wrapper; the raw symbols are looked up first, since calling a
    // missing one through nvml-wrapper-sys panics.
    let instance_id = |f: &Result<unsafe extern "C" fn(_, *mut u32) -> _, _>, h| {
        let f = f.as_ref().ok()?;
        let mut id = 0u32;
        // SAFETY: `h` is a live MIG handle from this NVML instance and `id` a valid out-pointer.
        (unsafe { f(h, &mut id) } == 0).then_some(id)
    };
    let mut out = Vec::new();
    for i in 0..d.mig_device_count().unwrap_or(0) {
        let Ok(m) = d.mig_device_by_index(i) else {
            continue;
        };
        let Some(uuid) = m
            .uuid()
            .ok()
            .and_then(|u| crate::ids::prefixed_uuid(&u, "MIG-"))
        else {
            continue;
        };
        // SAFETY: the handle is only passed back to this library while `m` is alive.
        let h = unsafe { m.handle() };
        let (Some(gi), Some(ci)) = (
            instance_id(&lib.nvmlDeviceGetGpuInstanceId, h),
            instance_id(&lib.nvmlDeviceGetComputeInstanceId, h),
        ) else {
            continue;
        };
        out.push(Mig {
            index: i,
            uuid,
            gi,
            ci,
        });
    }
    out
}

/// Queries NVML through nvml-wrapper, loading `library`. Call it only from a process that will
/// not `setns` afterwards on the same thread: NVML may start threads.
///
/// # Errors
/// The library fails to load or initialise, or a query fails.
pub fn read_nvml(library: &Path) -> Result<Inventory, InventoryError> {
    use nvml_wrapper::Nvml;
    let lib = library.display().to_string();
    let err = |e: nvml_wrapper::error::NvmlError| InventoryError::Nvml {
        library: lib.clone(),
        message: e.to_string(),
    };
    let path: OsString = library.as_os_str().to_owned();
    let nvml = Nvml::builder().lib_path(&path).init().map_err(err)?;
    let driver_version = nvml.sys_driver_version().map_err(err)?;
    let cuda = nvml.sys_cuda_driver_version().ok().map(|v| {
        format!(
            "{}.{}",
            nvml_wrapper::cuda_driver_version_major(v),
            nvml_wrapper::cuda_driver_version_minor(v)
        )
    });
    let count = nvml.device_count().map_err(err)?;
    let mut gpus = Vec::with_capacity(count as usize);
    for i in 0..count {
        let d = nvml.device_by_index(i).map_err(err)?;
        let pci = d.pci_info().map_err(err)?;
        let bus = normalize_pci_bus_id(&pci.bus_id).ok_or_else(|| InventoryError::Nvml {
            library: lib.clone(),
            message: format!("GPU {i}: bad PCI bus id {:?}", pci.bus_id),
        })?;
        gpus.push(Gpu {
            index: i,
            minor: d.minor_number().map_err(err)?,
            uuid: d.uuid().ok().and_then(|u| valid_uuid(&u)),
            pci_bus_id: bus,
            model: d.name().ok(),
            arch: d
                .cuda_compute_capability()
                .ok()
                .map(|c| format!("{}.{}", c.major, c.minor)),
            brand: d.brand().ok().map(|b| format!("{b:?}")),
            migs: nvml_migs(&d),
        });
    }
    let inv = finish(Source::Nvml, driver_version, cuda, gpus);
    // Drop would call nvmlShutdown and could panic on a broken library; shutdown() reports.
    nvml.shutdown().map_err(err)?;
    Ok(inv)
}

/// The NVIDIA character devices under `dev_root` (`nvidia*`, one level, plus
/// `nvidia-caps/`), by base name. Entries that are not character devices are skipped: a
/// regular file named like a device must never be bound in as one.
///
/// # Errors
/// `dev_root` cannot be listed.
pub fn scan_dev_root(dev_root: &Path) -> Result<crate::plan::HostDevices, InventoryError> {
    let mut out = crate::plan::HostDevices::new();
    scan_dir(dev_root, "", &mut out).map_err(|source| InventoryError::Read {
        path: dev_root.to_owned(),
        source,
    })?;
    // MIG capability nodes and InfiniBand's live one level down; no such dir simply means
    // no MIG, no HCA.
    let _ = scan_dir(&dev_root.join("nvidia-caps"), "nvidia-caps/", &mut out);
    let _ = scan_dir(&dev_root.join("infiniband"), "infiniband/", &mut out);
    let dir = crate::imex::CHANNEL_DIR;
    let _ = scan_dir(&dev_root.join(dir), &format!("{dir}/"), &mut out);
    Ok(out)
}

fn scan_dir(dir: &Path, prefix: &str, out: &mut crate::plan::HostDevices) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        // NVIDIA's nodes, and the fabric nodes a container may ask for (`crate::fabric`).
        let wanted = name.starts_with("nvidia")
            || name == "gdrdrv"
            || (prefix == "infiniband/" && (name.starts_with("uverbs") || name == "rdma_cm"))
            || (prefix.starts_with(crate::imex::CHANNEL_DIR) && name.starts_with("channel"));
        if !wanted {
            continue;
        }
        let Ok(m) = std::fs::metadata(e.path()) else {
            continue;
        };
        if m.file_type().is_char_device() {
            let rdev = m.rdev();
            out.insert(
                format!("{prefix}{name}"),
                crate::plan::DevNum {
                    major: libc::major(rdev),
                    minor: libc::minor(rdev),
                },
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mig_instances_from_the_capability_tree() {
        let d = tempfile::tempdir().unwrap();
        let mig = d.path().join("driver/nvidia/capabilities/gpu1/mig");
        std::fs::create_dir_all(mig.join("gi2/ci0")).unwrap();
        std::fs::create_dir_all(d.path().join("driver/nvidia/capabilities/gpu0/mig")).unwrap();
        assert!(has_mig_instances(d.path(), 1));
        assert!(!has_mig_instances(d.path(), 0), "MIG mode on, no instance");
        assert!(!has_mig_instances(d.path(), 2));
    }

    const H100: &str = "Model:           NVIDIA H100 80GB HBM3
IRQ:             156
GPU UUID:        GPU-3F9A2C1E-7b44-5d0e-9a1b-2c3d4e5f6a7b
Video BIOS:      96.00.74.00.1a
Bus Type:        PCIe
DMA Size:        47 bits
DMA Mask:        0x7fffffffffff
Bus Location:    0000:1b:00.0
Device Minor:    2
GPU Firmware:    550.54.15
GPU Excluded:    No
";

    #[test]
    fn information_file() {
        let g = parse_information(H100).unwrap();
        assert_eq!(g.minor, 2);
        assert_eq!(g.pci_bus_id, "00000000:1b:00.0");
        assert_eq!(
            g.uuid.as_deref(),
            Some("GPU-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a7b")
        );
        assert_eq!(g.model.as_deref(), Some("NVIDIA H100 80GB HBM3"));
    }

    #[test]
    fn information_uninitialised_uuid_and_errors() {
        let t = H100.replace(
            "GPU-3F9A2C1E-7b44-5d0e-9a1b-2c3d4e5f6a7b",
            "GPU-????????-????-????-????-????????????",
        );
        assert_eq!(parse_information(&t).unwrap().uuid, None);
        let no_minor: String = H100
            .lines()
            .filter(|l| !l.starts_with("Device Minor"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(parse_information(&no_minor)
            .unwrap_err()
            .contains("Device Minor"));
        assert!(parse_information(&H100.replace("Minor:    2", "Minor:    x")).is_err());
        assert!(parse_information(&H100.replace("0000:1b:00.0", "zz")).is_err());
    }

    #[test]
    fn version_files() {
        let closed = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\nGCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04)\n";
        let open = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs-builder@U16-T02-35-3)  Wed Jan 22 01:23:45 UTC 2025\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n";
        assert_eq!(parse_version_file(closed).as_deref(), Some("550.54.15"));
        assert_eq!(parse_version_file(open).as_deref(), Some("570.86.15"));
        assert_eq!(parse_version_file("garbage"), None);
    }

    #[test]
    fn pci_normalisation() {
        for (i, o) in [
            ("0000:1b:00.0", Some("00000000:1b:00.0")),
            ("00000000:1B:00.0", Some("00000000:1b:00.0")),
            ("1b:00.0", Some("00000000:1b:00.0")),
            ("0001:c1:1f.7", Some("00000001:c1:1f.7")),
            ("0000:1b:00", None),
            ("0000:1g:00.0", None),
            ("000000000:1b:00.0", None),
            ("a:b:c:d.0", None),
        ] {
            assert_eq!(normalize_pci_bus_id(i).as_deref(), o, "{i}");
        }
    }

    #[test]
    fn procfs_tree_sorted_by_bus() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("driver/nvidia");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(
            base.join("version"),
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue\n",
        )
        .unwrap();
        for (bus, minor) in [("0000:3d:00.0", 0), ("0000:1b:00.0", 2)] {
            let d = base.join("gpus").join(bus);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("information"),
                H100.replace("0000:1b:00.0", bus)
                    .replace("Minor:    2", &format!("Minor:    {minor}")),
            )
            .unwrap();
        }
        let inv = read_procfs(t.path()).unwrap();
        assert_eq!(inv.driver_version, "550.54.15");
        let got: Vec<_> = inv.gpus.iter().map(|g| (g.index, g.minor)).collect();
        assert_eq!(got, vec![(0, 2), (1, 0)]);
        let err = read_procfs(&t.path().join("nope")).unwrap_err().to_string();
        assert!(err.contains("nope/driver/nvidia/version"), "{err}");
    }
}
