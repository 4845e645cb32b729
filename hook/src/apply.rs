//! Carries out a plan's operations inside the container's mount namespace: a small
//! interpreter over the narrow [`Sys`] trait, and [`RealSys`], which does it with fd-based
//! syscalls so that no path inside the rootfs is ever resolved outside it.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use gres_oci::ldcache::{compat32_arch, native_arch, updated_cache, MAX_CACHE_SIZE};
use gres_oci::plan::{CacheEntry, MountKind, Op};
use rustix::fs::{Mode, OFlags, ResolveFlags, CWD};
use rustix::io::Errno;
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

/// Mount attributes (linux/mount.h `MOUNT_ATTR_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attrs(pub u64);

impl Attrs {
    pub const RDONLY: u64 = 0x1;
    pub const NOSUID: u64 = 0x2;
    pub const NODEV: u64 = 0x4;
    pub const NOEXEC: u64 = 0x8;
    /// Devices: `ro,nosuid,noexec`; ro does not stop I/O on a character device.
    pub const DEVICE: Attrs = Attrs(Self::RDONLY | Self::NOSUID | Self::NOEXEC);
    pub const FILE: Attrs = Attrs(Self::RDONLY | Self::NOSUID | Self::NODEV);
    pub const IPC: Attrs = Attrs(Self::NOSUID | Self::NODEV | Self::NOEXEC);

    fn for_kind(k: MountKind) -> Attrs {
        match k {
            MountKind::ReadOnly => Self::FILE,
            MountKind::Ipc => Self::IPC,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Device,
    File,
    Dir,
}

/// The syscalls the interpreter needs. Container paths are absolute, as seen from inside the
/// container; implementations resolve them under the rootfs.
pub trait Sys {
    fn bind(&mut self, source: &Path, target: &Path, kind: Kind, attrs: Attrs) -> Result<()>;
    /// Returns false when something already exists at `path` (it is left alone).
    fn symlink(&mut self, path: &Path, target: &Path) -> Result<bool>;
    /// Updates the linker cache with `entries` (in-process where the image's cache allows,
    /// else by running `ldconfig` over `dirs`; always `ldconfig` when `entries` is empty).
    fn ldconfig(&mut self, ldconfig: &Path, dirs: &[PathBuf], entries: &[CacheEntry])
        -> Result<()>;
}

/// Runs `ops` in order; stops at the first error.
///
/// # Errors
/// The first failing operation, naming its path.
pub fn execute(ops: &[Op], sys: &mut dyn Sys) -> Result<()> {
    for op in ops {
        match op {
            Op::BindDevice { source, target } => sys.bind(source, target, Kind::Device, Attrs::DEVICE),
            Op::BindFile { source, target, kind } => {
                sys.bind(source, target, Kind::File, Attrs::for_kind(*kind))
            }
            Op::BindDir { source, target, kind } => {
                sys.bind(source, target, Kind::Dir, Attrs::for_kind(*kind))
            }
            Op::Symlink { path, target } => sys.symlink(path, target).map(|created| {
                if !created {
                    tracing::warn!(path = %path.display(), "image already has this path; link not created");
                }
            }),
            Op::Ldconfig {
                ldconfig,
                dirs,
                entries,
            } => sys.ldconfig(ldconfig, dirs, entries),
        }?;
    }
    Ok(())
}

/// The real thing. Build it after entering the container's mount namespace.
pub struct RealSys {
    rootfs: PathBuf,
    root: OwnedFd,
    /// Opened on the host before entering the namespace, so the image cannot substitute it.
    ldconfig: Option<OwnedFd>,
}

/// The scratch name of the new linker cache, in the container's `/dev` tmpfs, so that the
/// image's own file is never rewritten on disk.
const LDCACHE_TMP: &str = "/dev/.gres-oci-ld.so.cache";

fn relative(p: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            _ => bail!("{}: container paths may not contain '..'", p.display()),
        }
    }
    Ok(out)
}

impl RealSys {
    /// # Errors
    /// The rootfs cannot be opened as a directory.
    pub fn new(rootfs: &Path, ldconfig: Option<OwnedFd>) -> Result<RealSys> {
        let root = rustix::fs::open(
            rootfs,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("{}: cannot open rootfs", rootfs.display()))?;
        Ok(RealSys {
            rootfs: rootfs.to_owned(),
            root,
            ldconfig,
        })
    }

