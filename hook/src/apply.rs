//! Carries out a plan's operations inside the container's mount namespace: a small
//! interpreter over the narrow [`Sys`] trait, and [`RealSys`], which does it with fd-based
//! syscalls so that no path inside the rootfs is ever resolved outside it.
//!
//! The rootfs tree also holds other mounts: the runtime's `/proc`, `/sys` and `/dev`, and the
//! bundle's bind mounts of host directories. An image link onto one of those would make the
//! root hook create files in a host directory or read a procfs file, so every path is
//! resolved with `RESOLVE_NO_XDEV` and must stay on the rootfs's own mount. The one
//! exception is the container's `/dev`, where device nodes and the scratch linker cache go:
//! it must be the runtime's tmpfs (or part of the rootfs), and paths below it may not leave it.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use gres_oci::ldcache::{compat32_arch, native_arch, updated_cache, MAX_CACHE_SIZE};
use gres_oci::plan::{CacheEntry, MountKind, Op};
use gres_oci::proc_mask::ProcMask;
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, StatxFlags, CWD};
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
    /// Puts the masked `/proc/driver/nvidia` in place (see [`crate::proc_mask`]).
    fn mask_proc_driver(&mut self, mask: &ProcMask) -> Result<()>;
}

/// Runs `ops` in order; stops at the first error.
///
/// # Errors
/// The first failing operation, naming its path.
pub fn execute(ops: &[Op], sys: &mut dyn Sys) -> Result<()> {
    for op in ops {
        match op {
            Op::BindDevice { source, target } => sys.bind(source, target, Kind::Device, Attrs::DEVICE),
            Op::BindFile { source, target, kind } => optional_ipc(
                *kind,
                sys.bind(source, target, Kind::File, Attrs::for_kind(*kind)),
            ),
            Op::BindDir { source, target, kind } => optional_ipc(
                *kind,
                sys.bind(source, target, Kind::Dir, Attrs::for_kind(*kind)),
            ),
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
            Op::MaskProcDriver(mask) => sys.mask_proc_driver(mask),
        }?;
    }
    Ok(())
}

/// An IPC endpoint (the persistenced socket, the MPS directory) is optional: one whose target
/// lies on another mount is left out with a warning rather than failing the container, since a
/// site may well mount its own tmpfs on `/run` or `/tmp`. Everything else stops the container.
fn optional_ipc(kind: MountKind, r: Result<()>) -> Result<()> {
    match r {
        Err(e) if kind == MountKind::Ipc => match e.downcast_ref::<Refused>() {
            Some(refused) => {
                tracing::warn!("{refused}; IPC endpoint not injected");
                Ok(())
            }
            None => Err(e),
        },
        r => r,
    }
}

/// A container path the hook will not touch because it lies outside the filesystem it may
/// write or read there.
#[derive(Debug, thiserror::Error)]
#[error("{}: {why}; refusing to {action} it", path.display())]
pub struct Refused {
    pub path: PathBuf,
    pub why: String,
    pub action: &'static str,
}

/// Where a container path may lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// The rootfs's own mount: libraries, binaries, firmware, links, the linker cache.
    Rootfs,
    /// The container's `/dev`, the runtime's tmpfs: device nodes and the scratch cache.
    Dev,
}

impl Area {
    /// Device nodes, and nothing else, go to the container's `/dev`.
    pub fn of(path: &Path, kind: Kind) -> Area {
        if (kind == Kind::Device || path == Path::new(LDCACHE_TMP)) && path.starts_with("/dev/") {
            Area::Dev
        } else {
            Area::Rootfs
        }
    }
}

/// One line of `/proc/self/mountinfo`, as far as the refusal messages need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u64,
    pub mount_point: String,
    pub fstype: String,
    /// It propagates new mounts to peers (`shared:N` among the optional fields, which end at
    /// the lone `-`).
    pub shared: bool,
}

/// The mount with id `id` in `mountinfo` (proc(5): `ID PARENT MAJ:MIN ROOT POINT OPTS
/// [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS`). Octal escapes in the mount point are kept.
pub fn find_mount(mountinfo: &str, id: u64) -> Option<MountEntry> {
    mountinfo.lines().find_map(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        if f.first()?.parse::<u64>().ok()? != id {
            return None;
        }
        // Optional fields start at 6 and end at the lone `-`.
        let dash = 6 + f.get(6..)?.iter().position(|x| *x == "-")?;
        Some(MountEntry {
            id,
            mount_point: f.get(4)?.to_string(),
            fstype: f.get(dash + 1)?.to_string(),
            shared: f[6..dash].iter().any(|x| x.starts_with("shared:")),
        })
    })
}

