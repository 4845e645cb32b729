//! The container's device cgroup: on v1, the plan's rules are appended to `devices.allow`.
//! On v2 the device filter is a BPF program owned by the runtime; gres-oci does not rewrite
//! it, and instead requires the bundle's own device rules to cover the plan (see `check_v2`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use gres_oci::plan::CgroupRule;
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

/// Where the devices controller of `pid` lives.
#[derive(Debug, PartialEq, Eq)]
pub enum DeviceCgroup {
    V1(PathBuf),
    V2,
}

/// Finds the v1 `devices` directory of a process from `/proc/<pid>/cgroup` and the
/// `mountinfo` of this process.
pub fn locate(cgroup_file: &str, mountinfo: &str) -> Result<DeviceCgroup> {
    let Some(rel) = gres_oci::proc_cgroup::v1_path(cgroup_file, "devices") else {
        return Ok(DeviceCgroup::V2);
    };
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 || post[0] != "cgroup" {
            continue;
        }
        if !post[2].split(',').any(|o| o == "devices") {
            continue;
        }
        let (root, mountpoint) = (pre[3], pre[4]);
        // The process's path is relative to the hierarchy's root; the mount may show a subtree.
        let sub = Path::new(rel)
            .strip_prefix(root)
            .unwrap_or_else(|_| Path::new(rel).strip_prefix("/").unwrap_or(Path::new(rel)));
        return Ok(DeviceCgroup::V1(Path::new(mountpoint).join(sub)));
    }
    bail!("devices cgroup {rel} is not mounted in this namespace")
}

/// Appends each rule to `<dir>/devices.allow`.
///
/// # Errors
/// A write fails (e.g. the parent cgroup denies the device).
pub fn allow_v1(dir: &Path, rules: &[CgroupRule]) -> Result<()> {
    let allow = dir.join("devices.allow");
    for r in rules {
        std::fs::write(&allow, r.to_string())
            .with_context(|| format!("{}: cannot write {r:?}", allow.display()))?;
    }
    Ok(())
}

/// On cgroup v2, checks that the bundle's `linux.resources.devices` (which the runtime compiles
/// into its BPF program) already allows every planned device read-write. The rules apply in
/// order, the last match winning, as in the runtime.
///
/// # Errors
/// A planned device the bundle does not allow, with what to do about it.
pub fn check_v2(rules: &[CgroupRule], bundle_rules: &[LinuxDeviceCgroup]) -> Result<()> {
    for r in rules {
        let mut allowed = false;
        for b in bundle_rules {
            let typ_ok = matches!(
                b.typ(),
                None | Some(LinuxDeviceType::A) | Some(LinuxDeviceType::C)
            );
            let maj_ok = b.major().is_none_or(|m| m < 0 || m == r.major as i64);
            let min_ok = b.minor().is_none_or(|m| m < 0 || m == r.minor as i64);
            let access = b.access().as_deref().unwrap_or("rwm");
            if typ_ok && maj_ok && min_ok && access.contains('r') && access.contains('w') {
                allowed = b.allow();
            } else if typ_ok && maj_ok && min_ok && !b.allow() {
                allowed = false;
            }
        }
        if !allowed {
            bail!(
                "cgroup v2: device {}:{} is not in the container's linux.resources.devices; \
                 the runtime's BPF device filter would deny it. Add the GPU devices to the \
                 bundle (for example through a CDI spec) or set no-cgroups = true where the \
                 engine grants them",
                r.major,
                r.minor
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 30 0:31 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
36 30 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 30 0:35 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_and_v2() {
        let cg = "12:pids:/c1\n5:devices:/slurm/uid_0/job_3/step_0/task_0/c1\n0::/c1\n";
        assert_eq!(
            locate(cg, MOUNTINFO).unwrap(),
            DeviceCgroup::V1("/sys/fs/cgroup/devices/slurm/uid_0/job_3/step_0/task_0/c1".into())
        );
        assert_eq!(locate("0::/c1\n", MOUNTINFO).unwrap(), DeviceCgroup::V2);
        assert!(locate(cg, "").is_err());
    }

    #[test]
    fn v2_rules() {
        let rule = |allow: bool, maj: Option<i64>, min: Option<i64>, access: &str| {
            serde_json::from_value::<LinuxDeviceCgroup>(serde_json::json!({
                "allow": allow, "type": "c", "major": maj, "minor": min, "access": access
            }))
            .unwrap()
        };
        let want = [CgroupRule {
            major: 195,
            minor: 0,
        }];
        assert!(check_v2(&want, &[]).is_err());
        assert!(check_v2(
            &want,
            &[
                rule(false, None, None, "rwm"),
                rule(true, Some(195), None, "rw")
            ]
        )
        .is_ok());
        assert!(check_v2(
            &want,
            &[
                rule(true, Some(195), None, "rw"),
                rule(false, Some(195), Some(0), "rwm")
            ]
        )
        .is_err());
        assert!(check_v2(&want, &[rule(true, Some(195), Some(1), "rw")]).is_err());
        let e = check_v2(&want, &[rule(true, Some(195), Some(0), "r")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("195:0") && e.contains("no-cgroups"), "{e}");
    }
}
