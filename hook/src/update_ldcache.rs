//! `gres-oci-hook update-ldcache`: the OCI createContainer hook named in generated CDI specs.
//! It makes the driver libraries' soname links and rebuilds the container's linker cache, as
//! the prestart hook does after its own mounts, for runtimes that did the mounts from CDI.
//!
//! Where it runs: a createContainer hook is started by the runtime inside the container's
//! mount namespace, after the rootfs, `/dev` and the CDI mounts are in place and before
//! pivot_root. So the rootfs is still at its absolute host path (`root.path` of
//! `<bundle>/config.json`), and an absolute path such as `/sbin/ldconfig` still resolves
//! against the host's root as this namespace shows it. The host ldconfig is opened from there
//! first, before anything in the rootfs is touched, and run from that descriptor with an empty
//! environment; every path inside the rootfs is resolved with `RESOLVE_IN_ROOT`
//! ([`apply::RealSys`]). The state's `pid` is not used: runc gives 1 (the container's pid
//! namespace), crun 0. The working directory is the bundle for crun but the rootfs for runc,
//! so the bundle is taken from the state and only falls back to the working directory.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::apply::{RealSys, Sys};
use crate::cli::Flags;

pub const USAGE: &str = "\
Usage: gres-oci-hook update-ldcache [--link PATH::TARGET]... [--folder DIR]... [--ldconfig PATH]
                                    [--host-driver-version VERSION]

An OCI createContainer hook (OCI state on stdin), as generated CDI specs run it: creates each
link PATH (absolute, in the container) pointing at TARGET, leaving anything already there
alone, then, when folders are given, rebuilds the container's linker cache for those
directories with the host's ldconfig (default /sbin/ldconfig, or /sbin/ldconfig.real when
present) and mounts it over /etc/ld.so.cache; the image's own file is not rewritten. With
--host-driver-version, an image's CUDA forward-compat libraries (/usr/local/cuda/compat) come
first when NVIDIA's rule says they suit that host driver.
";

struct Args {
    links: Vec<(PathBuf, PathBuf)>,
    folders: Vec<PathBuf>,
    ldconfig: PathBuf,
    host_driver_version: Option<String>,
}

fn parse(rest: &[String]) -> Result<Option<Args>> {
    let f = Flags::parse(
        rest,
        &["link", "folder", "ldconfig", "host-driver-version"],
        &["help", "h"],
    )?;
    if f.has("help") || f.has("h") {
        print!("{USAGE}");
        return Ok(None);
    }
    if let Some(p) = f.positional.first() {
        bail!("update-ldcache takes no argument {p:?}");
    }
    let mut links = Vec::new();
    for l in f.all("link") {
        let (path, target) = l
            .split_once("::")
            .with_context(|| format!("--link {l:?}: must be PATH::TARGET"))?;
        if !path.starts_with('/') || target.is_empty() {
            bail!("--link {l:?}: PATH must be absolute and TARGET not empty");
        }
        links.push((PathBuf::from(path), PathBuf::from(target)));
    }
    let mut folders = Vec::new();
    for d in f.all("folder") {
        if !d.starts_with('/') {
            bail!("--folder {d:?}: must be an absolute container path");
        }
        folders.push(PathBuf::from(d));
    }
    let ldconfig = PathBuf::from(f.last("ldconfig").unwrap_or("/sbin/ldconfig"));
    if !ldconfig.is_absolute() {
        bail!(
            "--ldconfig {}: must be an absolute host path",
            ldconfig.display()
        );
    }
    Ok(Some(Args {
        links,
        folders,
        ldconfig,
        host_driver_version: f.last("host-driver-version").map(str::to_owned),
    }))
}

/// The bundle from the OCI state on stdin; the working directory when the state names none
/// (or crun's `/` at startContainer).
fn bundle_dir(stdin: impl Read) -> Result<PathBuf> {
    let mut buf = Vec::new();
    stdin
        .take(1 << 20)
        .read_to_end(&mut buf)
        .context("reading OCI state from stdin")?;
    let state: crate::state::State =
        serde_json::from_slice(&buf).context("OCI state on stdin is not valid JSON")?;
    match state.bundle() {
        Some(b) if b != Path::new("/") => Ok(b.to_owned()),
        _ => std::env::current_dir().context("no bundle in the OCI state and no working directory"),
    }
}

