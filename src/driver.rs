//! Which host files make up the NVIDIA driver for a set of capabilities: libraries (through the
//! driver root's ld.so.cache), binaries, GSP firmware and IPC sockets. Reads the driver root
//! only; every path is resolved inside it, never against the host's `/`.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use crate::ldcache::LdCache;
use crate::nvidia_env::{Capabilities, Capability};
use crate::plan::MountKind;

/// Library name prefixes per capability, as NVIDIA's CLI matches them in the cache.
pub fn libraries_for(cap: Capability) -> &'static [&'static str] {
    match cap {
        Capability::Utility => &["libnvidia-ml.so", "libnvidia-cfg.so", "libnvidia-nscq.so"],
        Capability::Compute => &[
            "libcuda.so",
            "libcudadebugger.so",
            "libnvidia-opencl.so",
            "libnvidia-gpucomp.so",
            "libnvidia-ptxjitcompiler.so",
            "libnvidia-fatbinaryloader.so",
            "libnvidia-allocator.so",
            "libnvidia-compiler.so",
            "libnvidia-pkcs11.so",
            "libnvidia-pkcs11-openssl3.so",
            "libnvidia-nvvm.so",
            "libnvidia-tileiras.so",
        ],
        Capability::Video => &[
            "libvdpau_nvidia.so",
            "libnvidia-encode.so",
            "libnvidia-opticalflow.so",
            "libnvcuvid.so",
        ],
        Capability::Graphics | Capability::Display => &[
            "libnvidia-eglcore.so",
            "libnvidia-glcore.so",
            "libnvidia-tls.so",
            "libnvidia-glsi.so",
            "libnvidia-fbc.so",
            "libnvidia-ifr.so",
            "libnvidia-rtcore.so",
            "libnvoptix.so",
            "libGLX_nvidia.so",
            "libEGL_nvidia.so",
            "libGLESv2_nvidia.so",
            "libGLESv1_CM_nvidia.so",
            "libnvidia-glvkspirv.so",
            "libnvidia-cbl.so",
        ],
        Capability::Ngx => &["libnvidia-ngx.so"],
        Capability::Compat32 => &[],
    }
}

/// The capabilities whose library lists a request pulls in (video needs compute's, display
/// graphics').
fn library_caps(caps: &Capabilities) -> BTreeSet<Capability> {
    let mut out: BTreeSet<Capability> = caps.iter().copied().collect();
    if caps.contains(Capability::Video) {
        out.insert(Capability::Compute);
    }
    if caps.contains(Capability::Display) {
        out.insert(Capability::Graphics);
    }
    out
}

pub fn binaries_for(cap: Capability) -> &'static [&'static str] {
    match cap {
        Capability::Utility => &[
            "nvidia-smi",
            "nvidia-debugdump",
            "nvidia-persistenced",
            "nv-fabricmanager",
        ],
        Capability::Compute => &["nvidia-cuda-mps-control", "nvidia-cuda-mps-server"],
        _ => &[],
    }
}

/// One driver library to inject.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Library {
    /// The real, versioned file on the host (`<root>/…/libcuda.so.550.54.15`).
    pub host_path: PathBuf,
    /// Its base name, which it keeps in the container.
    pub file_name: String,
    /// Names that must link to it in the container (`libcuda.so.1`, `libcuda.so`).
    pub links: BTreeSet<String>,
    /// Its SONAME (the linker cache's key for it), when known.
    pub soname: Option<String>,
    /// A 32-bit library (compat32).
    pub compat32: bool,
}

/// A file or directory injected at a fixed container path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct HostFile {
    pub host_path: PathBuf,
    pub container_path: PathBuf,
}

/// Everything found for one set of capabilities.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DriverFiles {
    pub libraries: Vec<Library>,
    pub binaries: Vec<HostFile>,
    pub firmware: Vec<HostFile>,
    /// Sockets and the MPS pipe (and, for MPS steps, log) directories, mounted read-write.
    pub ipc: Vec<HostFile>,
    /// GPUDirect Storage's host files (`/run/udev`, `/etc/cufile.json`), mounted read-only
    /// where the container gets `nvidia-fs` nodes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gds: Vec<HostFile>,
    /// Names that were looked for and not found (NVIDIA treats these as warnings).
    pub missing: Vec<String>,
}

/// The host's udev database and cuFile config under the driver root `root`, as NVIDIA's GDS
/// discovery mounts them for a container with GPUDirect Storage, where present.
pub fn gds_files(root: &Path) -> Vec<HostFile> {
    ["/run/udev", "/etc/cufile.json"]
        .into_iter()
        .filter_map(|p| {
            Some(HostFile {
                host_path: resolve_in(root, Path::new(p))?,
                container_path: PathBuf::from(p),
            })
        })
        .collect()
}

