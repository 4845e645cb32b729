//! Puts the plan's masked `/proc/driver/nvidia` in place, in the container's mount namespace:
//! a new tmpfs, filled while still detached, attached over the driver's directory of the
//! container's own procfs, the GPUs' directories bound read-only into it, then made read-only.
//!
//! The target is found without trusting the image: `/proc` is looked up inside the rootfs
//! with no link followed, must be a procfs (the runtime's) or, where the runtime mounted none,
//! the image's own directory on the rootfs mount; `driver/nvidia` below it must stay on that
//! same mount, again with no link. A target on a shared mount is refused, since the tmpfs
//! would then propagate to other mount namespaces (the host's `/proc`, for a bundle that binds
//! it with shared propagation).

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use anyhow::{bail, Context, Result};
use gres_oci::proc_mask::ProcMask;
use rustix::fs::{Mode, OFlags, ResolveFlags, CWD};
use rustix::io::Errno;
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, OpenTreeFlags};

use crate::apply::{attach, find_mount, mount_id, mount_setattr, Attrs, RealSys, Refused};

fn refused(path: &Path, why: impl Into<String>) -> anyhow::Error {
    Refused {
        path: path.to_owned(),
        why: why.into(),
        action: "mask",
    }
    .into()
}

/// The container's `/proc/driver/nvidia`, or `None` (with the reason) when there is none.
fn target(sys: &RealSys, shown: &Path) -> Result<std::result::Result<OwnedFd, &'static str>> {
    let strict = ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let proc = match rustix::fs::openat2(
        &sys.root,
        "proc",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | strict,
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Err("the container has no /proc")),
        Err(Errno::LOOP) => return Err(refused(Path::new("/proc"), "a link in the image")),
        Err(e) => return Err(refused(Path::new("/proc"), format!("cannot open: {e}"))),
    };
    let on_procfs = rustix::fs::fstatfs(&proc)
        .map(|s| s.f_type == rustix::fs::PROC_SUPER_MAGIC)
        .unwrap_or(false);
    let proc_mnt = mount_id(proc.as_fd())?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if !on_procfs && proc_mnt != sys.root_mnt {
        let fstype = find_mount(&mountinfo, proc_mnt).map_or("unknown".into(), |m| m.fstype);
        return Err(refused(
            Path::new("/proc"),
            format!("neither a procfs nor the image's own directory ({fstype})"),
        ));
    }
    let nv = match rustix::fs::openat2(
        &proc,
        "driver/nvidia",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_XDEV | strict,
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Err("no NVIDIA driver directory in the container's /proc")),
        Err(Errno::LOOP) => return Err(refused(shown, "a link")),
        Err(Errno::XDEV) => return Err(refused(shown, "crosses a mount point")),
        Err(e) => return Err(refused(shown, format!("cannot open: {e}"))),
    };
    if find_mount(&mountinfo, proc_mnt).is_some_and(|m| m.shared) {
        return Err(refused(
            shown,
            "on a shared mount, whose new mounts would propagate out of the container",
        ));
    }
    Ok(Ok(nv))
}

/// Creates `rel` (and its parents, `0555`) in the detached tmpfs: a directory or an empty
/// file, as a mount point.
fn mount_point(tmpfs: &OwnedFd, rel: &Path, dir: bool) -> Result<()> {
    let mut at = rustix::fs::openat(tmpfs, ".", OFlags::PATH | OFlags::CLOEXEC, Mode::empty())?;
    let comps: Vec<_> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let name = c.as_os_str();
        let made = if last && !dir {
            rustix::fs::openat(
                &at,
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o444),
            )
            .map(drop)
        } else {
            rustix::fs::mkdirat(&at, name, Mode::from_raw_mode(0o555))
        };
        match made {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => bail!("{}: cannot create in the tmpfs: {e}", rel.display()),
        }
        if !last {
            at = rustix::fs::openat(
                &at,
                name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
        }
    }
    Ok(())
}

