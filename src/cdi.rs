//! Container Device Interface (CDI) specs for the node's GPUs: [`generate`] builds one from the
//! inventory, the driver files and the device nodes; [`validate`] checks any spec against the
//! CDI schema of the version it declares. Pure: no I/O here, the caller gathers the inputs.
//!
//! A generated spec declares `cdiVersion` 0.5.0: the first version with `hostPath` on device
//! nodes and with device names that start with a digit (`"0"`), and the last one podman 4.3.1
//! reads (it skips newer specs without a word).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::driver::DriverFiles;
use crate::inventory::Inventory;
use crate::nvidia_env::{Capabilities, Capability};
use crate::plan::{HostDevices, Layout};

/// The version generated specs declare.
pub const CDI_VERSION: &str = "0.5.0";

/// Mount options of driver files (libraries, binaries, firmware), as NVIDIA's CDI specs have them.
pub const FILE_OPTIONS: &[&str] = &["ro", "nosuid", "nodev", "rbind", "rprivate"];
/// Mount options of IPC sockets and the MPS pipe directory: writable.
pub const IPC_OPTIONS: &[&str] = &["nosuid", "nodev", "noexec", "rbind", "rprivate"];

/// A CDI spec, in the shape generated here (a subset of what [`validate`] accepts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    pub devices: Vec<Device>,
    #[serde(default, skip_serializing_if = "ContainerEdits::is_empty")]
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub name: String,
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<Hook>,
}

impl ContainerEdits {
    pub fn is_empty(&self) -> bool {
        self.env.is_empty()
            && self.device_nodes.is_empty()
            && self.mounts.is_empty()
            && self.hooks.is_empty()
    }
}

/// A device node; the runtime reads its type and number from `hostPath`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    pub hook_name: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Always [`crate::HOOK_ENV`] in what [`generate`] writes: without it runc before 1.3 runs
    /// the createContainer hook with the image's environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
}

/// What [`generate`] needs besides the node's facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdiOptions {
    /// `nvidia.com`.
    pub vendor: String,
    /// `gpu`.
    pub class: String,
    /// The driver root the files were found in; a file's container path is its host path
    /// with this prefix removed.
    pub driver_root: PathBuf,
    /// Where the host's device nodes are (`hostPath`); they appear at `/dev/…` inside.
    pub dev_root: PathBuf,
    /// The capabilities the driver files were found for (uvm comes with compute, modeset
    /// with display).
    pub capabilities: Capabilities,
    /// The absolute path of `gres-oci-hook`, run as the createContainer hook.
    pub hook_path: PathBuf,
    /// The host ldconfig the hook runs; `None` leaves the linker cache alone.
    pub ldconfig: Option<PathBuf>,
    /// `/proc/driver/nvidia-caps/mig-minors`, for MIG devices.
    pub mig_minors: BTreeMap<String, u32>,
    /// The host driver version the linker-cache hook checks an image's CUDA forward-compat
    /// libraries against (`cuda-compat-mode = "ldconfig"`); `None` never uses them.
    pub cuda_compat_host: Option<String>,
    /// Also mount each library at its soname links' paths, for engines that apply a spec's
    /// mounts but not its hooks (Apptainer's `--device`).
    pub soname_mounts: bool,
}