impl DriverFiles {
    /// The files mounted at their own container paths, with how: binaries, firmware and
    /// (`with_gds`, only where the container gets GDS nodes, as NVIDIA's discovery does) the
    /// GDS files read-only; IPC sockets and the MPS directories writable. Libraries go where
    /// the consumer lays them out.
    pub fn path_mounts(&self, with_gds: bool) -> impl Iterator<Item = (&HostFile, MountKind)> {
        let gds = if with_gds { &self.gds[..] } else { &[] };
        self.binaries
            .iter()
            .chain(&self.firmware)
            .chain(gds)
            .map(|f| (f, MountKind::ReadOnly))
            .chain(self.ipc.iter().map(|f| (f, MountKind::Ipc)))
    }
}

/// Where discovery looks.
pub struct DriverRoot<'a> {
    pub root: &'a Path,
    pub cache: &'a LdCache,
    pub version: &'a str,
    pub library_search_dirs: &'a [PathBuf],
    pub binary_search_dirs: &'a [PathBuf],
}

impl<'a> DriverRoot<'a> {
    /// The driver root and search dirs a config names, for a driver `version` whose cache is
    /// `cache`.
    pub fn new(config: &'a crate::config::Config, cache: &'a LdCache, version: &'a str) -> Self {
        DriverRoot {
            root: &config.driver_root,
            cache,
            version,
            library_search_dirs: &config.library_search_dirs,
            binary_search_dirs: &config.binary_search_dirs,
        }
    }

    /// Finds the files for `caps`. Deterministic: everything is sorted.
    pub fn discover(&self, caps: &Capabilities) -> DriverFiles {
        let mut files = DriverFiles::default();
        let mut arches = vec![(crate::ldcache::native_arch(), false)];
        if caps.contains(Capability::Compat32) {
            if let Some(a) = crate::ldcache::compat32_arch() {
                arches.push((a, true));
            }
        }
        for cap in library_caps(caps) {
            for name in libraries_for(cap) {
                for &(arch, compat32) in &arches {
                    match self.find_library(name, arch) {
                        Some(mut lib) => {
                            lib.compat32 = compat32;
                            merge_library(&mut files.libraries, lib);
                        }
                        None => files
                            .missing
                            .push(format!("{name}{}", if compat32 { " (32-bit)" } else { "" })),
                    }
                }
            }
            for name in binaries_for(cap) {
                match self.find_binary(name) {
                    Some(host_path) => files.binaries.push(HostFile {
                        host_path,
                        container_path: Path::new("/usr/bin").join(name),
                    }),
                    None => files.missing.push((*name).to_owned()),
                }
            }
        }
        self.add_firmware(&mut files);
        self.add_ipc(caps, &mut files);
        files.libraries.sort();
        files.binaries.sort();
        files.binaries.dedup();
        files.firmware.sort();
        files.ipc.sort();
        files.missing.sort();
        files.missing.dedup();
        files
    }

    /// The first cache entry whose key starts with `name` and whose file, resolved inside the
    /// root, is this driver version's. Falls back to the search dirs.
    fn find_library(&self, name: &str, arch: i32) -> Option<Library> {
        let suffix = format!(".so.{}", self.version);
        let mut found: Option<Library> = None;
        // glibc-hwcaps variants are optimised copies the loader picks by CPU; the driver ships
        // none, and injecting one under the plain name would be wrong.
        for e in self
            .cache
            .lookup_prefix(name, arch)
            .filter(|e| e.hwcap & crate::ldcache::HWCAP_EXTENSION == 0)
        {
            let Some(real) = resolve_in(self.root, Path::new(&e.value)) else {
                continue;
            };
            let Some(file_name) = real.file_name().and_then(|f| f.to_str()) else {
                continue;
            };
            // The base name must be this library at the driver's version: a prefix match alone
            // would take libnvidia-ml.so for libnvidia-ml-foo.so, or an older driver's leftovers.
            if !file_name.ends_with(&suffix) || !file_name.starts_with(name) {
                continue;
            }
            // Cache keys are SONAMEs; the first entry for the file names it.
            let lib = found.get_or_insert_with(|| Library {
                host_path: real.clone(),
                file_name: file_name.to_owned(),
                links: BTreeSet::new(),
                soname: Some(e.key.clone()),
                compat32: false,
            });
            if lib.host_path != real {
                continue;
            }
            if e.key != lib.file_name {
                lib.links.insert(e.key.clone());
            }
        }
        if found.is_none() {
            let file = format!("{name}.{}", self.version);
            for dir in self.library_search_dirs {
                let candidate = dir.join(&file);
                if let Some(real) = resolve_in(self.root, &candidate) {
                    let soname = crate::elf::soname(&real);
                    let links = soname.iter().filter(|s| **s != file).cloned().collect();
                    found = Some(Library {
                        host_path: real,
                        file_name: file,
                        links,
                        soname,
                        compat32: false,
                    });
                    break;
                }
            }
        }
        if let Some(lib) = &mut found {
            // The unversioned development names NVIDIA's CLI also links.
            if matches!(name, "libcuda.so" | "libnvidia-opticalflow.so") {
                lib.links.insert(name.to_owned());
            }
        }
        found
    }

