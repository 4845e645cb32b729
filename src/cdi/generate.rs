//! Building specs: the GPUs (with the driver files and the linker-cache hook), IMEX
//! channels and fabric devices.

use std::collections::BTreeSet;
use std::path::Path;

use super::*;
use crate::driver::DriverFiles;
use crate::inventory::Inventory;
use crate::nodes;
use crate::plan::{HostDevices, Layout, MountKind};

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
    let spec_node = |name: &str| -> Result<DeviceNode, CdiError> {
        Ok(DeviceNode {
            path: format!("/dev/{name}"),
            host_path: Some(utf8(&opts.dev_root.join(name))?),
        })
    };
    let node = |name: &str, required: bool| -> Result<Option<DeviceNode>, CdiError> {
        nodes::find(devices, &opts.dev_root, name, required)?
            .map(|_| spec_node(name))
            .transpose()
    };
    let required = |name: &str| -> Result<DeviceNode, CdiError> {
        nodes::find(devices, &opts.dev_root, name, true)?;
        spec_node(name)
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
        let gpu_node = required(&nodes::gpu(g.minor))?;
        out.push(one(g.index.to_string(), vec![gpu_node.clone()]));
        if let Some(u) = &g.uuid {
            out.push(one(u.clone(), vec![gpu_node.clone()]));
        }
        all.push(gpu_node.clone());
        for m in &g.migs {
            let mut nodes = vec![gpu_node.clone()];
            for cap in nodes::mig_caps(g.minor, m, &opts.mig_minors)? {
                nodes.push(required(&cap)?);
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
    for (n, is_required) in nodes::control(&opts.capabilities) {
        common.device_nodes.extend(node(n, is_required)?);
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
    for (f, kind) in driver.path_mounts(false) {
        common.mounts.push(Mount {
            host_path: utf8(&f.host_path)?,
            container_path: utf8(&f.container_path)?,
            options: owned(match kind {
                MountKind::ReadOnly => FILE_OPTIONS,
                MountKind::Ipc => IPC_OPTIONS,
            }),
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