impl Default for CdiOptions {
    fn default() -> Self {
        CdiOptions {
            vendor: "nvidia.com".into(),
            class: "gpu".into(),
            driver_root: PathBuf::from("/"),
            dev_root: PathBuf::from("/dev"),
            capabilities: [Capability::Utility, Capability::Compute]
                .into_iter()
                .collect(),
            hook_path: PathBuf::from("/usr/bin/gres-oci-hook"),
            ldconfig: Some(PathBuf::from("/sbin/ldconfig")),
            mig_minors: BTreeMap::new(),
            cuda_compat_host: None,
            soname_mounts: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    /// A spec that breaks the schema: `field` is its JSON path (`devices[0].name`).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{name}: no such device node in {}", .dev_root.display())]
    MissingDevice { name: String, dev_root: PathBuf },
    #[error("MIG device {uuid}: {cap} is not in mig-minors")]
    MissingMigCap { uuid: String, cap: String },
    #[error("{}: not inside the driver root {}", .path.display(), .root.display())]
    OutsideRoot { path: PathBuf, root: PathBuf },
    #[error("no {what} in {}", .dev_root.display())]
    NothingToList { what: String, dev_root: PathBuf },
    #[error("{}: not valid UTF-8, cannot go into a CDI spec", .0.display())]
    NotUtf8(PathBuf),
    #[error("hook path {}: must be absolute", .0.display())]
    RelativeHook(PathBuf),
    #[error("not a CDI spec: {0}")]
    Syntax(String),
}

fn utf8(p: &Path) -> Result<String, CdiError> {
    p.to_str()
        .map(str::to_owned)
        .ok_or_else(|| CdiError::NotUtf8(p.to_owned()))
}

/// `host` seen from inside the driver root: `<root>/usr/lib/x.so` → `/usr/lib/x.so`.
fn in_root(host: &Path, root: &Path) -> Result<String, CdiError> {
    let rel = host.strip_prefix(root).map_err(|_| CdiError::OutsideRoot {
        path: host.to_owned(),
        root: root.to_owned(),
    })?;
    utf8(&Path::new("/").join(rel))
}

/// Builds the spec: one device per GPU by NVML index and by UUID, one per MIG device by
/// `G:M` and by `MIG-` UUID, and `all`; the common edits carry the control nodes, the driver
/// files, `NVIDIA_VISIBLE_DEVICES=void` and the createContainer hook
/// (`gres-oci-hook update-ldcache`) that makes the soname links and the linker cache.
/// The result is checked with [`validate`].
///
/// # Errors
/// A GPU's or nvidiactl's node missing from `devices`, a MIG capability missing from
/// `mig_minors`, a driver file outside the driver root, a non-UTF-8 path, or a spec that
/// does not validate (a bad vendor or class).
pub fn generate(
    inv: &Inventory,
    driver: &DriverFiles,
    devices: &HostDevices,
    opts: &CdiOptions,
) -> Result<Spec, CdiError> {
    let node = |name: &str| -> Result<Option<DeviceNode>, CdiError> {
        if !devices.contains_key(name) {
            return Ok(None);
        }
        Ok(Some(DeviceNode {
            path: format!("/dev/{name}"),
            host_path: Some(utf8(&opts.dev_root.join(name))?),
        }))
    };
    let required = |name: &str| -> Result<DeviceNode, CdiError> {
        node(name)?.ok_or_else(|| CdiError::MissingDevice {
            name: name.to_owned(),
            dev_root: opts.dev_root.clone(),
        })
    };
    let one = |name: String, nodes: Vec<DeviceNode>| Device {
        name,
        container_edits: ContainerEdits {
            device_nodes: nodes,
            ..Default::default()
        },
    };

    let mut out = Vec::new();
    let mut all: Vec<DeviceNode> = Vec::new();
    for g in &inv.gpus {
        let gpu_node = required(&format!("nvidia{}", g.minor))?;
        out.push(one(g.index.to_string(), vec![gpu_node.clone()]));
        if let Some(u) = &g.uuid {
            out.push(one(u.clone(), vec![gpu_node.clone()]));
        }
        all.push(gpu_node.clone());
        for m in &g.migs {
            let mut nodes = vec![gpu_node.clone()];
            for cap in m.capabilities(g.minor) {
                let minor = opts
                    .mig_minors
                    .get(&cap)
                    .ok_or_else(|| CdiError::MissingMigCap {
                        uuid: m.uuid.clone(),
                        cap: cap.clone(),
                    })?;
                nodes.push(required(&format!("nvidia-caps/nvidia-cap{minor}"))?);
            }
            all.extend(nodes[1..].iter().cloned());
            out.push(one(format!("{}:{}", g.index, m.index), nodes.clone()));
            out.push(one(m.uuid.clone(), nodes));
        }
    }
    let mut seen = BTreeSet::new();
    all.retain(|n| seen.insert(n.path.clone()));
    out.push(one("all".into(), all));

    let mut common = ContainerEdits {
        env: vec!["NVIDIA_VISIBLE_DEVICES=void".into()],
        ..Default::default()
    };
    common.device_nodes.push(required("nvidiactl")?);
    let mut optional = Vec::new();
    if opts.capabilities.contains(Capability::Compute) {
        optional.extend(["nvidia-uvm", "nvidia-uvm-tools"]);
    }
    if opts.capabilities.contains(Capability::Display) {
        optional.push("nvidia-modeset");
    }
    for n in optional {
        common.device_nodes.extend(node(n)?);
    }

    let owned = |o: &[&str]| o.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let mut links = Vec::new();
    let mut lib_dirs = BTreeSet::new();
    for lib in &driver.libraries {
        let target = in_root(&lib.host_path, &opts.driver_root)?;
        let dir = Path::new(&target)
            .parent()
            .and_then(Path::to_str)
            .unwrap_or("/")
            .to_owned();
        for l in &lib.links {
            let path = Path::new(&dir).join(l);
            links.push(format!("{}::{}", path.display(), lib.file_name));
            if opts.soname_mounts {
                // Where the image's loader looks without a cache entry: its default dirs,
                // Debian's or the others' (a spec does not know the image's layout).
                for layout in [Layout::Debian, Layout::Other] {
                    let d = if lib.compat32 {
                        layout.lib32_dir()
                    } else {
                        layout.lib_dir()
                    };
                    common.mounts.push(Mount {
                        host_path: utf8(&lib.host_path)?,
                        container_path: utf8(&Path::new(d).join(l))?,
                        options: owned(FILE_OPTIONS),
                    });
                }
            }
        }
        common.mounts.push(Mount {
            host_path: utf8(&lib.host_path)?,
            container_path: target,
            options: owned(FILE_OPTIONS),
        });
        lib_dirs.insert(dir);
    }
    for f in driver.binaries.iter().chain(&driver.firmware) {
        common.mounts.push(Mount {
            host_path: utf8(&f.host_path)?,
            container_path: utf8(&f.container_path)?,
            options: owned(FILE_OPTIONS),
        });
    }
    for f in &driver.ipc {
        common.mounts.push(Mount {
            host_path: utf8(&f.host_path)?,
            container_path: utf8(&f.container_path)?,
            options: owned(IPC_OPTIONS),
        });
    }
    common
        .mounts
        .sort_by(|a, b| a.container_path.cmp(&b.container_path));
    common
        .mounts
        .dedup_by(|a, b| a.container_path == b.container_path);

    if !links.is_empty() || (opts.ldconfig.is_some() && !lib_dirs.is_empty()) {
        if !opts.hook_path.is_absolute() {
            return Err(CdiError::RelativeHook(opts.hook_path.clone()));
        }
        let mut args = vec!["gres-oci-hook".to_owned(), "update-ldcache".to_owned()];
        links.sort();
        links.dedup();
        for l in links {
            args.extend(["--link".to_owned(), l]);
        }
        if let Some(ld) = &opts.ldconfig {
            args.extend(["--ldconfig".to_owned(), utf8(ld)?]);
            if let Some(v) = &opts.cuda_compat_host {
                args.extend(["--host-driver-version".to_owned(), v.clone()]);
            }
            for d in lib_dirs {
                args.extend(["--folder".to_owned(), d]);
            }
        }
        common.hooks.push(Hook {
            hook_name: "createContainer".into(),
            path: utf8(&opts.hook_path)?,
            args,
            env: crate::HOOK_ENV.iter().map(|e| (*e).to_owned()).collect(),
        });
    }

    finish(out, common, opts)
}

/// A spec of the node's IMEX channels, as NVIDIA's `--mode=imex` writes it: kind
/// `<vendor>/<class>` (NVIDIA's `nvidia.com/imex-channel`), one device per channel named by its
/// id, each just its node `/dev/nvidia-caps-imex-channels/channelN`. `channels` are the ids
/// [`crate::imex::channels_on_node`] found.
///
/// # Errors
/// No channel on the node, a non-UTF-8 dev root, a bad vendor or class.
pub fn generate_imex(channels: &[u32], opts: &CdiOptions) -> Result<Spec, CdiError> {
    if channels.is_empty() {
        return Err(CdiError::NothingToList {
            what: format!(
                "IMEX channels (no {}/channelN on the nvidia-caps-imex-channels major)",
                crate::imex::CHANNEL_DIR
            ),
            dev_root: opts.dev_root.clone(),
        });
    }
    let devices = channels
        .iter()
        .map(|id| {
            let name = format!("{}/channel{id}", crate::imex::CHANNEL_DIR);
            Ok(Device {
                name: id.to_string(),
                container_edits: ContainerEdits {
                    device_nodes: vec![DeviceNode {
                        path: format!("/dev/{name}"),
                        host_path: Some(utf8(&opts.dev_root.join(&name))?),
                    }],
                    ..Default::default()
                },
            })
        })
        .collect::<Result<Vec<_>, CdiError>>()?;
    finish(devices, ContainerEdits::default(), opts)
}

/// A spec for one kind of fabric device, as NVIDIA's `--mode=gdrcopy|mofed|gds|nvswitch`
/// writes it: kind `<vendor>/<class>` (NVIDIA's `nvidia.com/<mode>`) with the single device
/// `all` holding the kind's nodes the node has (see [`crate::fabric::Fabric::takes`]) and, for
/// GDS, `gds_files` (the host's `/run/udev` and `/etc/cufile.json`) read-only.
///
/// # Errors
/// None of the kind's nodes on the node, a non-UTF-8 path, a bad vendor or class.
pub fn generate_fabric(
    kind: crate::fabric::Fabric,
    devices: &HostDevices,
    gds_files: &[crate::driver::HostFile],
    opts: &CdiOptions,
) -> Result<Spec, CdiError> {
    let names = crate::fabric::node_names(&[kind].into_iter().collect(), devices.keys());
    if names.is_empty() {
        return Err(CdiError::NothingToList {
            what: format!("{} device nodes", kind.name()),
            dev_root: opts.dev_root.clone(),
        });
    }
    let mut edits = ContainerEdits::default();
    for n in names {
        edits.device_nodes.push(DeviceNode {
            path: format!("/dev/{n}"),
            host_path: Some(utf8(&opts.dev_root.join(&n))?),
        });
    }
    if kind == crate::fabric::Fabric::Gds {
        for f in gds_files {
            edits.mounts.push(Mount {
                host_path: utf8(&f.host_path)?,
                container_path: utf8(&f.container_path)?,
                options: FILE_OPTIONS.iter().map(|o| (*o).to_owned()).collect(),
            });
        }
    }
    let all = Device {
        name: "all".into(),
        container_edits: edits,
    };
    finish(vec![all], ContainerEdits::default(), opts)
}

/// The spec of `devices` and `common` under `opts`' kind, checked with [`validate`].
fn finish(
    devices: Vec<Device>,
    common: ContainerEdits,
    opts: &CdiOptions,
) -> Result<Spec, CdiError> {
    let spec = Spec {
        cdi_version: CDI_VERSION.into(),
        kind: format!("{}/{}", opts.vendor, opts.class),
        devices,
        container_edits: common,
    };
    validate(&to_value(&spec)?)?;
    Ok(spec)
}

fn to_value(spec: &Spec) -> Result<Value, CdiError> {
    serde_json::to_value(spec).map_err(|e| CdiError::Syntax(e.to_string()))
}

/// The spec as pretty JSON, with a final newline.
///
/// # Errors
/// Serialisation fails (it does not for a [`Spec`]).
pub fn to_json(spec: &Spec) -> Result<String, CdiError> {
    let mut s = serde_json::to_string_pretty(spec).map_err(|e| CdiError::Syntax(e.to_string()))?;
    s.push('\n');
    Ok(s)
}

/// The spec as YAML (through serde_norway).
///
/// # Errors
/// Serialisation fails (it does not for a [`Spec`]).
pub fn to_yaml(spec: &Spec) -> Result<String, CdiError> {
    serde_norway::to_string(spec).map_err(|e| CdiError::Syntax(one_line(&e.to_string())))
}

/// Reads a spec file's text, JSON or YAML (as CDI runtimes accept both), into a JSON value
/// for [`validate`].
///
/// # Errors
/// Neither valid JSON nor valid YAML.
pub fn parse(text: &str) -> Result<Value, CdiError> {
    match serde_json::from_str(text) {
        Ok(v) => Ok(v),
        Err(json) if text.trim_start().starts_with('{') => {
            Err(CdiError::Syntax(format!("invalid JSON: {json}")))
        }
        Err(_) => serde_norway::from_str(text)
            .map_err(|e| CdiError::Syntax(format!("invalid YAML: {}", one_line(&e.to_string())))),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------------------------
// Validation

/// The released CDI spec versions whose JSON shape is the current one (0.1.0 and 0.2.0 had
/// another layout and are not accepted by today's runtimes either).
const KNOWN_VERSIONS: &[(u32, u32, u32)] = &[
    (0, 3, 0),
    (0, 4, 0),
    (0, 5, 0),
    (0, 6, 0),
    (0, 7, 0),
    (0, 8, 0),
];

type Version = (u32, u32, u32);

fn parse_version(s: &str) -> Option<Version> {
    let s = s.strip_prefix('v').unwrap_or(s);
    let mut it = s.split('.');
    let mut n = || -> Option<u32> {
        let p = it.next()?;
        if p.is_empty()
            || !p.bytes().all(|b| b.is_ascii_digit())
            || (p.len() > 1 && p.starts_with('0'))
        {
            return None;
        }
        p.parse().ok()
    };
    let v = (n()?, n()?, n()?);
    it.next().is_none().then_some(v)
}

fn vstr(v: Version) -> String {
    format!("{}.{}.{}", v.0, v.1, v.2)
}

struct Checker {
    version: Version,
}

fn invalid(field: &str, message: impl Into<String>) -> CdiError {
    CdiError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn object<'a>(v: &'a Value, field: &str) -> Result<&'a serde_json::Map<String, Value>, CdiError> {
    v.as_object()
        .ok_or_else(|| invalid(field, format!("must be an object, not {}", type_name(v))))
}

fn array<'a>(v: &'a Value, field: &str) -> Result<&'a Vec<Value>, CdiError> {
    v.as_array()
        .ok_or_else(|| invalid(field, format!("must be an array, not {}", type_name(v))))
}

fn string<'a>(v: &'a Value, field: &str) -> Result<&'a str, CdiError> {
    v.as_str()
        .ok_or_else(|| invalid(field, format!("must be a string, not {}", type_name(v))))
}

