//! What a container asks for, read from its environment: which GPUs (NVIDIA's variables, or
//! the plugin's physical list, which wins), which driver capabilities, which requirements.
//! Pure: takes the `process.env` entries, returns data.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::inventory::{normalize_pci_bus_id, Gpu, Inventory, InventoryError, Mig};
use crate::nvidia_env::{
    go_bool_true, is_legacy_image, parse_capabilities, parse_visible_devices,
    requirements_from_env, Capabilities, DeviceId, DeviceRequest, EnvError, Requirement,
};

/// The variable the SPANK plugin sets: the step's GPUs by physical identity.
pub const GPUS_VAR: &str = "GRES_OCI_GPUS";

/// One GPU named by something that does not depend on numbering.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum PhysicalId {
    Uuid(String),
    PciBusId(String),
    /// The N of `/dev/nvidiaN`.
    Minor(u32),
    /// A MIG device as Slurm's gres.conf names it (`MultipleFiles=` of the parent node and the
    /// `nvidia-caps/nvidia-capN` nodes of its GPU and compute instances): the parent's minor
    /// and the capability minors, sorted. Text `mig:<parent>/<cap>/<cap>`. It names only the
    /// MIG device, never its whole parent GPU.
    Mig {
        parent: u32,
        caps: Vec<u32>,
    },
}

impl PhysicalId {
    /// `GPU-<uuid>`, a PCI bus id, `minor:N` or `mig:P/C/C`.
    ///
    /// # Errors
    /// Anything else.
    pub fn parse(item: &str) -> Result<PhysicalId, RequestError> {
        let bad = || RequestError::BadPhysical(item.to_owned());
        if let Some(n) = item.strip_prefix("minor:") {
            return n.parse().map(PhysicalId::Minor).map_err(|_| bad());
        }
        if let Some(rest) = item.strip_prefix("mig:") {
            let mut nums = rest.split('/').map(|n| n.parse::<u32>().map_err(|_| bad()));
            let parent = nums.next().ok_or_else(bad)??;
            let caps = nums.collect::<Result<Vec<u32>, _>>()?;
            return PhysicalId::mig(parent, caps).ok_or_else(bad);
        }
        // `get`, not indexing: byte 4 of the container's text may fall inside a character.
        if item
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("GPU-"))
        {
            return match crate::nvidia_env::parse_device_id(item) {
                Ok(DeviceId::GpuUuid(u)) => Ok(PhysicalId::Uuid(u)),
                _ => Err(bad()),
            };
        }
        normalize_pci_bus_id(item)
            .map(PhysicalId::PciBusId)
            .ok_or_else(bad)
    }

    /// A MIG id from its parent's minor and its capability minors (in any order); `None`
    /// without capabilities, which would name the parent instead.
    pub fn mig(parent: u32, mut caps: Vec<u32>) -> Option<PhysicalId> {
        caps.sort_unstable();
        caps.dedup();
        (!caps.is_empty()).then_some(PhysicalId::Mig { parent, caps })
    }

    /// The id of MIG device `m` of `g`: its capabilities' minors from `mig-minors`. `None`
    /// when the driver's list lacks one of them.
    pub fn of_mig(g: &Gpu, m: &Mig, mig_minors: &BTreeMap<String, u32>) -> Option<PhysicalId> {
        let caps = m
            .capabilities(g.minor)
            .iter()
            .map(|c| mig_minors.get(c).copied())
            .collect::<Option<Vec<u32>>>()?;
        PhysicalId::mig(g.minor, caps)
    }

    /// Whether this names the whole GPU `g`. A MIG id never does.
    pub fn matches(&self, g: &Gpu) -> bool {
        match self {
            PhysicalId::Uuid(u) => g.uuid.as_deref() == Some(u.as_str()),
            PhysicalId::PciBusId(b) => &g.pci_bus_id == b,
            PhysicalId::Minor(m) => g.minor == *m,
            PhysicalId::Mig { .. } => false,
        }
    }

    /// Whether this names MIG device `m` of `g`: the same parent and exactly the capability
    /// nodes the driver gives that device.
    pub fn matches_mig(&self, g: &Gpu, m: &Mig, mig_minors: &BTreeMap<String, u32>) -> bool {
        matches!(self, PhysicalId::Mig { .. })
            && PhysicalId::of_mig(g, m, mig_minors).as_ref() == Some(self)
    }
}