/// Why a path on `mount` may not be used for `area`; `None` when it may. `root_mnt` is the
/// mount id of the rootfs. Pure, so that the policy is tested without mounts.
pub fn mount_refusal(area: Area, mount: &MountEntry, root_mnt: u64) -> Option<String> {
    if mount.id == root_mnt {
        return None;
    }
    let why = match mount.fstype.as_str() {
        "proc" => "on procfs, not the container's root filesystem".to_owned(),
        "sysfs" => "on sysfs, not the container's root filesystem".to_owned(),
        "devtmpfs" => "on the host's devtmpfs, not the container's root filesystem".to_owned(),
        // The runtime's /dev is a tmpfs of its own; only device nodes go there.
        "tmpfs" if area == Area::Dev => return None,
        other => format!(
            "on another mount than the container's root filesystem ({other} at {}, a bind mount of the bundle?)",
            mount.mount_point
        ),
    };
    Some(why)
}

/// The real thing. Build it after entering the container's mount namespace.
pub struct RealSys {
    rootfs: PathBuf,
    pub(crate) root: OwnedFd,
    /// The mount id of the rootfs: every path but those under `/dev` must be on it.
    pub(crate) root_mnt: u64,
    /// The container's `/dev`, once checked to be the runtime's tmpfs or part of the rootfs.
    dev: std::cell::OnceCell<std::result::Result<OwnedFd, Refused>>,
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
        let root_mnt = mount_id(root.as_fd())
            .with_context(|| format!("{}: cannot stat rootfs", rootfs.display()))?;
        Ok(RealSys {
            rootfs: rootfs.to_owned(),
            root,
            root_mnt,
            dev: std::cell::OnceCell::new(),
            ldconfig,
        })
    }

    /// The container's `/dev`, resolved inside the rootfs (the runtime mounted its tmpfs where
    /// an image link leads) and refused unless it is that tmpfs or part of the rootfs.
    fn dev(&self) -> std::result::Result<&OwnedFd, Refused> {
        self.dev
            .get_or_init(|| {
                let refused = |why: String| Refused {
                    path: PathBuf::from("/dev"),
                    why,
                    action: "create device nodes in",
                };
                let fd = rustix::fs::openat2(
                    &self.root,
                    "dev",
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
                )
                .map_err(|e| refused(format!("cannot open: {e}")))?;
                match self.refusal(Area::Dev, fd.as_fd()) {
                    None => Ok(fd),
                    Some(why) => Err(refused(why)),
                }
            })
            .as_ref()
            .map_err(|r| Refused {
                path: r.path.clone(),
                why: r.why.clone(),
                action: r.action,
            })
    }

    /// Why the object behind `fd` is off limits for `area`, from its mount; `None` if allowed.
    fn refusal(&self, area: Area, fd: BorrowedFd) -> Option<String> {
        let id = match mount_id(fd) {
            Ok(id) => id,
            Err(e) => return Some(format!("cannot find its mount: {e}")),
        };
        if id == self.root_mnt {
            return None;
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let entry = find_mount(&mountinfo, id).unwrap_or(MountEntry {
            id,
            mount_point: "?".into(),
            fstype: "unknown".into(),
            shared: false,
        });
        mount_refusal(area, &entry, self.root_mnt)
    }

    /// The base directory and the path below it for container path `rel` in `area`.
    fn base<'a>(&'a self, area: Area, rel: &'a Path) -> Result<(BorrowedFd<'a>, &'a Path)> {
        Ok(match area {
            Area::Rootfs => (self.root.as_fd(), rel),
            Area::Dev => (self.dev()?.as_fd(), rel.strip_prefix("dev").unwrap_or(rel)),
        })
    }

    /// Opens `rel` (relative to the rootfs) as if the rootfs were `/`: symlinks in the image,
    /// absolute or `..`, cannot leave it (openat2 RESOLVE_IN_ROOT, CVE-2024-0132), nor cross
    /// onto another mount (RESOLVE_NO_XDEV): EXDEV. Under `/dev`, the same within `/dev`.
    fn open_in(&self, area: Area, rel: &Path, flags: OFlags) -> Result<OwnedFd, OpenError> {
        let (base, below) = self.base(area, rel).map_err(OpenError::Other)?;
        let below = if below.as_os_str().is_empty() {
            Path::new(".")
        } else {
            below
        };
        rustix::fs::openat2(
            base,
            below,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV,
        )
        .map_err(OpenError::Errno)
    }

    /// Why `rel` could not be reached without crossing a mount: the mount of the first path
    /// on the way that lies on another one, opened `O_PATH` only (no file's own open runs, so
    /// nothing is read from procfs). Links are followed by hand where the kernel cannot go
    /// (a procfs `self` link of another pid namespace dangles for the hook).
    fn crossing(&self, area: Area, rel: &Path) -> String {
        const GENERIC: &str = "crosses a mount point";
        let Ok((base, below)) = self.base(area, rel) else {
            return GENERIC.into();
        };
        let open = |p: &Path, extra: OFlags, resolve: ResolveFlags| {
            rustix::fs::openat2(
                base,
                p,
                OFlags::PATH | OFlags::CLOEXEC | extra,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | resolve,
            )
        };
        let mut path = below.to_owned();
        'links: for _ in 0..16 {
            let mut prefix = PathBuf::new();
            let comps: Vec<_> = path.components().collect();
            for (i, c) in comps.iter().enumerate() {
                prefix.push(c);
                if open(&prefix, OFlags::empty(), ResolveFlags::NO_XDEV).is_ok() {
                    continue;
                }
                if let Ok(fd) = open(&prefix, OFlags::empty(), ResolveFlags::empty()) {
                    return self
                        .refusal(Area::Rootfs, fd.as_fd())
                        .unwrap_or_else(|| GENERIC.into());
                }
                // The last step is a link whose target the kernel could not reach: follow it.
                let Ok(link) = open(&prefix, OFlags::NOFOLLOW, ResolveFlags::NO_XDEV) else {
                    return GENERIC.into();
                };
                let Ok(target) = rustix::fs::readlinkat(&link, "", Vec::new()) else {
                    return GENERIC.into();
                };
                let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
                let mut next = match target.strip_prefix("/") {
                    Ok(abs) => abs.to_owned(),
                    Err(_) => prefix.parent().unwrap_or(Path::new("")).join(target),
                };
                next.extend(&comps[i + 1..]);
                path = next;
                continue 'links;
            }
            break;
        }
        GENERIC.into()
    }

    /// `open_in`, with EXDEV turned into a [`Refused`] naming `shown` and why.
    fn open_checked(
        &self,
        area: Area,
        rel: &Path,
        flags: OFlags,
        shown: &Path,
        action: &'static str,
    ) -> Result<std::result::Result<OwnedFd, Errno>> {
        match self.open_in(area, rel, flags) {
            Ok(fd) => Ok(Ok(fd)),
            Err(OpenError::Errno(Errno::XDEV)) => Err(Refused {
                path: shown.to_owned(),
                why: self.crossing(area, rel),
                action,
            }
            .into()),
            Err(OpenError::Errno(e)) => Ok(Err(e)),
            Err(OpenError::Other(e)) => Err(e),
        }
    }

    /// The directory `rel`, created (0755, parents first) where missing. `shown` is the path
    /// the caller works on, for the refusal message.
    fn dir(&self, area: Area, rel: &Path, shown: &Path) -> Result<OwnedFd> {
        let flags = OFlags::PATH | OFlags::DIRECTORY;
        match self.open_checked(area, rel, flags, shown, "create")? {
            Ok(fd) => Ok(fd),
            Err(Errno::NOENT) => {
                let parent = self.dir(area, rel.parent().unwrap_or(Path::new("")), shown)?;
                let name = rel.file_name().context("empty directory name")?;
                match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => bail!("/{}: cannot create directory: {e}", rel.display()),
                }
                self.open_checked(area, rel, flags, shown, "create")?
                    .map_err(|e| anyhow::anyhow!("/{}: cannot open directory: {e}", rel.display()))
            }
            Err(e) => bail!("/{}: cannot open directory: {e}", rel.display()),
        }
    }

    /// An fd for the mount target `target`, created empty if missing. An existing target is
    /// used as is (resolved inside the rootfs and on the mount its area allows), never
    /// replaced.
    fn target(&self, target: &Path, kind: Kind) -> Result<OwnedFd> {
        let rel = relative(target)?;
        let area = Area::of(target, kind);
        let name = rel
            .file_name()
            .with_context(|| format!("{}: no file name", target.display()))?;
        let parent = self.dir(area, rel.parent().unwrap_or(Path::new("")), target)?;
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
            .open_checked(area, &rel, OFlags::PATH, target, "create")?
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
    ///
    /// # Errors
    /// The image's cache lies on another mount (an image link onto procfs or a bind mount).
    fn updated_cache(&self, entries: &[CacheEntry]) -> Result<Option<Vec<u8>>> {
        let image = match self.read_in_root(Path::new("etc/ld.so.cache")) {
            Ok(b) => b,
            Err(e) if e.is::<Refused>() => return Err(e),
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "image linker cache unreadable; running ldconfig");
                return Ok(None);
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
        Ok(bytes
            .map_err(|e| tracing::debug!(error = %gres_oci::error_chain(&e), "linker cache not rewritable in-process; running ldconfig"))
            .ok())
    }

    /// A regular file of the image, read without following links out of the rootfs or onto
    /// another mount; `Ok(None)` when it does not exist.
    fn read_in_root(&self, rel: &Path) -> Result<Option<Vec<u8>>> {
        use std::io::Read;
        let shown = Path::new("/").join(rel);
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
        let fd = match self.open_checked(Area::Rootfs, rel, flags, &shown, "read")? {
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
        let area = Area::of(Path::new(path), Kind::File);
        let dir = self.dir(area, rel.parent().unwrap_or(Path::new("")), Path::new(path))?;
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
        // `-r` chroots, and that is all ldconfig needs: it writes the cache into the root-owned
        // /dev tmpfs as uid 0 and reads the image's world-readable libraries. Without
        // CAP_SYS_PTRACE, CAP_SYSLOG, CAP_DAC_* and the rest, an image ld.so.conf naming
        // /proc/1/root/…, /proc/kmsg or a root-only file gets nothing.
        crate::ns::run_helper(fd.as_fd(), &args, &[caps::Capability::CAP_SYS_CHROOT])
            .with_context(|| format!("ldcache error: {}", ldconfig.display()))
    }

    pub(crate) fn mount_at(
        &self,
        tree: OwnedFd,
        target: BorrowedFd,
        attrs: Attrs,
        what: &Path,
    ) -> Result<()> {
        mount_setattr(tree.as_fd(), attrs)
            .with_context(|| format!("{}: setting mount flags", what.display()))?;
        attach(tree.as_fd(), target, what)
    }
}

/// Why [`RealSys::open_in`] failed: the kernel's answer, or no usable base directory.
#[derive(Debug)]
enum OpenError {
    Errno(Errno),
    Other(anyhow::Error),
}

/// Attaches the detached mount `tree` on `target`.
pub(crate) fn attach(tree: BorrowedFd, target: BorrowedFd, what: &Path) -> Result<()> {
    rustix::mount::move_mount(
        tree,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .with_context(|| format!("{}: mount failed", what.display()))
}

/// The mount id of the object behind `fd` (statx `STATX_MNT_ID`, Linux 5.8).
pub(crate) fn mount_id(fd: BorrowedFd) -> Result<u64> {
    let st = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)?;
    if !StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::MNT_ID) {
        bail!("the kernel reports no mount id (statx needs Linux 5.8)");
    }
    Ok(st.stx_mnt_id)
}