fn strings(v: &Value, field: &str) -> Result<(), CdiError> {
    for (i, s) in array(v, field)?.iter().enumerate() {
        string(s, &format!("{field}[{i}]"))?;
    }
    Ok(())
}

fn integer(v: &Value, field: &str, min: i128, max: i128) -> Result<i128, CdiError> {
    let n = v
        .as_i64()
        .map(i128::from)
        .or_else(|| v.as_u64().map(i128::from))
        .ok_or_else(|| invalid(field, format!("must be an integer, not {}", type_name(v))))?;
    if n < min || n > max {
        return Err(invalid(field, format!("{n} is out of range {min}..={max}")));
    }
    Ok(n)
}

fn path_field(v: &Value, field: &str, absolute: bool) -> Result<(), CdiError> {
    let s = string(v, field)?;
    if s.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if absolute && !s.starts_with('/') {
        return Err(invalid(field, format!("{s:?} must be an absolute path")));
    }
    Ok(())
}

/// A vendor or class label: a letter first, a letter or digit last, letters, digits and
/// `extra` between.
fn label(s: &str, extra: &[char]) -> Result<(), String> {
    let Some(first) = s.chars().next() else {
        return Err("is empty".into());
    };
    if !first.is_ascii_alphabetic() {
        return Err(format!("{s:?} must start with a letter"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !extra.contains(c))
    {
        return Err(format!("{s:?} has an invalid character {c:?}"));
    }
    if !s.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("{s:?} must end with a letter or digit"));
    }
    Ok(())
}