impl std::fmt::Display for PhysicalId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PhysicalId::Uuid(u) => f.write_str(u),
            PhysicalId::PciBusId(b) => f.write_str(b),
            PhysicalId::Minor(m) => write!(f, "minor:{m}"),
            PhysicalId::Mig { parent, caps } => {
                write!(f, "mig:{parent}")?;
                caps.iter().try_for_each(|c| write!(f, "/{c}"))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Devices {
    /// `NVIDIA_VISIBLE_DEVICES`, NVML-index based.
    Nvidia(DeviceRequest),
    /// The plugin's list.
    Physical(Vec<PhysicalId>),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Request {
    pub devices: Devices,
    pub capabilities: Capabilities,
    pub requirements: Vec<Requirement>,
    /// Fabric devices: the container's `NVIDIA_<NAME>=enabled` and the site's defaults.
    pub fabric: std::collections::BTreeSet<crate::fabric::Fabric>,
    /// IMEX channels: `NVIDIA_IMEX_CHANNELS`.
    pub imex: Option<crate::imex::ImexRequest>,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Selection(#[from] EnvError),
    #[error(transparent)]
    Imex(#[from] crate::imex::ImexError),
    #[error("invalid GPU {0:?} in {GPUS_VAR}")]
    BadPhysical(String),
    #[error("process.env entry {0:?} has no '='")]
    BadEnv(String),
    #[error("GPU {0} is not on this node")]
    UnknownGpu(String),
}

/// Resolves OCI `process.env` entries into a map: split at the first `=`, later duplicates
/// win (as execve would see them).
///
/// # Errors
/// An entry without `=` (NVIDIA's hook rejects those too).
pub fn env_map(env: &[String]) -> Result<BTreeMap<&str, &str>, RequestError> {
    let mut m = BTreeMap::new();
    for e in env {
        let (k, v) = e
            .split_once('=')
            .ok_or_else(|| RequestError::BadEnv(e.clone()))?;
        m.insert(k, v);
    }
    Ok(m)
}

impl Request {
    /// Reads a container's request. `Ok(None)`: not a GPU container, leave it alone.
    ///
    /// # Errors
    /// Malformed values in any of the variables.
    pub fn from_env(
        env: &BTreeMap<&str, &str>,
        config: &Config,
    ) -> Result<Option<Request>, RequestError> {
        let legacy = is_legacy_image(
            env.get("CUDA_VERSION").copied(),
            env.get("NVIDIA_REQUIRE_CUDA").copied(),
        );
        let devices = match env.get(GPUS_VAR) {
            // The plugin's list is authoritative, even when empty (a step without GPUs still
            // gets the driver if it asked for it through NVIDIA_VISIBLE_DEVICES).
            Some(list) => {
                let ids = list
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(PhysicalId::parse)
                    .collect::<Result<Vec<_>, _>>()?;
                match parse_visible_devices(env.get("NVIDIA_VISIBLE_DEVICES").copied(), legacy)? {
                    None if ids.is_empty() => return Ok(None),
                    _ => Devices::Physical(ids),
                }
            }
            None => {
                match parse_visible_devices(env.get("NVIDIA_VISIBLE_DEVICES").copied(), legacy)? {
                    None => return Ok(None),
                    Some(r) => Devices::Nvidia(r),
                }
            }
        };
        let capabilities = parse_capabilities(
            env.get("NVIDIA_DRIVER_CAPABILITIES").copied(),
            legacy,
            &config.supported_capabilities,
        )?;
        let disabled = config.disable_require
            || env
                .get("NVIDIA_DISABLE_REQUIRE")
                .is_some_and(|v| go_bool_true(v));
        let requirements = if disabled {
            Vec::new()
        } else {
            requirements_from_env(env.iter().map(|(k, v)| (*k, *v)))?
        };
        Ok(Some(Request {
            devices,
            capabilities,
            requirements,
            fabric: crate::fabric::requested(env, &config.fabric_devices),
            imex: crate::imex::parse(env.get("NVIDIA_IMEX_CHANNELS").copied())?,
        }))
    }

    /// Whether procfs alone can answer this request. NVML is needed for MIG ids, for UUIDs
    /// the procfs tree does not know, and for requirements on cuda, arch or brand (procfs has
    /// none of those, and treating them as unknown would wave every requirement through).
    pub fn procfs_suffices(&self, procfs: &Inventory) -> bool {
        if self.requirements.iter().any(|r| r.needs_nvml_facts()) {
            return false;
        }
        let known = |u: &str| procfs.gpus.iter().any(|g| g.uuid.as_deref() == Some(u));
        match &self.devices {
            Devices::Nvidia(DeviceRequest::List(ids)) => ids.iter().all(|id| match id {
                DeviceId::GpuUuid(u) => known(u),
                DeviceId::MigUuid(_) | DeviceId::MigIndex { .. } => false,
                DeviceId::Index(_) | DeviceId::PciBusId(_) => true,
            }),
            Devices::Physical(ids) => ids.iter().all(|id| match id {
                PhysicalId::Uuid(u) => known(u),
                // MIG devices come from NVML only.
                PhysicalId::Mig { .. } => false,
                _ => true,
            }),
            Devices::Nvidia(_) => true,
        }
    }

    /// What this request selects: whole GPUs and MIG devices, each once, in NVML order.
    /// `all` takes every GPU and every MIG device, as NVIDIA's `--device=all` does.
    /// `mig_minors` (the driver's capability list) ties the plugin's MIG ids to devices.
    ///
    /// # Errors
    /// An id that matches no GPU or MIG device of the inventory.
    pub fn select<'a>(
        &self,
        inv: &'a Inventory,
        mig_minors: &BTreeMap<String, u32>,
    ) -> Result<Selection<'a>, RequestError> {
        let mut sel = Selection::default();
        match &self.devices {
            Devices::Nvidia(DeviceRequest::None) => {}
            Devices::Nvidia(DeviceRequest::All) => {
                for g in &inv.gpus {
                    sel.gpus.push(g);
                    sel.migs.extend(g.migs.iter().map(|m| (g, m)));
                }
            }
            Devices::Nvidia(DeviceRequest::List(ids)) => {
                for id in ids {
                    let unknown = || RequestError::UnknownGpu(device_id_text(id));
                    match id {
                        DeviceId::Index(i) => sel
                            .gpus
                            .push(inv.gpus.get(*i as usize).ok_or_else(unknown)?),
                        DeviceId::GpuUuid(u) => sel.gpus.push(
                            inv.gpus
                                .iter()
                                .find(|g| g.uuid.as_deref() == Some(u))
                                .ok_or_else(unknown)?,
                        ),
                        DeviceId::PciBusId(b) => sel.gpus.push(
                            inv.gpus
                                .iter()
                                .find(|g| &g.pci_bus_id == b)
                                .ok_or_else(unknown)?,
                        ),
                        DeviceId::MigUuid(u) => sel.migs.push(
                            inv.gpus
                                .iter()
                                .find_map(|g| g.migs.iter().find(|m| &m.uuid == u).map(|m| (g, m)))
                                .ok_or_else(unknown)?,
                        ),
                        DeviceId::MigIndex { gpu, mig } => {
                            let g = inv.gpus.get(*gpu as usize).ok_or_else(unknown)?;
                            let m = g
                                .migs
                                .iter()
                                .find(|m| m.index == *mig)
                                .ok_or_else(unknown)?;
                            sel.migs.push((g, m));
                        }
                    }
                }
            }
            Devices::Physical(ids) => {
                for id in ids {
                    let unknown = || RequestError::UnknownGpu(id.to_string());
                    if let PhysicalId::Mig { .. } = id {
                        let m = inv.gpus.iter().find_map(|g| {
                            g.migs
                                .iter()
                                .find(|m| id.matches_mig(g, m, mig_minors))
                                .map(|m| (g, m))
                        });
                        sel.migs.push(m.ok_or_else(unknown)?);
                    } else {
                        let g = inv.gpus.iter().find(|g| id.matches(g));
                        sel.gpus.push(g.ok_or_else(unknown)?);
                    }
                }
            }
        }
        sel.gpus.sort_by_key(|g| g.index);
        sel.gpus.dedup_by_key(|g| g.index);
        sel.migs.sort_by_key(|(g, m)| (g.index, m.index));
        sel.migs.dedup_by_key(|(g, m)| (g.index, m.index));
        Ok(sel)
    }
}

/// The devices a request selected from an inventory.
#[derive(Debug, Default)]
pub struct Selection<'a> {
    /// Whole GPUs.
    pub gpus: Vec<&'a Gpu>,
    /// MIG devices with their parent GPU.
    pub migs: Vec<(&'a Gpu, &'a Mig)>,
}

impl<'a> Selection<'a> {
    /// Every GPU whose device node the container needs: the whole GPUs and MIG parents.
    pub fn nodes(&self) -> Vec<&'a Gpu> {
        let mut v: Vec<&Gpu> = self
            .gpus
            .iter()
            .copied()
            .chain(self.migs.iter().map(|(g, _)| *g))
            .collect();
        v.sort_by_key(|g| g.index);
        v.dedup_by_key(|g| g.index);
        v
    }
}