    /// Opens `rel` (relative to the rootfs) as if the rootfs were `/`: symlinks in the image,
    /// absolute or `..`, cannot leave it (openat2 RESOLVE_IN_ROOT, CVE-2024-0132).
    fn open_in_root(&self, rel: &Path, flags: OFlags) -> rustix::io::Result<OwnedFd> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        rustix::fs::openat2(
            &self.root,
            rel,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// The directory `rel`, created (0755, parents first) where missing.
    fn dir(&self, rel: &Path) -> Result<OwnedFd> {
        match self.open_in_root(rel, OFlags::PATH | OFlags::DIRECTORY) {
            Ok(fd) => Ok(fd),
            Err(Errno::NOENT) => {
                let parent = self.dir(rel.parent().unwrap_or(Path::new("")))?;
                let name = rel.file_name().context("empty directory name")?;
                match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => bail!("/{}: cannot create directory: {e}", rel.display()),
                }
                self.open_in_root(rel, OFlags::PATH | OFlags::DIRECTORY)
                    .with_context(|| format!("/{}: cannot open directory", rel.display()))
            }
            Err(e) => bail!("/{}: cannot open directory: {e}", rel.display()),
        }
    }

    /// An fd for the mount target `target`, created empty if missing. An existing target is
    /// used as is (resolved inside the rootfs), never replaced.
    fn target(&self, target: &Path, kind: Kind) -> Result<OwnedFd> {
        let rel = relative(target)?;
        let name = rel
            .file_name()
            .with_context(|| format!("{}: no file name", target.display()))?;
        let parent = self.dir(rel.parent().unwrap_or(Path::new("")))?;
        let created = match kind {
            Kind::Dir => rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755)),
            Kind::File | Kind::Device => rustix::fs::openat(
                &parent,
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .map(drop),
        };
        match created {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => bail!("{}: cannot create mount target: {e}", target.display()),
        }
        let fd = self
            .open_in_root(&rel, OFlags::PATH)
            .with_context(|| format!("{}: cannot open mount target", target.display()))?;
        let st = rustix::fs::fstat(&fd)?;
        let is_dir =
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory;
        if is_dir != (kind == Kind::Dir) {
            bail!(
                "{}: the image has a {} here",
                target.display(),
                if is_dir { "directory" } else { "file" }
            );
        }
        Ok(fd)
    }

    /// The image's linker cache with `entries` added, built in-process (the expensive part of
    /// running ldconfig is scanning the image's library dirs, which this skips). `None` when
    /// the image's cache cannot be read or rewritten faithfully: the caller runs ldconfig.
    fn updated_cache(&self, entries: &[CacheEntry]) -> Option<Vec<u8>> {
        let image = match self.read_in_root(Path::new("etc/ld.so.cache")) {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "image linker cache unreadable; running ldconfig");
                return None;
            }
        };
        let pairs = |compat32: bool| -> Vec<(String, String)> {
            entries
                .iter()
                .filter(|e| e.compat32 == compat32)
                .map(|e| (e.soname.clone(), e.path.display().to_string()))
                .collect()
        };
        let mut bytes = updated_cache(image.as_deref(), &pairs(false), native_arch());
        let c32 = pairs(true);
        if let (Ok(b), false, Some(arch)) = (&bytes, c32.is_empty(), compat32_arch()) {
            bytes = updated_cache(Some(b), &c32, arch);
        }
        bytes
            .map_err(|e| tracing::debug!(error = %e, "linker cache not rewritable in-process; running ldconfig"))
            .ok()
    }

    /// A regular file of the image, read without following links out of the rootfs;
    /// `Ok(None)` when it does not exist.
    fn read_in_root(&self, rel: &Path) -> Result<Option<Vec<u8>>> {
        use std::io::Read;
        let fd = match self.open_in_root(rel, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => bail!("/{}: {e}", rel.display()),
        };
        let st = rustix::fs::fstat(&fd)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            bail!("/{}: not a regular file", rel.display());
        }
        if st.st_size as u64 > MAX_CACHE_SIZE {
            bail!("/{}: larger than {MAX_CACHE_SIZE} bytes", rel.display());
        }
        let mut buf = Vec::with_capacity(st.st_size as usize);
        std::fs::File::from(fd).read_to_end(&mut buf)?;
        Ok(Some(buf))
    }

    /// Writes a new file under the container's `/dev` (the runtime's tmpfs, so nothing lands
    /// in the image on disk).
    fn write_dev_file(&self, path: &str, bytes: &[u8]) -> Result<()> {
        let rel = relative(Path::new(path))?;
        let dir = self.dir(rel.parent().unwrap_or(Path::new("")))?;
        let name = rel.file_name().context("no file name")?;
        let fd = rustix::fs::openat(
            &dir,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .with_context(|| format!("{path}: cannot create"))?;
        std::io::Write::write_all(&mut std::fs::File::from(fd), bytes)
            .with_context(|| format!("{path}: write"))?;
        Ok(())
    }

    fn run_ldconfig(&self, ldconfig: &Path, dirs: &[PathBuf]) -> Result<()> {
        let fd = self
            .ldconfig
            .as_ref()
            .with_context(|| format!("{}: not opened", ldconfig.display()))?;
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("ldconfig"),
            OsStr::new("-r"),
            self.rootfs.as_os_str(),
            // -X: links are the plan's business; ldconfig must not rewrite the image's.
            OsStr::new("-X"),
            OsStr::new("-C"),
            OsStr::new(LDCACHE_TMP),
        ];
        args.extend(dirs.iter().map(|d| d.as_os_str()));
        crate::ns::run_helper(fd.as_fd(), &args)
            .with_context(|| format!("ldcache error: {}", ldconfig.display()))
    }

    fn mount_at(&self, tree: OwnedFd, target: BorrowedFd, attrs: Attrs, what: &Path) -> Result<()> {
        mount_setattr(tree.as_fd(), attrs)
            .with_context(|| format!("{}: setting mount flags", what.display()))?;
        rustix::mount::move_mount(
            &tree,
            "",
            target,
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
        .with_context(|| format!("{}: mount failed", what.display()))?;
        Ok(())
    }
}

