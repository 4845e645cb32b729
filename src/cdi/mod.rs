//! Container Device Interface (CDI) specs: their types and text forms here; [`generate`] builds
//! one for the node's GPUs from the inventory, the driver files and the device nodes (and
//! [`generate_imex`], [`generate_fabric`] for the other kinds); [`validate`] checks any spec
//! against the CDI schema of the version it declares. Pure: no I/O here, the caller gathers
//! the inputs.
//!
//! A generated spec declares `cdiVersion` 0.5.0: the first version with `hostPath` on device
//! nodes and with device names that start with a digit (`"0"`), and the last one podman 4.3.1
//! reads (it skips newer specs without a word).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::nvidia_env::{Capabilities, Capability};

mod generate;
mod schema;

pub use generate::{generate, generate_fabric, generate_imex};
pub use schema::validate;

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
    #[error(transparent)]
    Node(#[from] crate::nodes::NodeError),
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

pub(crate) fn utf8(p: &Path) -> Result<String, CdiError> {
    p.to_str()
        .map(str::to_owned)
        .ok_or_else(|| CdiError::NotUtf8(p.to_owned()))
}

/// `host` seen from inside the driver root: `<root>/usr/lib/x.so` → `/usr/lib/x.so`.
pub(crate) fn in_root(host: &Path, root: &Path) -> Result<String, CdiError> {
    let rel = host.strip_prefix(root).map_err(|_| CdiError::OutsideRoot {
        path: host.to_owned(),
        root: root.to_owned(),
    })?;
    utf8(&Path::new("/").join(rel))
}

pub(crate) fn to_value(spec: &Spec) -> Result<Value, CdiError> {
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

#[cfg(test)]
mod tests {
    use super::schema::parse_version;
    use super::*;
    use crate::driver::DriverFiles;
    use crate::driver::{HostFile, Library};
    use crate::inventory::Inventory;
    use crate::inventory::{Gpu, Mig, Source};
    use crate::plan::DevNum;
    use crate::plan::HostDevices;
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
            "MIG device MIG-bbbb: no gpu2/gi1/access in the driver's mig-minors list"
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
        assert_eq!(e, "device node nvidia0 not found under /node/dev");
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
