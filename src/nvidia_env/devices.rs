//! `NVIDIA_VISIBLE_DEVICES`: indices, UUIDs (and unique prefixes), PCI bus ids, MIG `G:M`,
//! `all`, `none`, `void`.

use super::*;

// ---------------------------------------------------------------------------------------------
// NVIDIA_VISIBLE_DEVICES
// ---------------------------------------------------------------------------------------------

/// One item of NVIDIA_VISIBLE_DEVICES after parsing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum DeviceId {
    /// An NVML index (PCI bus order), not the `/dev/nvidiaN` minor.
    Index(u32),
    /// `GPU-` followed by the 8-4-4-4-12 hex UUID in lower case, as NVML and procfs print it.
    GpuUuid(String),
    /// `%08x:%02x:%02x.0`, lower case: NVML's `busId` form, lower-cased.
    PciBusId(String),
    /// `MIG-` followed by the 8-4-4-4-12 hex UUID in lower case (R470+ form).
    MigUuid(String),
    /// `<gpu>:<mig>`, both NVML indices.
    MigIndex { gpu: u32, mig: u32 },
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceId::Index(i) => write!(f, "{i}"),
            DeviceId::GpuUuid(s) | DeviceId::PciBusId(s) | DeviceId::MigUuid(s) => f.write_str(s),
            DeviceId::MigIndex { gpu, mig } => write!(f, "{gpu}:{mig}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum DeviceRequest {
    /// Every GPU and every MIG device.
    All,
    /// A GPU container without GPUs: driver files and control nodes only.
    None,
    /// Never empty, no duplicates, in the order first given.
    List(Vec<DeviceId>),
}

/// value = the env value (None = unset), legacy = legacy CUDA image (see [`is_legacy_image`]).
/// Ok(None) = not a GPU container (do nothing).
///
/// Two stages, as in NVIDIA's stack. The hook (case-sensitive) drops the container if `void`
/// appears anywhere, else lets the first `all` or `none` decide. The CLI then walks the list in
/// order: an item equal to `all` in any case selects everything and ends the walk (so `ALL`
/// works, and items after it are never looked at), anything else must be a device id.
///
/// # Errors
/// The first item, in order, that is not a device id.
pub fn parse_visible_devices(
    value: Option<&str>,
    legacy: bool,
) -> Result<Option<DeviceRequest>, EnvError> {
    let Some(value) = value else {
        // Old CUDA images predate the variable and expected every GPU.
        return Ok(legacy.then_some(DeviceRequest::All));
    };
    let mut items: Vec<&str> = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !items.contains(&item) {
            items.push(item);
        }
    }
    // Set but empty means "no GPU container" even for legacy images: NVIDIA checks "unset"
    // only for the legacy default.
    if items.is_empty() || items.contains(&"void") {
        return Ok(None);
    }
    for item in &items {
        match *item {
            "all" => return Ok(Some(DeviceRequest::All)),
            "none" => return Ok(Some(DeviceRequest::None)),
            _ => {}
        }
    }
    let mut ids: Vec<DeviceId> = Vec::new();
    for item in items {
        if item.eq_ignore_ascii_case("all") {
            return Ok(Some(DeviceRequest::All));
        }
        let id = parse_device_id(item)?;
        // "0,00" or two spellings of one UUID name the same device: keep the first.
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(Some(DeviceRequest::List(ids)))
}

fn is_uuid(s: &str) -> bool {
    crate::ids::uuid_shape(s, true)
}

fn is_uuid_prefix(s: &str) -> bool {
    crate::ids::uuid_shape(s, false)
}

/// `prefix` at the start of `s`, ASCII case-insensitively; returns the rest.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn decimal_u32(s: &str) -> Option<u32> {
    // Only plain digits: `str::parse` alone would also take a leading '+'.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// One device id in the CLI's grammar: full `GPU-<uuid>`, PCI bus id `domain:bus:dev[.0]`,
/// decimal NVML index, `MIG-<uuid>`, `<gpu>:<mig>`. Stricter than the CLI's `sscanf` (no trailing
/// garbage, no signs), which only turns its "unknown device" into an earlier, clearer error.
///
/// # Errors
/// Anything else, with the reason; `all`, `none` and `void` too, as they mean something only as
/// the whole value.
pub fn parse_device_id(item: &str) -> Result<DeviceId, EnvError> {
    let bad = |reason: &str| EnvError::InvalidDevice {
        item: item.to_owned(),
        reason: reason.to_owned(),
    };
    if ["all", "none", "void"]
        .iter()
        .any(|k| item.eq_ignore_ascii_case(k))
    {
        return Err(bad("a keyword that can only stand for the whole value"));
    }
    if let Some(rest) = strip_prefix_ci(item, "GPU-") {
        if is_uuid(rest) {
            return Ok(DeviceId::GpuUuid(format!(
                "GPU-{}",
                rest.to_ascii_lowercase()
            )));
        }
        if is_uuid_prefix(rest) {
            // NVIDIA dropped prefix matching in 2019 but old READMEs still show it.
            return Err(bad(
                "GPU UUID prefixes are not accepted; give the full GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
            ));
        }
        return Err(bad(
            "not a GPU UUID (expected GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
        ));
    }
    if let Some(rest) = strip_prefix_ci(item, "MIG-") {
        if is_uuid(rest) {
            return Ok(DeviceId::MigUuid(format!(
                "MIG-{}",
                rest.to_ascii_lowercase()
            )));
        }
        if strip_prefix_ci(rest, "GPU-").is_some() {
            return Err(bad(
                "pre-R470 MIG id; use MIG-<uuid> (nvidia-smi -L) or <gpu index>:<mig index>",
            ));
        }
        return Err(bad(
            "not a MIG UUID (expected MIG-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
        ));
    }
    let colons = item.bytes().filter(|&b| b == b':').count();
    match colons {
        0 => decimal_u32(item)
            .map(DeviceId::Index)
            .ok_or_else(|| bad("unknown device (expected an index, GPU-<uuid>, MIG-<uuid>, <gpu>:<mig> or a PCI bus id)")),
        1 => {
            let (g, m) = item.split_once(':').unwrap_or((item, ""));
            match (decimal_u32(g), decimal_u32(m)) {
                (Some(gpu), Some(mig)) => Ok(DeviceId::MigIndex { gpu, mig }),
                _ if item.contains('.') => Err(bad(
                    "a PCI bus id needs its domain: domain:bus:device.0, e.g. 00000000:1b:00.0",
                )),
                _ => Err(bad("expected <gpu index>:<mig index>")),
            }
        }
        2 => parse_pci(item).map(DeviceId::PciBusId).map_err(bad),
        _ => Err(bad("unknown device")),
    }
}

/// `domain:bus:device[.function]` in hex, domain of 1 to 8 digits (NVML prints 8, procfs 4).
/// Normalised to NVML's `%08x:%02x:%02x.0`, lower case, as the CLI does since 2020.
fn parse_pci(item: &str) -> Result<String, &'static str> {
    const SHAPE: &str = "not a PCI bus id (expected domain:bus:device.0 in hex, e.g. 0000:1b:00.0)";
    match crate::ids::PciAddr::parse(item) {
        Some(a) if a.domain.is_none() => Err(SHAPE),
        Some(a) if a.function.is_some_and(|f| f != 0) => Err("a GPU is always PCI function 0"),
        Some(a) => Ok(a.canonical()),
        None => Err(SHAPE),
    }
}