/// `mount_setattr(2)` on a detached tree: set `attrs` and make it private, so nothing mounted
/// into the container propagates anywhere else. rustix does not wrap this call.
fn mount_setattr(fd: BorrowedFd, attrs: Attrs) -> std::io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let a = MountAttr {
        attr_set: attrs.0,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    // SAFETY: the fd is valid for the call, the path is a NUL-terminated empty string, and
    // `a` is a properly sized, initialised `struct mount_attr` that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &a as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Sys for RealSys {
    fn bind(&mut self, source: &Path, target: &Path, kind: Kind, attrs: Attrs) -> Result<()> {
        if kind == Kind::Device {
            use std::os::unix::fs::FileTypeExt;
            let m = std::fs::metadata(source)
                .with_context(|| format!("{}: cannot stat", source.display()))?;
            if !m.file_type().is_char_device() {
                bail!("{}: invalid device node", source.display());
            }
        }
        let tree = rustix::mount::open_tree(
            CWD,
            source,
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )
        .with_context(|| format!("{}: cannot open for binding", source.display()))?;
        let t = self.target(target, kind)?;
        self.mount_at(tree, t.as_fd(), attrs, target)
    }

    fn symlink(&mut self, path: &Path, target: &Path) -> Result<bool> {
        let rel = relative(path)?;
        let name = rel
            .file_name()
            .with_context(|| format!("{}: no file name", path.display()))?;
        let parent = self.dir(rel.parent().unwrap_or(Path::new("")))?;
        match rustix::fs::symlinkat(target, &parent, name) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => Ok(false),
            Err(e) => bail!("{}: cannot create link: {e}", path.display()),
        }
    }

    fn ldconfig(
        &mut self,
        ldconfig: &Path,
        dirs: &[PathBuf],
        entries: &[CacheEntry],
    ) -> Result<()> {
        let in_process = if entries.is_empty() {
            None
        } else {
            self.updated_cache(entries)
        };
        match in_process {
            Some(bytes) => self.write_dev_file(LDCACHE_TMP, &bytes)?,
            None => self.run_ldconfig(ldconfig, dirs)?,
        }
        // Put the new cache over the image's; the image's file on disk stays as it was.
        let tmp_rel = relative(Path::new(LDCACHE_TMP))?;
        let src = self
            .open_in_root(&tmp_rel, OFlags::PATH)
            .with_context(|| format!("{LDCACHE_TMP}: ldconfig wrote no cache"))?;
        let tree = rustix::mount::open_tree(
            &src,
            "",
            OpenTreeFlags::OPEN_TREE_CLONE
                | OpenTreeFlags::OPEN_TREE_CLOEXEC
                | OpenTreeFlags::AT_EMPTY_PATH,
        )
        .context("cloning the new linker cache")?;
        let target = Path::new("/etc/ld.so.cache");
        let t = self.target(target, Kind::File)?;
        self.mount_at(tree, t.as_fd(), Attrs::FILE, target)?;
        let dev = self.dir(Path::new("dev"))?;
        let _ = rustix::fs::unlinkat(&dev, ".gres-oci-ld.so.cache", rustix::fs::AtFlags::empty());
        Ok(())
    }
}