/// `root.path` of `<bundle>/config.json`, made absolute against the bundle.
fn rootfs(bundle: &Path) -> Result<PathBuf> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let spec: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: invalid JSON", path.display()))?;
    let root = spec["root"]["path"]
        .as_str()
        .filter(|s| !s.is_empty())
        .with_context(|| format!("{}: no root.path", path.display()))?;
    Ok(bundle.join(root))
}

/// # Errors
/// Bad arguments or state, an unreadable bundle, a link or the linker cache that fails.
pub fn run(rest: &[String]) -> Result<()> {
    let Some(args) = parse(rest)? else {
        return Ok(());
    };
    // Opened before anything else: in this namespace, before pivot_root, absolute paths are
    // still the host's.
    let ldconfig = if args.folders.is_empty() {
        None
    } else {
        let p = gres_oci::config::host_ldconfig_binary(&args.ldconfig, Path::exists);
        Some((crate::ns::open_host_binary(&p)?, p))
    };
    let bundle = bundle_dir(std::io::stdin().lock())?;
    let rootfs = rootfs(&bundle)?;
    let mut folders = args.folders.clone();
    if let Some(host) = args
        .host_driver_version
        .as_deref()
        .filter(|_| !folders.is_empty())
    {
        // ldconfig lists the first dir's library first for a soname, which is the one ld.so
        // takes.
        if let Some(c) = crate::gather::cuda_compat(&rootfs, host) {
            tracing::debug!(compat = %c.version, "CUDA compat libraries first");
            folders.insert(0, PathBuf::from(gres_oci::cudacompat::COMPAT_DIR));
        }
    }
    let (fd, ldconfig_path) = match ldconfig {
        Some((fd, p)) => (Some(fd), Some(p)),
        None => (None, None),
    };
    let mut sys = RealSys::new(&rootfs, fd)?;
    for (path, target) in &args.links {
        if !sys.symlink(path, target)? {
            tracing::debug!(path = %path.display(), "image already has this path; link not created");
        }
    }
    if let Some(p) = ldconfig_path {
        sys.ldconfig(&p, &folders, &[])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args;

    #[test]
    fn arguments() {
        let a = parse(&args(&[
            "--link",
            "/usr/lib/libcuda.so.1::libcuda.so.550.54.15",
            "--folder",
            "/usr/lib",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            a.links,
            [(
                PathBuf::from("/usr/lib/libcuda.so.1"),
                PathBuf::from("libcuda.so.550.54.15")
            )]
        );
        assert_eq!(a.folders, [PathBuf::from("/usr/lib")]);
        assert_eq!(a.ldconfig, PathBuf::from("/sbin/ldconfig"));
        for bad in [
            &["--link", "libcuda.so.1::x"][..],
            &["--link", "/a"],
            &["--link", "/a::"],
            &["--folder", "usr/lib"],
            &["--ldconfig", "ldconfig"],
            &["extra"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bundle_and_rootfs() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join("config.json"),
            r#"{"root":{"path":"rootfs"}}"#,
        )
        .unwrap();
        let state = format!(
            r#"{{"ociVersion":"1.0","id":"c","status":"created","pid":0,"bundle":"{}"}}"#,
            t.path().display()
        );
        let b = bundle_dir(state.as_bytes()).unwrap();
        assert_eq!(b, t.path());
        assert_eq!(rootfs(&b).unwrap(), t.path().join("rootfs"));
        std::fs::write(t.path().join("config.json"), r#"{"root":{}}"#).unwrap();
        assert!(format!("{:#}", rootfs(&b).unwrap_err()).contains("no root.path"));
        assert!(bundle_dir(&b"nope"[..]).is_err());
        // No bundle: the working directory.
        let b = bundle_dir(&br#"{"id":"c","pid":1}"#[..]).unwrap();
        assert_eq!(b, std::env::current_dir().unwrap());
    }
}
