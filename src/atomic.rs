//! Replacing a file whole: write a temporary file next to it, then rename it over, so that a
//! reader (a runtime watching the CDI dir, slurmstepd reading a spool file, the hook reading
//! a record) sees the old file or the new one, never a partial one.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `bytes` to `path` through `.<name>.gres-oci.<pid>` in the same directory, with
/// permission bits `mode` and, when given, owner `(uid, gid)`, synced before the rename.
///
/// # Errors
/// Any failed step; the temporary file is then removed.
pub fn replace(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".gres-oci.{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    // A leftover of a process that died with this pid.
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replaces_whole_with_mode_and_leaves_nothing_behind() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("spec.json");
        std::fs::write(&p, "old").unwrap();
        replace(&p, b"new", 0o640, None).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        // A non-empty directory in the way: the rename fails, the temporary file goes.
        let dir = d.path().join("dir");
        std::fs::create_dir_all(dir.join("inner")).unwrap();
        assert!(replace(&dir, b"x", 0o644, None).is_err());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
        assert!(replace(Path::new("/"), b"x", 0o644, None).is_err());
        assert!(replace(&d.path().join("no/such/dir/x"), b"x", 0o644, None).is_err());
    }
}
