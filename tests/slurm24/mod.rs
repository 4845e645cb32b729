//! A Debian 13 (trixie) root with Slurm 24.11, for running the Slurm end-to-end harness
//! against a second Slurm release. `make-root.sh` builds the root once under
//! `target/slurm24-root` (debootstrap + apt through the configured mirror; reused while
//! `.gres-oci-ready` is there); `plugin()` builds the plugin against the root's headers into
//! `target/slurm24`.
//!
//! [`Root::enter`] starts a holder process in a private mount namespace that bind-mounts the
//! root onto itself, adds /proc, /sys, /dev, a tmpfs /run, the host's /tmp (the cluster's temp
//! dir) and the repository at their own paths, and `pivot_root`s into it (runc needs its root
//! to be a mount point, and a hook entering a container's mount namespace must land in this
//! root, which a plain chroot does not give). Daemons and clients enter it with
//! `nsenter -t HOLDER -m -r -w` (`--wd=DIR` would resolve DIR before the
//! root is set; the harness appends `env --chdir=DIR`). Nothing leaks to the host's mount table; `Drop` kills every
//! process left in the namespace (by PID), then the holder, and the mounts go with it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::slurm::{self, run};

pub fn root_dir() -> PathBuf {
    slurm::repo().join("target/slurm24-root")
}

/// Builds the root if it is not there yet (bounded: 10 minutes; ~45 s with a warm mirror).
pub fn ensure_root() -> PathBuf {
    let dir = root_dir();
    let t = Instant::now();
    let out = run(
        Command::new("bash")
            .arg(slurm::repo().join("tests/slurm24/make-root.sh"))
            .arg(&dir),
        Duration::from_secs(600),
    );
    assert!(
        out.ok(),
        "building the Debian 13 root failed (needs debootstrap and a Debian mirror): {out}"
    );
    eprintln!("slurm24 root ready ({:.1?})", t.elapsed());
    dir
}

/// The plugin built against the root's Slurm 24.11 headers (cargo skips it when up to date).
pub fn plugin(root: &Path) -> PathBuf {
    let inc = root.join("usr/include");
    let target = slurm::repo().join("target/slurm24");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let t = Instant::now();
    let out = run(
        Command::new(cargo)
            .args(["build", "-p", "gres-oci-spank", "--target-dir"])
            .arg(&target)
            .env("SLURM_INCLUDE_DIR", &inc)
            .env("BINDGEN_EXTRA_CLANG_ARGS", format!("-I{}", inc.display()))
            .current_dir(slurm::repo()),
        Duration::from_secs(900),
    );
    assert!(
        out.ok(),
        "building the plugin for Slurm 24.11 failed: {out}"
    );
    eprintln!("slurm24 plugin ready ({:.1?})", t.elapsed());
    target.join("debug/libgres_oci_spank.so")
}

/// The root's (uid, gid) of `user`, from its /etc/passwd.
pub fn ids_in(root: &Path, user: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let f: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with(&format!("{user}:")))
        .unwrap_or_else(|| panic!("no {user} in the root's passwd"))
        .split(':')
        .collect();
    (f[2].parse().unwrap(), f[3].parse().unwrap())
}

/// The holder of the pivot_root'ed mount namespace.
pub struct Root {
    pub dir: PathBuf,
    holder: Child,
}

impl Root {
    pub fn enter(dir: &Path) -> Root {
        let repo = slurm::repo();
        let ready = tempfile::NamedTempFile::new().unwrap().into_temp_path();
        let script = r#"set -e
R=$1 REPO=$2 READY=$3
mount --bind "$R" "$R"
mount --rbind /proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mount --rbind /tmp "$R/tmp"
mkdir -p "$R$REPO"
mount --bind "$REPO" "$R$REPO"
mkdir -p "$R/.oldroot"
cd "$R"
pivot_root . .oldroot
cd /
umount -l /.oldroot
echo ready >"$READY"
exec sleep 100000
"#;
        let holder = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "bash",
                "-c",
                script,
                "bash",
            ])
            .arg(dir)
            .arg(&repo)
            .arg(&*ready)
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare");
        let mut r = Root {
            dir: dir.to_owned(),
            holder,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::fs::read_to_string(&ready).unwrap_or_default().trim() == "ready" {
                break;
            }
            if let Ok(Some(st)) = r.holder.try_wait() {
                panic!("entering the Slurm 24.11 root failed ({st})");
            }
            assert!(Instant::now() < deadline, "the root holder is not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        r.check();
        r
    }

    /// The nsenter prefix for `slurm::Env::wrap`.
    pub fn wrap(&self) -> Vec<String> {
        vec![
            "nsenter".into(),
            "-t".into(),
            self.holder.id().to_string(),
            "-m".into(),
            "-r".into(),
            "-w".into(),
        ]
    }

    fn check(&self) {
        let mut cmd = Command::new(&self.wrap()[0]);
        cmd.args(&self.wrap()[1..]).args([
            "sh",
            "-c",
            "grep VERSION_CODENAME /etc/os-release; slurmd -V",
        ]);
        let out = run(&mut cmd, Duration::from_secs(20));
        assert!(
            out.ok() && out.stdout.contains("trixie") && out.stdout.contains(" 24.11."),
            "{out}"
        );
    }

    fn mnt_ns(pid: &str) -> Option<PathBuf> {
        std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let me = self.holder.id().to_string();
        if let Some(ns) = Root::mnt_ns(&me) {
            // Everything else in the namespace (slurmstepd, runc leftovers) was started there
            // by this test.
            for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(pid) = name.parse::<libc::pid_t>() else {
                    continue;
                };
                if name != me && Root::mnt_ns(&name).as_ref() == Some(&ns) {
                    eprintln!("slurm24: killing pid {pid} left in the root");
                    // SAFETY: kill(2) on a process inside the mount namespace we created.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