/// A device name: `^[a-zA-Z0-9][a-zA-Z0-9_.:-]*$`, ending with a letter or digit.
fn device_name(s: &str) -> Result<(), String> {
    let Some(first) = s.chars().next() else {
        return Err("is empty".into());
    };
    if !first.is_ascii_alphanumeric() {
        return Err(format!("{s:?} must start with a letter or digit"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !matches!(c, '_' | '.' | ':' | '-'))
    {
        return Err(format!("{s:?} has an invalid character {c:?}"));
    }
    if !s.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("{s:?} must end with a letter or digit"));
    }
    Ok(())
}

impl Checker {
    /// A field that appeared in `since`.
    fn since(&self, since: Version, field: &str) -> Result<(), CdiError> {
        if self.version < since {
            return Err(invalid(
                field,
                format!(
                    "needs cdiVersion {} or later (the spec declares {})",
                    vstr(since),
                    vstr(self.version)
                ),
            ));
        }
        Ok(())
    }

    /// `obj` has only the `allowed` keys (each with the version it appeared in) and every
    /// `required` one.
    fn keys(
        &self,
        obj: &serde_json::Map<String, Value>,
        field: &str,
        allowed: &[(&str, Version)],
        required: &[&str],
    ) -> Result<(), CdiError> {
        let join = |k: &str| {
            if field.is_empty() {
                k.to_owned()
            } else {
                format!("{field}.{k}")
            }
        };
        for k in obj.keys() {
            match allowed.iter().find(|(a, _)| a == k) {
                Some((_, since)) => self.since(*since, &join(k))?,
                None => return Err(invalid(&join(k), "unknown field")),
            }
        }
        for r in required {
            if !obj.contains_key(*r) {
                return Err(invalid(&join(r), "required field is missing"));
            }
        }
        Ok(())
    }

    fn kind(&self, kind: &str) -> Result<(), CdiError> {
        let (vendor, class) = kind
            .split_once('/')
            .ok_or_else(|| invalid("kind", format!("{kind:?} must be VENDOR/CLASS")))?;
        label(vendor, &['_', '-', '.']).map_err(|m| invalid("kind", format!("vendor {m}")))?;
        let dots = self.version >= (0, 6, 0);
        let extra: &[char] = if dots { &['_', '-', '.'] } else { &['_', '-'] };
        label(class, extra).map_err(|m| {
            let hint = if !dots && class.contains('.') {
                " (dots in the class need cdiVersion 0.6.0 or later)"
            } else {
                ""
            };
            invalid("kind", format!("class {m}{hint}"))
        })
    }

    fn annotations(&self, v: &Value, field: &str) -> Result<(), CdiError> {
        for (k, val) in object(v, field)? {
            if k.is_empty() {
                return Err(invalid(field, "annotation keys must not be empty"));
            }
            string(val, &format!("{field}.{k}"))?;
        }
        Ok(())
    }

    fn edits(&self, v: &Value, field: &str) -> Result<(), CdiError> {
        const V3: Version = (0, 3, 0);
        let obj = object(v, field)?;
        self.keys(
            obj,
            field,
            &[
                ("env", V3),
                ("deviceNodes", V3),
                ("mounts", V3),
                ("hooks", V3),
                ("intelRdt", (0, 7, 0)),
                ("additionalGids", (0, 7, 0)),
            ],
            &[],
        )?;
        if let Some(env) = obj.get("env") {
            let f = format!("{field}.env");
            for (i, e) in array(env, &f)?.iter().enumerate() {
                let fi = format!("{f}[{i}]");
                let s = string(e, &fi)?;
                match s.split_once('=') {
                    Some((name, _)) if !name.is_empty() => {}
                    _ => return Err(invalid(&fi, format!("{s:?} must be NAME=VALUE"))),
                }
            }
        }
        if let Some(nodes) = obj.get("deviceNodes") {
            let f = format!("{field}.deviceNodes");
            for (i, n) in array(nodes, &f)?.iter().enumerate() {
                self.device_node(n, &format!("{f}[{i}]"))?;
            }
        }
        if let Some(mounts) = obj.get("mounts") {
            let f = format!("{field}.mounts");
            for (i, m) in array(mounts, &f)?.iter().enumerate() {
                self.mount(m, &format!("{f}[{i}]"))?;
            }
        }
        if let Some(hooks) = obj.get("hooks") {
            let f = format!("{field}.hooks");
            for (i, h) in array(hooks, &f)?.iter().enumerate() {
                self.hook(h, &format!("{f}[{i}]"))?;
            }
        }
        if let Some(rdt) = obj.get("intelRdt") {
            let f = format!("{field}.intelRdt");
            let o = object(rdt, &f)?;
            self.keys(
                o,
                &f,
                &[
                    ("closID", V3),
                    ("l3CacheSchema", V3),
                    ("memBwSchema", V3),
                    ("enableCMT", V3),
                    ("enableMBM", V3),
                ],
                &[],
            )?;
            for (k, val) in o {
                let fk = format!("{f}.{k}");
                if k.starts_with("enable") {
                    val.as_bool().ok_or_else(|| {
                        invalid(&fk, format!("must be a boolean, not {}", type_name(val)))
                    })?;
                } else {
                    string(val, &fk)?;
                }
            }
        }
        if let Some(gids) = obj.get("additionalGids") {
            let f = format!("{field}.additionalGids");
            for (i, g) in array(gids, &f)?.iter().enumerate() {
                integer(g, &format!("{f}[{i}]"), 0, u32::MAX.into())?;
            }
        }
        Ok(())
    }