    fn find_binary(&self, name: &str) -> Option<PathBuf> {
        self.binary_search_dirs
            .iter()
            .find_map(|d| resolve_in(self.root, &d.join(name)))
    }

    fn add_firmware(&self, files: &mut DriverFiles) {
        let rel = PathBuf::from(format!("/lib/firmware/nvidia/{}", self.version));
        let Some(dir) = resolve_in(self.root, &rel) else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(n) = name.to_str() else { continue };
            if n.starts_with("gsp") && n.ends_with(".bin") {
                files.firmware.push(HostFile {
                    host_path: dir.join(n),
                    container_path: rel.join(n),
                });
            }
        }
    }

    /// For a container that asks for GPUDirect Storage: see [`gds_files`].
    pub fn add_gds_files(&self, files: &mut DriverFiles) {
        files.gds.extend(gds_files(self.root));
    }

    /// For a Slurm step that holds MPS shares (gres/mps) and asks for compute: the MPS log
    /// directory, next to the pipe directory that every compute container gets, so that the
    /// job can run or inspect its MPS control daemon. Nothing when the node has none.
    pub fn add_mps_log_dir(&self, caps: &Capabilities, files: &mut DriverFiles) {
        const LOG_DIR: &str = "/var/log/nvidia-mps";
        if !caps.contains(Capability::Compute) {
            return;
        }
        if let Some(host_path) = resolve_in(self.root, Path::new(LOG_DIR)) {
            files.ipc.push(HostFile {
                host_path,
                container_path: PathBuf::from(LOG_DIR),
            });
        }
    }

    fn add_ipc(&self, caps: &Capabilities, files: &mut DriverFiles) {
        let mut want: Vec<&str> = Vec::new();
        if caps.contains(Capability::Utility) {
            want.extend([
                "/var/run/nvidia-persistenced/socket",
                "/var/run/nvidia-fabricmanager/socket",
            ]);
        }
        if caps.contains(Capability::Compute) {
            want.push("/tmp/nvidia-mps");
        }
        for p in want {
            if let Some(host_path) = resolve_in(self.root, Path::new(p)) {
                files.ipc.push(HostFile {
                    host_path,
                    container_path: PathBuf::from(p),
                });
            }
        }
    }
}

fn merge_library(libs: &mut Vec<Library>, lib: Library) {
    match libs.iter_mut().find(|l| l.host_path == lib.host_path) {
        Some(l) => l.links.extend(lib.links),
        None => libs.push(lib),
    }
}

/// Resolves `path` (absolute, as seen from inside `root`) to an existing host path, following
/// symlinks the way a process chrooted to `root` would: absolute link targets restart at
/// `root`, and `..` never climbs above it. `None` if it does not exist or loops.
pub fn resolve_in(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut stack: Vec<std::ffi::OsString> = Vec::new();
    let mut pending: Vec<std::ffi::OsString> = components_rev(path);
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            stack.pop();
            continue;
        }
        if c == "." || c.is_empty() {
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&stack);
        candidate.push(&c);
        let meta = std::fs::symlink_metadata(&candidate).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = std::fs::read_link(&candidate).ok()?;
            if target.is_absolute() {
                stack.clear();
            }
            pending.extend(components_rev(&target));
        } else {
            stack.push(c);
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&stack);
    Some(out)
}

fn components_rev(p: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<_> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    v.reverse();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolve_stays_inside_root() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("usr/lib")).unwrap();
        std::fs::write(r.join("usr/lib/libx.so.1.0"), b"x").unwrap();
        symlink("libx.so.1.0", r.join("usr/lib/libx.so.1")).unwrap();
        symlink("/usr/lib", r.join("lib")).unwrap();
        symlink("../../../../../../usr/lib/libx.so.1", r.join("usr/lib/up")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        symlink("/etc/passwd", r.join("passwd")).unwrap();
        let real = r.join("usr/lib/libx.so.1.0");
        assert_eq!(
            resolve_in(r, Path::new("/usr/lib/libx.so.1")),
            Some(real.clone())
        );
        assert_eq!(
            resolve_in(r, Path::new("/lib/libx.so.1")),
            Some(real.clone())
        );
        assert_eq!(resolve_in(r, Path::new("/usr/lib/up")), Some(real));
        assert_eq!(resolve_in(r, Path::new("/loop")), None);
        // An absolute link restarts at the root, so it cannot reach the host's /etc.
        assert_eq!(resolve_in(r, Path::new("/passwd")), None);
    }

    #[test]
    fn video_pulls_compute_and_display_graphics() {
        let caps: Capabilities = [Capability::Video, Capability::Display]
            .into_iter()
            .collect();
        let got: Vec<_> = library_caps(&caps).into_iter().collect();
        assert_eq!(
            got,
            vec![
                Capability::Compute,
                Capability::Display,
                Capability::Graphics,
                Capability::Video
            ]
        );
    }
}