/// Carries out [`ProcMask`] (see the module's comment).
///
/// # Errors
/// A refused target, or a failing mount; the container then does not start.
pub fn apply(sys: &RealSys, mask: &ProcMask) -> Result<()> {
    let shown = mask.target.as_path();
    if shown != Path::new(gres_oci::proc_mask::PROC_DRIVER) {
        bail!("{}: not the driver's procfs directory", shown.display());
    }
    for m in &mask.missing {
        tracing::warn!(file = %m, "MIG access file not in the host's driver directory; not shown");
    }
    let nv = match target(sys, shown)? {
        Ok(fd) => fd,
        Err(why) => {
            // On a node whose kernel runs the driver the directory is always there; without it
            // the container sees no driver state at all, so there is nothing to hide (and no
            // reason to warn at each start).
            tracing::debug!("{why}; {} not masked", shown.display());
            return Ok(());
        }
    };
    let bytes: usize = mask.files.iter().map(|f| f.contents.len()).sum();
    let fs = rustix::mount::fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC).context("tmpfs")?;
    rustix::mount::fsconfig_set_string(&fs, "mode", "0555").context("tmpfs mode")?;
    let size = (bytes + (1 << 20)).to_string();
    rustix::mount::fsconfig_set_string(&fs, "size", size.as_str()).context("tmpfs size")?;
    rustix::mount::fsconfig_create(&fs).context("tmpfs")?;
    let tmpfs = rustix::mount::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )
    .context("tmpfs: fsmount")?;
    for f in &mask.files {
        let fd = rustix::fs::openat(
            &tmpfs,
            f.name.as_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(f.mode),
        )
        .with_context(|| format!("{}/{}: cannot create", shown.display(), f.name))?;
        std::fs::File::from(fd)
            .write_all(f.contents.as_bytes())
            .with_context(|| format!("{}/{}: write", shown.display(), f.name))?;
    }
    // An empty gpus/ even for a container with no GPU, as the driver's own tree has it.
    mount_point(&tmpfs, Path::new("gpus"), true)?;
    for b in &mask.binds {
        mount_point(&tmpfs, &b.target, b.dir)?;
    }
    attach(tmpfs.as_fd(), nv.as_fd(), shown)?;
    let ro = Attrs(Attrs::RDONLY | Attrs::NOSUID | Attrs::NODEV | Attrs::NOEXEC);
    for b in &mask.binds {
        let tree = rustix::mount::open_tree(
            CWD,
            &b.source,
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )
        .with_context(|| format!("{}: cannot open for binding", b.source.display()))?;
        let at = rustix::fs::openat2(
            &tmpfs,
            &b.target,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH
                | ResolveFlags::NO_XDEV
                | ResolveFlags::NO_SYMLINKS
                | ResolveFlags::NO_MAGICLINKS,
        )
        .with_context(|| format!("{}/{}: mount point", shown.display(), b.target.display()))?;
        sys.mount_at(tree, at.as_fd(), ro, &shown.join(&b.target))?;
    }
    mount_setattr(tmpfs.as_fd(), ro)
        .with_context(|| format!("{}: making it read-only", shown.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_mounts_are_seen_in_optional_fields_only() {
        let mi = "\
21 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
121 120 0:53 / /b/rootfs/proc rw,nosuid - proc proc rw
122 120 0:53 / /b/rootfs/proc2 rw,nosuid master:4 - proc proc rw
123 120 0:53 / /b/rootfs/proc3 rw,nosuid shared:9 master:4 - proc proc rw
124 120 0:53 / /b/rootfs/shared:1 rw,nosuid - proc shared:1 rw
";
        let shared = |id| find_mount(mi, id).map(|m| m.shared);
        assert_eq!(shared(21), Some(true));
        assert_eq!(shared(121), Some(false));
        assert_eq!(shared(122), Some(false));
        assert_eq!(shared(123), Some(true));
        assert_eq!(shared(124), Some(false));
        assert_eq!(shared(7), None);
        assert_eq!(find_mount(mi, 123).unwrap().fstype, "proc");
        assert_eq!(find_mount(mi, 21).unwrap().fstype, "ext4");
    }
}