/// A C string from a path-ish value; NUL bytes cannot occur in paths that came from the
/// kernel or JSON, but hostile JSON could carry one.
pub fn cstring(s: &OsStr) -> Result<CString> {
    CString::new(s.as_bytes()).with_context(|| format!("{:?}: contains a NUL byte", s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Vec<String>);

    impl Sys for Recorder {
        fn bind(&mut self, source: &Path, target: &Path, kind: Kind, attrs: Attrs) -> Result<()> {
            self.0.push(format!(
                "bind {kind:?} {} {} {:#x}",
                source.display(),
                target.display(),
                attrs.0
            ));
            Ok(())
        }
        fn symlink(&mut self, path: &Path, target: &Path) -> Result<bool> {
            self.0
                .push(format!("link {} {}", path.display(), target.display()));
            Ok(true)
        }
        fn ldconfig(
            &mut self,
            ldconfig: &Path,
            dirs: &[PathBuf],
            entries: &[CacheEntry],
        ) -> Result<()> {
            self.0.push(format!(
                "ldconfig {} {:?} {}",
                ldconfig.display(),
                dirs,
                entries.len()
            ));
            bail!("boom")
        }
    }

    #[test]
    fn interpreter_maps_ops_to_calls_and_stops_on_error() {
        let ops = vec![
            Op::BindDevice {
                source: "/h/nvidia0".into(),
                target: "/dev/nvidia0".into(),
            },
            Op::BindFile {
                source: "/d/libcuda.so.1.2".into(),
                target: "/usr/lib64/libcuda.so.1.2".into(),
                kind: MountKind::ReadOnly,
            },
            Op::BindDir {
                source: "/d/mps".into(),
                target: "/tmp/nvidia-mps".into(),
                kind: MountKind::Ipc,
            },
            Op::Symlink {
                path: "/usr/lib64/libcuda.so.1".into(),
                target: "libcuda.so.1.2".into(),
            },
            Op::Ldconfig {
                ldconfig: "/sbin/ldconfig".into(),
                dirs: vec!["/usr/lib64".into()],
                entries: vec![],
            },
            Op::Symlink {
                path: "/never".into(),
                target: "x".into(),
            },
        ];
        let mut r = Recorder::default();
        let err = execute(&ops, &mut r).unwrap_err();
        assert_eq!(err.to_string(), "boom");
        assert_eq!(
            r.0,
            vec![
                "bind Device /h/nvidia0 /dev/nvidia0 0xb",
                "bind File /d/libcuda.so.1.2 /usr/lib64/libcuda.so.1.2 0x7",
                "bind Dir /d/mps /tmp/nvidia-mps 0xe",
                "link /usr/lib64/libcuda.so.1 libcuda.so.1.2",
                "ldconfig /sbin/ldconfig [\"/usr/lib64\"] 0",
            ]
        );
    }

    #[test]
    fn container_paths_reject_dotdot() {
        assert_eq!(
            relative(Path::new("/usr/lib")).unwrap(),
            PathBuf::from("usr/lib")
        );
        assert!(relative(Path::new("/usr/../../etc")).is_err());
    }
}
