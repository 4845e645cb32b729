//! The fake GPU description: JSON parsing, PCI bus id handling and NVML index order.

use std::cmp::Ordering;
use std::path::Path;

use serde::Deserialize;

/// Default marketing name of a GPU that does not give one.
pub const DEFAULT_NAME: &str = "NVIDIA H100 80GB HBM3";
/// Default combined PCI device/vendor id (0x2330 H100 SXM, 0x10DE NVIDIA).
pub const DEFAULT_PCI_DEVICE_ID: u32 = 0x2330_10DE;
/// Default CUDA compute capability (major, minor).
pub const DEFAULT_COMPUTE_CAPABILITY: [i32; 2] = [9, 0];
/// Default brand: `NVML_BRAND_TESLA`.
pub const DEFAULT_BRAND: i32 = 2;
/// Default CUDA driver version (12.4) encoded as NVML does (major * 1000 + minor * 10).
pub const DEFAULT_CUDA_DRIVER_VERSION: i32 = 12040;

/// The JSON file as written by tests.
#[derive(Debug, Deserialize)]
struct RawConfig {
    driver_version: String,
    #[serde(default = "default_cuda")]
    cuda_driver_version: i32,
    gpus: Vec<RawGpu>,
}

/// One GPU entry of the JSON file.
#[derive(Debug, Deserialize)]
struct RawGpu {
    uuid: String,
    minor: u32,
    pci_bus_id: String,
    name: Option<String>,
    pci_device_id: Option<u32>,
    compute_capability: Option<[i32; 2]>,
    brand: Option<i32>,
    mig: Option<Vec<RawMig>>,
}

/// One MIG device entry of a GPU's `mig` list.
#[derive(Debug, Deserialize)]
struct RawMig {
    uuid: String,
    gi: u32,
    ci: u32,
}

fn default_cuda() -> i32 {
    DEFAULT_CUDA_DRIVER_VERSION
}

/// Most MIG devices one GPU may list (handles keep the MIG index in 16 bits; real GPUs have at most 7).
pub const MAX_MIG_DEVICES: usize = 0xFFFF;

/// Whether `s` is `<prefix>` followed by a hex UUID in 8-4-4-4-12 groups.
fn is_prefixed_uuid(s: &str, prefix: &str) -> bool {
    let Some(rest) = s.strip_prefix(prefix) else {
        return false;
    };
    let groups: Vec<&str> = rest.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A parsed PCI address (`domain:bus:device.function`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PciAddr {
    /// PCI domain (up to 32 bits in NVML).
    pub domain: u32,
    /// Bus number.
    pub bus: u32,
    /// Device number.
    pub device: u32,
    /// Function number.
    pub function: u32,
}

impl PciAddr {
    /// Parses `DDDD:BB:DD.F` or `DDDDDDDD:BB:DD.F` (hex, any case); the domain
    /// may be omitted (`BB:DD.F`, domain 0) and so may the function (`.0`).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let parts: Vec<&str> = s.split(':').collect();
        let (domain, bus, rest) = match parts.as_slice() {
            [d, b, r] => (*d, *b, *r),
            [b, r] => ("0", *b, *r),
            _ => return None,
        };
        let (device, function) = match rest.split_once('.') {
            Some((d, f)) => (d, f),
            None => (rest, "0"),
        };
        let hex = |t: &str, max_len: usize| -> Option<u32> {
            if t.is_empty() || t.len() > max_len || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(t, 16).ok()
        };
        let addr = Self {
            domain: hex(domain, 8)?,
            bus: hex(bus, 2)?,
            device: hex(device, 2)?,
            function: hex(function, 1)?,
        };
        (addr.device < 32 && addr.function < 8).then_some(addr)
    }

    /// NVML's `busId`: `%08X:%02X:%02X.0`.
    pub fn bus_id(&self) -> String {
        format!("{:08X}:{:02X}:{:02X}.0", self.domain, self.bus, self.device)
    }

    /// NVML's `busIdLegacy`: `%04X:%02X:%02X.0`.
    pub fn bus_id_legacy(&self) -> String {
        format!("{:04X}:{:02X}:{:02X}.0", self.domain, self.bus, self.device)
    }
}

/// One fake GPU, with every optional field resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// `GPU-...` UUID.
    pub uuid: String,
    /// Minor number (`/dev/nvidia<minor>`).
    pub minor: u32,
    /// Parsed PCI address.
    pub pci: PciAddr,
    /// Marketing name.
    pub name: String,
    /// Combined PCI device/vendor id.
    pub pci_device_id: u32,
    /// CUDA compute capability (major, minor).
    pub compute_capability: [i32; 2],
    /// `nvmlBrandType_t` value.
    pub brand: i32,
    /// MIG devices: `None` if the JSON has no `mig` key (MIG not supported),
    /// `Some(empty)` for MIG supported but disabled, else MIG enabled with these devices.
    pub mig: Option<Vec<Mig>>,
}