fn device_id_text(id: &DeviceId) -> String {
    match id {
        DeviceId::Index(i) => i.to_string(),
        DeviceId::GpuUuid(u) | DeviceId::MigUuid(u) | DeviceId::PciBusId(u) => u.clone(),
        DeviceId::MigIndex { gpu, mig } => format!("{gpu}:{mig}"),
    }
}

/// Why no inventory answers a request.
#[derive(Debug, thiserror::Error)]
pub enum InventoryChoiceError {
    /// Only NVML can answer (`why`), and it does not.
    #[error("{why}")]
    NeedsNvml {
        why: &'static str,
        #[source]
        source: InventoryError,
    },
    #[error("no GPU inventory ({procfs})")]
    Neither {
        procfs: InventoryError,
        #[source]
        nvml: InventoryError,
    },
}

/// The inventory for `request` (`None`: every fact, as `info` and CDI want): procfs when it
/// can answer, else NVML, read only then (`nvml`: it costs up to ~0.5 s per GPU without
/// persistence mode). `mig_grant`: the container's Slurm step holds MIG devices, which only
/// NVML lists. Without NVML, procfs still serves requests that need no NVML-only facts; the
/// plan then fails on what it lacks (an unknown UUID) with a precise message.
///
/// # Errors
/// Neither source works, or NVML does not where only NVML can answer: requirements on cuda,
/// arch or brand (judged on procfs, their unknown values would count as satisfied) and MIG
/// grants (`all` would quietly select none of the step's MIG devices).
pub fn choose_inventory(
    procfs: Result<Inventory, InventoryError>,
    request: Option<&Request>,
    mig_grant: bool,
    nvml: impl FnOnce() -> Result<Inventory, InventoryError>,
) -> Result<Inventory, InventoryChoiceError> {
    if let Ok(inv) = &procfs {
        if !mig_grant && request.is_some_and(|r| r.procfs_suffices(inv)) {
            return Ok(inv.clone());
        }
    }
    let needs_nvml_facts =
        request.is_some_and(|r| r.requirements.iter().any(|q| q.needs_nvml_facts()));
    match (nvml(), procfs) {
        (Ok(inv), _) => Ok(inv),
        (Err(source), Ok(_)) if needs_nvml_facts => Err(InventoryChoiceError::NeedsNvml {
            why: "the container's NVIDIA_REQUIRE_* conditions need NVML",
            source,
        }),
        (Err(source), Ok(_)) if mig_grant => Err(InventoryChoiceError::NeedsNvml {
            why: "the step's MIG devices need NVML",
            source,
        }),
        (Err(e), Ok(inv)) => {
            tracing::debug!(error = %crate::error_chain(&e), "NVML unavailable, using procfs");
            Ok(inv)
        }
        (Err(nvml), Err(procfs)) => Err(InventoryChoiceError::Neither { procfs, nvml }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(env: &[&str]) -> Result<Option<Request>, RequestError> {
        let env: Vec<String> = env.iter().map(|s| s.to_string()).collect();
        Request::from_env(&env_map(&env)?, &Config::default())
    }

    #[test]
    fn which_containers_are_gpu_containers() {
        assert!(req(&[]).unwrap().is_none());
        assert!(req(&["NVIDIA_VISIBLE_DEVICES="]).unwrap().is_none());
        assert!(req(&["NVIDIA_VISIBLE_DEVICES=void"]).unwrap().is_none());
        assert!(req(&["GRES_OCI_GPUS="]).unwrap().is_none());
        // A legacy CUDA image without NVIDIA_VISIBLE_DEVICES gets all GPUs, NVIDIA's rule.
        let r = req(&["CUDA_VERSION=11.0.3"]).unwrap().unwrap();
        assert_eq!(r.devices, Devices::Nvidia(DeviceRequest::All));
        assert_eq!(r.requirements.len(), 1);
        let r = req(&["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_VISIBLE_DEVICES=all"])
            .unwrap()
            .unwrap();
        assert_eq!(
            r.devices,
            Devices::Nvidia(DeviceRequest::All),
            "later duplicates win"
        );
        let r =
            req(&["GRES_OCI_GPUS=GPU-3F9A2C1E-7b44-5d0e-9a1b-2c3d4e5f6a7b, 0000:1b:00.0,minor:3"])
                .unwrap()
                .unwrap();
        assert_eq!(
            r.devices,
            Devices::Physical(vec![
                PhysicalId::Uuid("GPU-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a7b".into()),
                PhysicalId::PciBusId("00000000:1b:00.0".into()),
                PhysicalId::Minor(3),
            ])
        );
    }

    #[test]
    fn mig_ids_are_canonical_and_strict() {
        let m = PhysicalId::parse("mig:3/22/21/22").unwrap();
        assert_eq!(
            m,
            PhysicalId::Mig {
                parent: 3,
                caps: vec![21, 22]
            }
        );
        assert_eq!(m.to_string(), "mig:3/21/22");
        assert_eq!(PhysicalId::parse(&m.to_string()).unwrap(), m);
        for bad in [
            "mig:",
            "mig:3",
            "mig:3/",
            "mig:x/1",
            "mig:3/1/€",
            "mig:-1/2",
            "mig:3//4",
        ] {
            assert!(PhysicalId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_values_are_errors() {
        for (env, needle) in [
            (
                &[
                    "NVIDIA_VISIBLE_DEVICES=0",
                    "NVIDIA_DRIVER_CAPABILITIES=compute,bogus",
                ][..],
                "bogus",
            ),
            (&["GRES_OCI_GPUS=minor:x"], "minor:x"),
            (&["GRES_OCI_GPUS=GPU-12"], "GPU-12"),
            (&["NVIDIA_VISIBLE_DEVICES=gpu0"], "gpu0"),
            (&["NOEQUALS"], "NOEQUALS"),
            // Non-ASCII where a 4-byte prefix is compared: a char straddles the cut.
            (&["GRES_OCI_GPUS=ab€"], "ab€"),
            (&["GRES_OCI_GPUS=GPU€"], "GPU€"),
            (&["GRES_OCI_GPUS=€"], "€"),
            (&["NVIDIA_VISIBLE_DEVICES=ab€"], "ab€"),
            (&["NVIDIA_VISIBLE_DEVICES=GPU€,MIG€"], "€"),
            (
                &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_IMEX_CHANNELS=7;"],
                "NVIDIA_IMEX_CHANNELS=\"7;\"",
            ),
        ] {
            let e = req(env).unwrap_err().to_string();
            assert!(e.contains(needle), "{env:?}: {e}");
        }
    }

    fn inventory_from(source: crate::inventory::Source) -> Inventory {
        Inventory {
            source,
            driver_version: "550.54.15".into(),
            cuda_version: None,
            gpus: Vec::new(),
        }
    }

    #[test]
    fn procfs_first_nvml_only_when_needed() {
        use crate::inventory::Source;
        let procfs = || Ok(inventory_from(Source::Procfs));
        let nvml_ok = || Ok(inventory_from(Source::Nvml));
        let no_nvml = || {
            Err(InventoryError::NoNvmlLibrary {
                cache: "/d/etc/ld.so.cache".into(),
            })
        };
        let broken = || {
            Err(InventoryError::Format {
                path: "/p/version".into(),
                message: "x".into(),
            })
        };
        let plain = req(&["NVIDIA_VISIBLE_DEVICES=0"]).unwrap().unwrap();
        let cuda = req(&["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_CUDA=cuda>=12.0"])
            .unwrap()
            .unwrap();
        let src = |r: Result<Inventory, InventoryChoiceError>| r.map(|i| i.source);
        // Procfs answers; NVML is not even loaded.
        let never = || -> Result<Inventory, InventoryError> { panic!("NVML loaded") };
        assert_eq!(
            src(choose_inventory(procfs(), Some(&plain), false, never)).unwrap(),
            Source::Procfs
        );
        // Requirements on cuda, MIG grants, `info`: NVML, and without it an error or procfs.
        assert_eq!(
            src(choose_inventory(procfs(), Some(&cuda), false, nvml_ok)).unwrap(),
            Source::Nvml
        );
        let e = choose_inventory(procfs(), Some(&cuda), false, no_nvml).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the container's NVIDIA_REQUIRE_* conditions need NVML"
        );
        let e = choose_inventory(procfs(), Some(&plain), true, no_nvml).unwrap_err();
        assert_eq!(e.to_string(), "the step's MIG devices need NVML");
        assert_eq!(
            src(choose_inventory(procfs(), None, false, no_nvml)).unwrap(),
            Source::Procfs
        );
        assert_eq!(
            src(choose_inventory(broken(), Some(&plain), false, nvml_ok)).unwrap(),
            Source::Nvml
        );
        let e = choose_inventory(broken(), None, false, no_nvml).unwrap_err();
        assert_eq!(e.to_string(), "no GPU inventory (/p/version: x)");
        assert!(std::error::Error::source(&e)
            .unwrap()
            .to_string()
            .starts_with("libnvidia-ml.so.1 not found"));
    }
}