    fn device_node(&self, v: &Value, field: &str) -> Result<(), CdiError> {
        const V3: Version = (0, 3, 0);
        let o = object(v, field)?;
        self.keys(
            o,
            field,
            &[
                ("path", V3),
                ("hostPath", (0, 5, 0)),
                ("type", V3),
                ("major", V3),
                ("minor", V3),
                ("fileMode", V3),
                ("permissions", V3),
                ("uid", V3),
                ("gid", V3),
            ],
            &["path"],
        )?;
        path_field(&o["path"], &format!("{field}.path"), true)?;
        if let Some(h) = o.get("hostPath") {
            path_field(h, &format!("{field}.hostPath"), true)?;
        }
        if let Some(t) = o.get("type") {
            let f = format!("{field}.type");
            let t = string(t, &f)?;
            if !matches!(t, "b" | "c" | "u" | "p") {
                return Err(invalid(&f, format!("{t:?} must be one of b, c, u, p")));
            }
        }
        for k in ["major", "minor"] {
            if let Some(n) = o.get(k) {
                integer(n, &format!("{field}.{k}"), i64::MIN.into(), i64::MAX.into())?;
            }
        }
        if let Some(m) = o.get("fileMode") {
            integer(m, &format!("{field}.fileMode"), 0, u32::MAX.into())?;
        }
        if let Some(p) = o.get("permissions") {
            let f = format!("{field}.permissions");
            let p = string(p, &f)?;
            if p.is_empty() || !p.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
                return Err(invalid(&f, format!("{p:?} must be made of r, w and m")));
            }
        }
        for k in ["uid", "gid"] {
            if let Some(n) = o.get(k) {
                integer(n, &format!("{field}.{k}"), 0, u32::MAX.into())?;
            }
        }
        Ok(())
    }

    fn mount(&self, v: &Value, field: &str) -> Result<(), CdiError> {
        const V3: Version = (0, 3, 0);
        let o = object(v, field)?;
        self.keys(
            o,
            field,
            &[
                ("hostPath", V3),
                ("containerPath", V3),
                ("options", V3),
                ("type", (0, 4, 0)),
            ],
            &["hostPath", "containerPath"],
        )?;
        path_field(&o["hostPath"], &format!("{field}.hostPath"), false)?;
        path_field(
            &o["containerPath"],
            &format!("{field}.containerPath"),
            false,
        )?;
        if let Some(opts) = o.get("options") {
            strings(opts, &format!("{field}.options"))?;
        }
        if let Some(t) = o.get("type") {
            string(t, &format!("{field}.type"))?;
        }
        Ok(())
    }

    fn hook(&self, v: &Value, field: &str) -> Result<(), CdiError> {
        const V3: Version = (0, 3, 0);
        let o = object(v, field)?;
        self.keys(
            o,
            field,
            &[
                ("hookName", V3),
                ("path", V3),
                ("args", V3),
                ("env", V3),
                ("timeout", V3),
            ],
            &["hookName", "path"],
        )?;
        let f = format!("{field}.hookName");
        let name = string(&o["hookName"], &f)?;
        const STAGES: &[&str] = &[
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop",
        ];
        if !STAGES.contains(&name) {
            return Err(invalid(
                &f,
                format!("{name:?} is not an OCI hook ({})", STAGES.join(", ")),
            ));
        }
        path_field(&o["path"], &format!("{field}.path"), true)?;
        for k in ["args", "env"] {
            if let Some(a) = o.get(k) {
                strings(a, &format!("{field}.{k}"))?;
            }
        }
        if let Some(t) = o.get("timeout") {
            integer(t, &format!("{field}.timeout"), 1, i32::MAX.into())?;
        }
        Ok(())
    }
}