impl Gpu {
    /// The MIG devices if MIG is enabled (a non-empty `mig` list).
    pub fn mig_enabled(&self) -> Option<&[Mig]> {
        self.mig.as_deref().filter(|m| !m.is_empty())
    }
}

/// One MIG device (a compute instance inside a GPU instance) of a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mig {
    /// `MIG-...` UUID.
    pub uuid: String,
    /// GPU instance id.
    pub gi: u32,
    /// Compute instance id.
    pub ci: u32,
}

/// The whole fake system; `gpus` is in NVML index order (PCI bus order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `nvmlSystemGetDriverVersion`.
    pub driver_version: String,
    /// `nvmlSystemGetCudaDriverVersion`.
    pub cuda_driver_version: i32,
    /// GPUs sorted by PCI address.
    pub gpus: Vec<Gpu>,
}

impl Config {
    /// Parses the JSON text; `None` if it is malformed, a bus id does not
    /// parse, a string holds a NUL byte, two GPUs share a bus id, a MIG UUID is
    /// not `MIG-` plus an 8-4-4-4-12 hex UUID, a GPU lists more than
    /// [`MAX_MIG_DEVICES`] MIG devices or two with the same (gi, ci), or any two
    /// devices (GPU or MIG) share a UUID.
    pub fn parse(text: &str) -> Option<Self> {
        let raw: RawConfig = serde_json::from_str(text).ok()?;
        if raw.driver_version.is_empty() || raw.driver_version.contains('\0') {
            return None;
        }
        let mut gpus = Vec::with_capacity(raw.gpus.len());
        for g in raw.gpus {
            let name = g.name.unwrap_or_else(|| DEFAULT_NAME.to_owned());
            if g.uuid.is_empty() || g.uuid.contains('\0') || name.contains('\0') {
                return None;
            }
            let mig = match g.mig {
                Some(raw) => Some(Self::parse_mig(raw)?),
                None => None,
            };
            gpus.push(Gpu {
                pci: PciAddr::parse(&g.pci_bus_id)?,
                uuid: g.uuid,
                minor: g.minor,
                name,
                pci_device_id: g.pci_device_id.unwrap_or(DEFAULT_PCI_DEVICE_ID),
                compute_capability: g.compute_capability.unwrap_or(DEFAULT_COMPUTE_CAPABILITY),
                brand: g.brand.unwrap_or(DEFAULT_BRAND),
                mig,
            });
        }
        gpus.sort_by_key(|g| g.pci);
        let dup = gpus
            .windows(2)
            .any(|w| w[0].pci.cmp(&w[1].pci) == Ordering::Equal);
        let mut uuids: Vec<&str> = gpus
            .iter()
            .flat_map(|g| {
                let migs = g.mig.iter().flatten().map(|m| m.uuid.as_str());
                std::iter::once(g.uuid.as_str()).chain(migs)
            })
            .collect();
        uuids.sort_unstable();
        if dup || uuids.windows(2).any(|w| w[0] == w[1]) {
            return None;
        }
        Some(Self {
            driver_version: raw.driver_version,
            cuda_driver_version: raw.cuda_driver_version,
            gpus,
        })
    }