/// `mount_setattr(2)` on a detached tree: set `attrs` and make it private, so nothing mounted
/// into the container propagates anywhere else. rustix does not wrap this call.
pub(crate) fn mount_setattr(fd: BorrowedFd, attrs: Attrs) -> std::io::Result<()> {
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
        let parent = self.dir(Area::Rootfs, rel.parent().unwrap_or(Path::new("")), path)?;
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
            self.updated_cache(entries)?
        };
        match in_process {
            Some(bytes) => self.write_dev_file(LDCACHE_TMP, &bytes)?,
            None => self.run_ldconfig(ldconfig, dirs)?,
        }
        // Put the new cache over the image's; the image's file on disk stays as it was.
        let tmp_rel = relative(Path::new(LDCACHE_TMP))?;
        let src = self
            .open_checked(
                Area::Dev,
                &tmp_rel,
                OFlags::PATH,
                Path::new(LDCACHE_TMP),
                "mount",
            )?
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
        let dev = self.dev()?;
        let _ = rustix::fs::unlinkat(dev, ".gres-oci-ld.so.cache", AtFlags::empty());
        Ok(())
    }

    fn mask_proc_driver(&mut self, mask: &ProcMask) -> Result<()> {
        crate::proc_mask::apply(self, mask)
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
        fn mask_proc_driver(&mut self, mask: &ProcMask) -> Result<()> {
            self.0.push(format!(
                "mask {} {} files {} binds",
                mask.target.display(),
                mask.files.len(),
                mask.binds.len()
            ));
            Ok(())
        }
    }

    #[test]
    fn interpreter_maps_ops_to_calls_and_stops_on_error() {
        let ops = vec![
            Op::BindDevice {
                source: "/h/nvidia0".into(),
                target: "/dev/nvidia0".into(),
            },
            Op::MaskProcDriver(ProcMask {
                target: "/proc/driver/nvidia".into(),
                files: vec![],
                binds: vec![],
                missing: vec![],
            }),
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
                "mask /proc/driver/nvidia 0 files 0 binds",
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

    const MOUNTINFO: &str = "\
21 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
120 21 0:52 / /b/rootfs rw,relatime master:1 - overlay overlay rw
121 120 0:53 / /b/rootfs/proc rw,nosuid - proc proc rw
122 120 0:54 / /b/rootfs/dev rw,nosuid - tmpfs tmpfs rw,mode=755
123 120 0:21 / /b/rootfs/sys ro,nosuid - sysfs sysfs ro
124 120 8:1 /tmp/shm /b/rootfs/mnt/shm rw,relatime - ext4 /dev/sda1 rw
125 120 0:5 / /b/rootfs/mnt/hostdev rw - devtmpfs udev rw
126 120 0:25 / /b/rootfs/mnt/tmp rw - tmpfs tmpfs rw
";

    fn entry(id: u64) -> MountEntry {
        find_mount(MOUNTINFO, id).unwrap()
    }

    #[test]
    fn mountinfo_lines_by_id() {
        assert_eq!(
            entry(124),
            MountEntry {
                id: 124,
                mount_point: "/b/rootfs/mnt/shm".into(),
                fstype: "ext4".into(),
                shared: false,
            }
        );
        assert_eq!(entry(122).fstype, "tmpfs");
        assert_eq!(find_mount(MOUNTINFO, 7), None);
        assert_eq!(find_mount("garbage\n\n1 2", 1), None);
    }

    /// Only the rootfs's own mount takes files and links; the container's /dev may be the
    /// runtime's tmpfs; procfs, sysfs, devtmpfs and bind mounts are refused for both.
    #[test]
    fn what_may_lie_where() {
        let root = 120;
        for area in [Area::Rootfs, Area::Dev] {
            assert_eq!(mount_refusal(area, &entry(120), root), None);
            for (id, why) in [
                (121, "on procfs"),
                (123, "on sysfs"),
                (125, "on the host's devtmpfs"),
                (124, "on another mount than the container's root filesystem (ext4 at /b/rootfs/mnt/shm"),
            ] {
                let r = mount_refusal(area, &entry(id), root).unwrap();
                assert!(r.starts_with(why), "{area:?} {id}: {r}");
            }
        }
        assert_eq!(mount_refusal(Area::Dev, &entry(122), root), None);
        assert_eq!(mount_refusal(Area::Dev, &entry(126), root), None);
        assert!(mount_refusal(Area::Rootfs, &entry(122), root).is_some());
        assert!(mount_refusal(Area::Rootfs, &entry(126), root).is_some());
    }

    #[test]
    fn only_device_nodes_and_the_scratch_cache_go_to_dev() {
        assert_eq!(Area::of(Path::new("/dev/nvidia0"), Kind::Device), Area::Dev);
        assert_eq!(
            Area::of(Path::new("/dev/nvidia-caps/nvidia-cap1"), Kind::Device),
            Area::Dev
        );
        assert_eq!(Area::of(Path::new(LDCACHE_TMP), Kind::File), Area::Dev);
        assert_eq!(Area::of(Path::new("/dev/x.so"), Kind::File), Area::Rootfs);
        assert_eq!(
            Area::of(Path::new("/usr/lib64/x"), Kind::Device),
            Area::Rootfs
        );
        assert_eq!(
            Area::of(Path::new("/devices/x"), Kind::Device),
            Area::Rootfs
        );
    }

    #[test]
    fn refusals_are_one_line_naming_path_and_reason() {
        let r = Refused {
            path: "/usr/lib64/libcuda.so.1".into(),
            why: "on procfs, not the container's root filesystem".into(),
            action: "create",
        };
        assert_eq!(
            r.to_string(),
            "/usr/lib64/libcuda.so.1: on procfs, not the container's root filesystem; refusing to create it"
        );
    }

    /// A refused IPC endpoint is skipped; any other refusal, or any IPC error that is not a
    /// refusal, stops the container.
    #[test]
    fn refused_ipc_endpoints_are_skipped() {
        let refused = || -> Result<()> {
            Err(Refused {
                path: "/run/x".into(),
                why: "on tmpfs".into(),
                action: "create",
            }
            .into())
        };
        assert!(optional_ipc(MountKind::Ipc, refused()).is_ok());
        assert!(optional_ipc(MountKind::ReadOnly, refused()).is_err());
        assert!(optional_ipc(MountKind::Ipc, Err(anyhow::anyhow!("mount failed"))).is_err());
    }
}