/// Checks a spec against the CDI schema of the version it declares: required fields and
/// their types, the kind and device name grammars, unique device names, and fields that do
/// not exist yet in that version (`hostPath` on device nodes before 0.5.0, `annotations`
/// before 0.6.0, …), including device names starting with a digit before 0.5.0.
///
/// # Errors
/// The first violation, naming the field by its JSON path.
pub fn validate(spec: &Value) -> Result<(), CdiError> {
    let top = object(spec, "spec")?;
    let version_str = string(
        top.get("cdiVersion")
            .ok_or_else(|| invalid("cdiVersion", "required field is missing"))?,
        "cdiVersion",
    )?;
    let version = parse_version(version_str).ok_or_else(|| {
        invalid(
            "cdiVersion",
            format!("{version_str:?} is not a version X.Y.Z"),
        )
    })?;
    if !KNOWN_VERSIONS.contains(&version) {
        return Err(invalid(
            "cdiVersion",
            format!(
                "{version_str:?} is not a known CDI version ({})",
                KNOWN_VERSIONS
                    .iter()
                    .map(|v| vstr(*v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let c = Checker { version };
    const V3: Version = (0, 3, 0);
    c.keys(
        top,
        "",
        &[
            ("cdiVersion", V3),
            ("kind", V3),
            ("devices", V3),
            ("containerEdits", V3),
            ("annotations", (0, 6, 0)),
        ],
        &["kind", "devices"],
    )?;
    c.kind(string(&top["kind"], "kind")?)?;
    if let Some(a) = top.get("annotations") {
        c.annotations(a, "annotations")?;
    }
    let devices = array(&top["devices"], "devices")?;
    if devices.is_empty() {
        return Err(invalid("devices", "must list at least one device"));
    }
    let mut names = BTreeSet::new();
    for (i, d) in devices.iter().enumerate() {
        let f = format!("devices[{i}]");
        let o = object(d, &f)?;
        c.keys(
            o,
            &f,
            &[
                ("name", V3),
                ("containerEdits", V3),
                ("annotations", (0, 6, 0)),
            ],
            &["name", "containerEdits"],
        )?;
        let fname = format!("{f}.name");
        let name = string(&o["name"], &fname)?;
        device_name(name).map_err(|m| invalid(&fname, m))?;
        if name.starts_with(|ch: char| ch.is_ascii_digit()) && c.version < (0, 5, 0) {
            return Err(invalid(
                &fname,
                format!(
                    "{name:?} starts with a digit, which needs cdiVersion 0.5.0 or later (the spec declares {})",
                    vstr(c.version)
                ),
            ));
        }
        if !names.insert(name) {
            return Err(invalid(&fname, format!("{name:?} is listed twice")));
        }
        if let Some(a) = o.get("annotations") {
            c.annotations(a, &format!("{f}.annotations"))?;
        }
        c.edits(&o["containerEdits"], &format!("{f}.containerEdits"))?;
    }
    if let Some(e) = top.get("containerEdits") {
        c.edits(e, "containerEdits")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{HostFile, Library};
    use crate::inventory::{Gpu, Mig, Source};
    use crate::plan::DevNum;
    use serde_json::json;

    fn gpu(index: u32, minor: u32, uuid: &str) -> Gpu {
        Gpu {
            index,
            minor,
            uuid: Some(uuid.into()),
            pci_bus_id: format!("00000000:{:02x}:00.0", 0x1b + index),
            model: None,
            arch: None,
            brand: None,
            migs: Vec::new(),
        }
    }

    fn inputs() -> (Inventory, DriverFiles, HostDevices, CdiOptions) {
        let mut g0 = gpu(0, 2, "GPU-aaaa");
        g0.migs.push(Mig {
            index: 0,
            uuid: "MIG-bbbb".into(),
            gi: 1,
            ci: 0,
        });
        let inv = Inventory {
            source: Source::Nvml,
            driver_version: "550.54.15".into(),
            cuda_version: None,
            gpus: vec![g0, gpu(1, 0, "GPU-cccc")],
        };
        let root = PathBuf::from("/drv");
        let driver = DriverFiles {
            libraries: vec![Library {
                host_path: root.join("usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15"),
                file_name: "libcuda.so.550.54.15".into(),
                links: ["libcuda.so".to_owned(), "libcuda.so.1".to_owned()]
                    .into_iter()
                    .collect(),
                soname: Some("libcuda.so.1".into()),
                compat32: false,
            }],
            binaries: vec![HostFile {
                host_path: root.join("usr/bin/nvidia-smi"),
                container_path: "/usr/bin/nvidia-smi".into(),
            }],
            firmware: Vec::new(),
            ipc: vec![HostFile {
                host_path: root.join("tmp/nvidia-mps"),
                container_path: "/tmp/nvidia-mps".into(),
            }],
            gds: Vec::new(),
            missing: Vec::new(),
        };
        let mut devices = HostDevices::new();
        for (n, minor) in [
            ("nvidiactl", 255),
            ("nvidia0", 0),
            ("nvidia2", 2),
            ("nvidia-uvm", 0),
            ("nvidia-modeset", 254),
            ("nvidia-caps/nvidia-cap3", 3),
            ("nvidia-caps/nvidia-cap4", 4),
        ] {
            devices.insert(n.into(), DevNum { major: 195, minor });
        }
        let opts = CdiOptions {
            driver_root: root,
            dev_root: "/node/dev".into(),
            mig_minors: [
                ("gpu2/gi1/access".to_owned(), 3),
                ("gpu2/gi1/ci0/access".to_owned(), 4),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        (inv, driver, devices, opts)
    }

    #[test]
    fn imex_and_fabric_specs() {
        use crate::plan::DevNum;
        let opts = CdiOptions {
            class: "imex-channel".into(),
            dev_root: "/n/dev".into(),
            ..CdiOptions::default()
        };
        let spec = generate_imex(&[0, 5], &opts).unwrap();
        assert_eq!(spec.kind, "nvidia.com/imex-channel");
        let names: Vec<&str> = spec.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["0", "5"]);
        assert_eq!(
            spec.devices[1].container_edits.device_nodes[0]
                .host_path
                .as_deref(),
            Some("/n/dev/nvidia-caps-imex-channels/channel5")
        );
        assert!(spec.container_edits.is_empty());
        let e = generate_imex(&[], &opts).unwrap_err().to_string();
        assert!(e.starts_with("no IMEX channels"), "{e}");

        let devices: HostDevices = [
            ("infiniband/uverbs0", 231, 192),
            ("infiniband/umad0", 231, 0),
            ("infiniband/rdma_cm", 10, 58),
            ("nvidia-fs0", 245, 0),
        ]
        .into_iter()
        .map(|(n, major, minor)| (n.to_string(), DevNum { major, minor }))
        .collect();
        let opts = CdiOptions {
            class: "mofed".into(),
            ..opts
        };
        let spec = generate_fabric(crate::fabric::Fabric::Mofed, &devices, &[], &opts).unwrap();
        let [all] = spec.devices.as_slice() else {
            panic!("{spec:?}")
        };
        assert_eq!(all.name, "all");
        let paths: Vec<&str> = all
            .container_edits
            .device_nodes
            .iter()
            .map(|n| n.path.as_str())
            .collect();
        assert_eq!(
            paths,
            ["/dev/infiniband/rdma_cm", "/dev/infiniband/uverbs0"]
        );
        let cufile = crate::driver::HostFile {
            host_path: "/d/etc/cufile.json".into(),
            container_path: "/etc/cufile.json".into(),
        };
        let gds = generate_fabric(crate::fabric::Fabric::Gds, &devices, &[cufile], &opts).unwrap();
        assert_eq!(gds.devices[0].container_edits.mounts.len(), 1);
        assert!(generate_fabric(crate::fabric::Fabric::Gdrcopy, &devices, &[], &opts).is_err());
    }

    #[test]
    fn soname_mounts_for_engines_without_hooks() {
        let (inv, driver, devices, mut opts) = inputs();
        let plain = generate(&inv, &driver, &devices, &opts).unwrap();
        opts.soname_mounts = true;
        let spec = generate(&inv, &driver, &devices, &opts).unwrap();
        let paths = |s: &Spec| -> Vec<String> {
            s.container_edits
                .mounts
                .iter()
                .map(|m| m.container_path.clone())
                .collect()
        };
        assert!(!paths(&plain).contains(&"/usr/lib64/libcuda.so.1".to_string()));
        for p in [
            "/usr/lib64/libcuda.so.1",
            "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        ] {
            assert!(
                paths(&spec).contains(&p.to_string()),
                "{p}: {:?}",
                paths(&spec)
            );
        }
        // The hook still makes the links for engines that run it.
        assert_eq!(spec.container_edits.hooks, plain.container_edits.hooks);
    }

    fn nodes(spec: &Spec, name: &str) -> Vec<String> {
        spec.devices
            .iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("no device {name}"))
            .container_edits
            .device_nodes
            .iter()
            .map(|n| format!("{}<{}", n.path, n.host_path.as_deref().unwrap_or("")))
            .collect()
    }

    #[test]
    fn generated_spec_shape_and_validity() {
        let (inv, driver, devices, opts) = inputs();
        let spec = generate(&inv, &driver, &devices, &opts).unwrap();
        assert_eq!(spec.cdi_version, "0.5.0");
        assert_eq!(spec.kind, "nvidia.com/gpu");
        let names: Vec<_> = spec.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["0", "GPU-aaaa", "0:0", "MIG-bbbb", "1", "GPU-cccc", "all"]
        );
        assert_eq!(nodes(&spec, "0"), ["/dev/nvidia2</node/dev/nvidia2"]);
        assert_eq!(nodes(&spec, "GPU-cccc"), ["/dev/nvidia0</node/dev/nvidia0"]);
        assert_eq!(
            nodes(&spec, "MIG-bbbb"),
            [
                "/dev/nvidia2</node/dev/nvidia2",
                "/dev/nvidia-caps/nvidia-cap3</node/dev/nvidia-caps/nvidia-cap3",
                "/dev/nvidia-caps/nvidia-cap4</node/dev/nvidia-caps/nvidia-cap4"
            ]
        );
        assert_eq!(nodes(&spec, "all").len(), 4);
        let e = &spec.container_edits;
        assert_eq!(e.env, ["NVIDIA_VISIBLE_DEVICES=void"]);
        // uvm-tools is absent on this node and modeset needs display.
        let paths: Vec<_> = e.device_nodes.iter().map(|n| n.path.as_str()).collect();
        assert_eq!(paths, ["/dev/nvidiactl", "/dev/nvidia-uvm"]);
        let m: Vec<_> = e
            .mounts
            .iter()
            .map(|m| {
                (
                    m.host_path.as_str(),
                    m.container_path.as_str(),
                    m.options.join(","),
                )
            })
            .collect();
        assert_eq!(
            m,
            [
                (
                    "/drv/tmp/nvidia-mps",
                    "/tmp/nvidia-mps",
                    "nosuid,nodev,noexec,rbind,rprivate".into()
                ),
                (
                    "/drv/usr/bin/nvidia-smi",
                    "/usr/bin/nvidia-smi",
                    "ro,nosuid,nodev,rbind,rprivate".into()
                ),
                (
                    "/drv/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15",
                    "/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15",
                    "ro,nosuid,nodev,rbind,rprivate".into()
                ),
            ]
        );
        assert_eq!(e.hooks.len(), 1);
        assert_eq!(e.hooks[0].hook_name, "createContainer");
        assert_eq!(e.hooks[0].path, "/usr/bin/gres-oci-hook");
        assert_eq!(e.hooks[0].env, crate::HOOK_ENV);
        assert_eq!(
            e.hooks[0].args,
            [
                "gres-oci-hook",
                "update-ldcache",
                "--link",
                "/usr/lib/x86_64-linux-gnu/libcuda.so.1::libcuda.so.550.54.15",
                "--link",
                "/usr/lib/x86_64-linux-gnu/libcuda.so::libcuda.so.550.54.15",
                "--ldconfig",
                "/sbin/ldconfig",
                "--folder",
                "/usr/lib/x86_64-linux-gnu"
            ]
        );
        // Both serialisations read back to the same value, and it validates.
        let v = serde_json::to_value(&spec).unwrap();
        validate(&v).unwrap();
        assert_eq!(parse(&to_json(&spec).unwrap()).unwrap(), v);
        let yaml = to_yaml(&spec).unwrap();
        assert!(yaml.starts_with("cdiVersion: 0.5.0\n"), "{yaml}");
        assert_eq!(parse(&yaml).unwrap(), v);
    }

    #[test]
    fn display_adds_modeset_and_a_driver_root_of_slash_keeps_host_paths() {
        let (inv, mut driver, devices, mut opts) = inputs();
        opts.capabilities = [Capability::Display].into_iter().collect();
        opts.driver_root = "/".into();
        opts.ldconfig = None;
        for l in &mut driver.libraries {
            l.host_path = Path::new("/usr/lib64").join(&l.file_name);
        }
        let spec = generate(&inv, &driver, &devices, &opts).unwrap();
        let paths: Vec<_> = spec
            .container_edits
            .device_nodes
            .iter()
            .map(|n| n.path.as_str())
            .collect();
        assert_eq!(paths, ["/dev/nvidiactl", "/dev/nvidia-modeset"]);
        let lib = &spec.container_edits.mounts.last().unwrap();
        assert_eq!(lib.host_path, lib.container_path);
        assert!(!spec.container_edits.hooks[0]
            .args
            .contains(&"--folder".to_owned()));
    }

    #[test]
    fn generation_errors() {
        let (inv, driver, mut devices, opts) = inputs();
        let mut o = opts.clone();
        o.driver_root = "/elsewhere".into();
        let e = generate(&inv, &driver, &devices, &o)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not inside the driver root /elsewhere"), "{e}");
        let mut o = opts.clone();
        o.mig_minors.clear();
        let e = generate(&inv, &driver, &devices, &o)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "MIG device MIG-bbbb: gpu2/gi1/access is not in mig-minors"
        );
        let mut o = opts.clone();
        o.class = "g.pu".into();
        let e = generate(&inv, &driver, &devices, &o)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("kind: class"), "{e}");
        let mut o = opts.clone();
        o.hook_path = "gres-oci-hook".into();
        assert!(generate(&inv, &driver, &devices, &o).is_err());
        devices.remove("nvidia0");
        let e = generate(&inv, &driver, &devices, &opts)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "nvidia0: no such device node in /node/dev");
    }

    fn good() -> Value {
        json!({
            "cdiVersion": "0.5.0",
            "kind": "vendor.com/gpu",
            "devices": [{"name": "0", "containerEdits": {"deviceNodes": [{"path": "/dev/x", "hostPath": "/h/x"}]}}],
            "containerEdits": {
                "env": ["A=1"],
                "mounts": [{"hostPath": "/a", "containerPath": "/a", "options": ["ro"]}],
                "hooks": [{"hookName": "createContainer", "path": "/bin/h", "args": ["h"]}]
            }
        })
    }

    fn err(v: &Value) -> String {
        validate(v).unwrap_err().to_string()
    }

    #[test]
    fn hand_broken_specs_name_the_field() {
        validate(&good()).unwrap();
        type Edit = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|v| v["cdiVersion"] = json!("0.4.0")), "devices[0].name: \"0\" starts with a digit, which needs cdiVersion 0.5.0 or later (the spec declares 0.4.0)"),
            (Box::new(|v| {
                v["cdiVersion"] = json!("0.4.0");
                v["devices"][0]["name"] = json!("a0");
            }), "devices[0].containerEdits.deviceNodes[0].hostPath: needs cdiVersion 0.5.0 or later (the spec declares 0.4.0)"),
            (Box::new(|v| v["cdiVersion"] = json!("0.9.1")), "cdiVersion: \"0.9.1\" is not a known CDI version"),
            (Box::new(|v| v["cdiVersion"] = json!(5)), "cdiVersion: must be a string, not a number"),
            (Box::new(|v| {
                v.as_object_mut().unwrap().remove("cdiVersion");
            }), "cdiVersion: required field is missing"),
            (Box::new(|v| {
                v.as_object_mut().unwrap().remove("devices");
            }), "devices: required field is missing"),
            (Box::new(|v| v["devices"] = json!([])), "devices: must list at least one device"),
            (Box::new(|v| v["kind"] = json!("gpu")), "kind: \"gpu\" must be VENDOR/CLASS"),
            (Box::new(|v| v["kind"] = json!("1vendor/gpu")), "kind: vendor \"1vendor\" must start with a letter"),
            (Box::new(|v| v["kind"] = json!("vendor.com/g.pu")), "kind: class \"g.pu\" has an invalid character '.' (dots in the class need cdiVersion 0.6.0 or later)"),
            (Box::new(|v| v["kind"] = json!("vendor.com/gpu/x")), "kind: class \"gpu/x\" has an invalid character '/'"),
            (Box::new(|v| v["annotations"] = json!({"a": "b"})), "annotations: needs cdiVersion 0.6.0"),
            (Box::new(|v| v["bogus"] = json!(1)), "bogus: unknown field"),
            (Box::new(|v| v["devices"][0]["name"] = json!("-x")), "devices[0].name: \"-x\" must start with a letter or digit"),
            (Box::new(|v| v["devices"][0]["name"] = json!("a b")), "devices[0].name: \"a b\" has an invalid character ' '"),
            (Box::new(|v| v["devices"][0]["name"] = json!("a:")), "devices[0].name: \"a:\" must end with a letter or digit"),
            (Box::new(|v| {
                let d = v["devices"][0].clone();
                v["devices"].as_array_mut().unwrap().push(d);
            }), "devices[1].name: \"0\" is listed twice"),
            (Box::new(|v| {
                v["devices"][0].as_object_mut().unwrap().remove("containerEdits");
            }), "devices[0].containerEdits: required field is missing"),
            (Box::new(|v| v["devices"][0]["containerEdits"]["deviceNodes"][0]["path"] = json!("dev/x")), "devices[0].containerEdits.deviceNodes[0].path: \"dev/x\" must be an absolute path"),
            (Box::new(|v| v["devices"][0]["containerEdits"]["deviceNodes"][0]["type"] = json!("x")), "devices[0].containerEdits.deviceNodes[0].type: \"x\" must be one of b, c, u, p"),
            (Box::new(|v| v["devices"][0]["containerEdits"]["deviceNodes"][0]["permissions"] = json!("rx")), "devices[0].containerEdits.deviceNodes[0].permissions"),
            (Box::new(|v| v["devices"][0]["containerEdits"]["deviceNodes"][0]["uid"] = json!(-1)), "devices[0].containerEdits.deviceNodes[0].uid: -1 is out of range"),
            (Box::new(|v| {
                v["devices"][0]["containerEdits"]["deviceNodes"][0].as_object_mut().unwrap().remove("path");
            }), "devices[0].containerEdits.deviceNodes[0].path: required field is missing"),
            (Box::new(|v| v["containerEdits"]["env"][0] = json!("A")), "containerEdits.env[0]: \"A\" must be NAME=VALUE"),
            (Box::new(|v| v["containerEdits"]["env"] = json!("A=1")), "containerEdits.env: must be an array, not a string"),
            (Box::new(|v| v["containerEdits"]["mounts"][0]["options"] = json!("ro")), "containerEdits.mounts[0].options: must be an array"),
            (Box::new(|v| {
                v["containerEdits"]["mounts"][0].as_object_mut().unwrap().remove("containerPath");
            }), "containerEdits.mounts[0].containerPath: required field is missing"),
            (Box::new(|v| {
                v["cdiVersion"] = json!("0.3.0");
                v["devices"][0] = json!({"name": "a", "containerEdits": {}});
                v["containerEdits"]["mounts"][0]["type"] = json!("bind");
            }), "containerEdits.mounts[0].type: needs cdiVersion 0.4.0"),
            (Box::new(|v| v["containerEdits"]["hooks"][0]["hookName"] = json!("later")), "containerEdits.hooks[0].hookName: \"later\" is not an OCI hook"),
            (Box::new(|v| v["containerEdits"]["hooks"][0]["path"] = json!("h")), "containerEdits.hooks[0].path: \"h\" must be an absolute path"),
            (Box::new(|v| v["containerEdits"]["hooks"][0]["timeout"] = json!(0)), "containerEdits.hooks[0].timeout: 0 is out of range"),
            (Box::new(|v| v["containerEdits"]["additionalGids"] = json!([1])), "containerEdits.additionalGids: needs cdiVersion 0.7.0"),
            (Box::new(|v| v["containerEdits"]["intelRdt"] = json!({})), "containerEdits.intelRdt: needs cdiVersion 0.7.0"),
            (Box::new(|v| v["containerEdits"] = json!([])), "containerEdits: must be an object, not an array"),
        ];
        for (i, (edit, want)) in cases.iter().enumerate() {
            let mut v = good();
            edit(&mut v);
            let e = err(&v);
            assert!(e.starts_with(want), "case {i}: got {e:?}, want {want:?}");
            assert!(!e.contains('\n'));
        }
        assert_eq!(err(&json!([1])), "spec: must be an object, not an array");
    }

    #[test]
    fn newer_versions_accept_their_fields() {
        let mut v = good();
        v["cdiVersion"] = json!("0.7.0");
        v["kind"] = json!("vendor.com/g.pu");
        v["annotations"] = json!({"a": "b"});
        v["devices"][0]["annotations"] = json!({"c": "d"});
        v["containerEdits"]["additionalGids"] = json!([44]);
        v["containerEdits"]["intelRdt"] = json!({"closID": "x", "enableCMT": true});
        v["containerEdits"]["mounts"][0]["type"] = json!("bind");
        validate(&v).unwrap();
        v["annotations"] = json!({"a": 1});
        assert_eq!(err(&v), "annotations.a: must be a string, not a number");
    }

    #[test]
    fn version_grammar() {
        assert_eq!(parse_version("0.5.0"), Some((0, 5, 0)));
        assert_eq!(parse_version("v0.5.0"), Some((0, 5, 0)));
        for bad in ["0.5", "0.5.0.1", "0.05.0", "a.b.c", "", "0..0"] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
    }

    #[test]
    fn parse_reports_syntax() {
        assert!(parse("{")
            .unwrap_err()
            .to_string()
            .starts_with("not a CDI spec: invalid JSON"));
        assert!(parse("a: [")
            .unwrap_err()
            .to_string()
            .starts_with("not a CDI spec: invalid YAML"));
    }
}