    /// Checks one GPU's `mig` list: UUID format, size, and distinct (gi, ci) pairs.
    fn parse_mig(raw: Vec<RawMig>) -> Option<Vec<Mig>> {
        if raw.len() > MAX_MIG_DEVICES || raw.iter().any(|m| !is_prefixed_uuid(&m.uuid, "MIG-")) {
            return None;
        }
        let mut ids: Vec<(u32, u32)> = raw.iter().map(|m| (m.gi, m.ci)).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return None;
        }
        Some(
            raw.into_iter()
                .map(|m| Mig {
                    uuid: m.uuid,
                    gi: m.gi,
                    ci: m.ci,
                })
                .collect(),
        )
    }

    /// Reads and parses the file; `None` if it cannot be read or parsed.
    pub fn load(path: &Path) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(path).ok()?)
    }

    /// `nvmlSystemGetNVMLVersion`: the CUDA major version, then the driver version.
    pub fn nvml_version(&self) -> String {
        format!(
            "{}.{}",
            self.cuda_driver_version / 1000,
            self.driver_version
        )
    }

    /// Index of the GPU whose bus id matches `bus_id` (domain width and case ignored).
    pub fn index_by_bus_id(&self, bus_id: &str) -> Option<usize> {
        let want = PciAddr::parse(bus_id)?;
        self.gpus.iter().position(|g| {
            g.pci.domain == want.domain && g.pci.bus == want.bus && g.pci.device == want.device
        })
    }

    /// Index of the GPU with this UUID.
    pub fn index_by_uuid(&self, uuid: &str) -> Option<usize> {
        self.gpus.iter().position(|g| g.uuid == uuid)
    }

    /// (GPU index, MIG index) of the MIG device with this UUID.
    pub fn mig_by_uuid(&self, uuid: &str) -> Option<(usize, usize)> {
        self.gpus.iter().enumerate().find_map(|(gi, g)| {
            let mi = g.mig.as_ref()?.iter().position(|m| m.uuid == uuid)?;
            Some((gi, mi))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"driver_version": "550.54.15", "cuda_driver_version": 12040,
        "gpus": [
          {"uuid": "GPU-b", "minor": 0, "pci_bus_id": "0000:9a:00.0"},
          {"uuid": "GPU-a", "minor": 2, "pci_bus_id": "0000:1b:00.0", "name": "X",
           "pci_device_id": 1, "compute_capability": [8, 0], "brand": 5}
        ]}"#;

    #[test]
    fn parses_and_sorts_by_pci() {
        let c = Config::parse(SAMPLE).expect("valid");
        assert_eq!(c.driver_version, "550.54.15");
        assert_eq!(c.nvml_version(), "12.550.54.15");
        let uuids: Vec<_> = c.gpus.iter().map(|g| g.uuid.as_str()).collect();
        assert_eq!(uuids, ["GPU-a", "GPU-b"]);
        assert_eq!(c.gpus[0].name, "X");
        assert_eq!(c.gpus[0].compute_capability, [8, 0]);
        assert_eq!(c.gpus[1].name, DEFAULT_NAME);
        assert_eq!(c.gpus[1].pci_device_id, DEFAULT_PCI_DEVICE_ID);
        assert_eq!(c.gpus[1].brand, DEFAULT_BRAND);
    }

    #[test]
    fn bus_id_formats() {
        let a = PciAddr::parse("0000:1b:00.0").expect("valid");
        assert_eq!(a.bus_id(), "00000000:1B:00.0");
        assert_eq!(a.bus_id_legacy(), "0000:1B:00.0");
        assert_eq!(PciAddr::parse("1B:00.0"), Some(a));
        assert_eq!(PciAddr::parse("00000000:1B:00"), Some(a));
        assert_eq!(PciAddr::parse("nonsense"), None);
        assert_eq!(PciAddr::parse("0000:1b:20.0"), None);
        assert_eq!(PciAddr::parse("0000:1b:00.8"), None);
    }

    #[test]
    fn lookups() {
        let c = Config::parse(SAMPLE).expect("valid");
        assert_eq!(c.index_by_bus_id("00000000:9A:00.0"), Some(1));
        assert_eq!(c.index_by_bus_id("0000:9a:00.0"), Some(1));
        assert_eq!(c.index_by_bus_id("0000:9b:00.0"), None);
        assert_eq!(c.index_by_uuid("GPU-a"), Some(0));
        assert_eq!(c.index_by_uuid("GPU-c"), None);
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(Config::parse("garbage"), None);
        assert_eq!(Config::parse(r#"{"gpus": []}"#), None);
        let bad_bus = r#"{"driver_version": "1", "gpus": [{"uuid": "GPU-a", "minor": 0, "pci_bus_id": "zz"}]}"#;
        assert_eq!(Config::parse(bad_bus), None);
        let dup = r#"{"driver_version": "1", "gpus": [
            {"uuid": "GPU-a", "minor": 0, "pci_bus_id": "0000:01:00.0"},
            {"uuid": "GPU-b", "minor": 1, "pci_bus_id": "00000000:01:00.0"}]}"#;
        assert_eq!(Config::parse(dup), None);
        let empty = r#"{"driver_version": "1", "gpus": []}"#;
        assert_eq!(Config::parse(empty).map(|c| c.gpus.len()), Some(0));
    }

    const MIG_A: &str = "MIG-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a7b";
    const MIG_B: &str = "MIG-AAAAAAAA-0000-0000-0000-000000000001";

    /// One GPU with the given `mig` JSON value (or none).
    fn with_mig(mig: Option<&str>) -> String {
        let mig = mig.map(|m| format!(r#", "mig": {m}"#)).unwrap_or_default();
        format!(
            r#"{{"driver_version": "1", "gpus": [
                {{"uuid": "GPU-a", "minor": 0, "pci_bus_id": "0000:01:00.0"{mig}}}]}}"#
        )
    }

    #[test]
    fn mig_lists() {
        let none = Config::parse(&with_mig(None)).expect("valid");
        assert_eq!(none.gpus[0].mig, None);
        assert_eq!(none.gpus[0].mig_enabled(), None);
        let empty = Config::parse(&with_mig(Some("[]"))).expect("valid");
        assert_eq!(empty.gpus[0].mig, Some(vec![]));
        assert_eq!(empty.gpus[0].mig_enabled(), None);
        let two = format!(
            r#"[{{"uuid": "{MIG_A}", "gi": 1, "ci": 0}}, {{"uuid": "{MIG_B}", "gi": 2, "ci": 0}}]"#
        );
        let c = Config::parse(&with_mig(Some(&two))).expect("valid");
        let migs = c.gpus[0].mig_enabled().expect("enabled");
        assert_eq!(migs.len(), 2);
        assert_eq!(
            (migs[1].uuid.as_str(), migs[1].gi, migs[1].ci),
            (MIG_B, 2, 0)
        );
        assert_eq!(c.mig_by_uuid(MIG_B), Some((0, 1)));
        assert_eq!(c.mig_by_uuid("MIG-nope"), None);
        assert_eq!(c.index_by_uuid(MIG_A), None);
    }

    #[test]
    fn rejects_bad_mig() {
        let one = |uuid: &str| format!(r#"[{{"uuid": "{uuid}", "gi": 1, "ci": 0}}]"#);
        for bad in [
            "GPU-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a7b",
            "MIG-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a7",
            "MIG-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a7bb",
            "MIG-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a7g",
            "MIG-3f9a2c1e7b44-5d0e-9a1b-2c3d4e5f6a7b",
            "MIG-3f9a2c1e-7b44-5d0e-9a1b-2c3d-4e5f6a7b",
            "MIG-GPU-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a7b/1/0",
            "",
        ] {
            assert_eq!(Config::parse(&with_mig(Some(&one(bad)))), None, "{bad}");
        }
        assert!(Config::parse(&with_mig(Some(&one(MIG_A)))).is_some());
        // Same UUID twice, or the same (gi, ci) twice, on one GPU.
        let dup_uuid = format!(
            r#"[{{"uuid": "{MIG_A}", "gi": 1, "ci": 0}}, {{"uuid": "{MIG_A}", "gi": 2, "ci": 0}}]"#
        );
        assert_eq!(Config::parse(&with_mig(Some(&dup_uuid))), None);
        let dup_ids = format!(
            r#"[{{"uuid": "{MIG_A}", "gi": 1, "ci": 0}}, {{"uuid": "{MIG_B}", "gi": 1, "ci": 0}}]"#
        );
        assert_eq!(Config::parse(&with_mig(Some(&dup_ids))), None);
        // Missing gi, or a mig list that is not a list.
        let no_gi = format!(r#"[{{"uuid": "{MIG_A}", "ci": 0}}]"#);
        assert_eq!(Config::parse(&with_mig(Some(&no_gi))), None);
        assert_eq!(Config::parse(&with_mig(Some("{}"))), None);
        // Same MIG UUID on two GPUs.
        let across = format!(
            r#"{{"driver_version": "1", "gpus": [
                {{"uuid": "GPU-a", "minor": 0, "pci_bus_id": "0000:01:00.0",
                  "mig": [{{"uuid": "{MIG_A}", "gi": 1, "ci": 0}}]}},
                {{"uuid": "GPU-b", "minor": 1, "pci_bus_id": "0000:02:00.0",
                  "mig": [{{"uuid": "{MIG_A}", "gi": 1, "ci": 0}}]}}]}}"#
        );
        assert_eq!(Config::parse(&across), None);
    }
}
