//! Test support for the end-to-end tests: fake GPU nodes (fixtures/fake-node.sh), busybox
//! bundles, and real runc/crun runs with the real hook. Only the hardware is fake.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};

/// The tests need root (mknod, mounts, runtimes); they fail loudly rather than skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the end-to-end tests must run as root");
}

/// `target/<profile>`, from this test binary's location (`target/<profile>/deps/…`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_owned()
}

pub fn built(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` before the tests",
        p.display()
    );
    p
}

pub fn hook_bin() -> PathBuf {
    built("gres-oci-hook")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// crun 1.8 refuses hybrid cgroups while cgroup2 holds a controller; on these machines that is
/// hugetlb. Giving hugetlb its own v1 hierarchy frees cgroup2. Idempotent.
pub fn prepare_cgroups_for_crun() {
    let ctrl =
        std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers").unwrap_or_default();
    if ctrl.split_whitespace().any(|c| c == "hugetlb") {
        let _ = std::fs::create_dir_all("/sys/fs/cgroup/hugetlb");
        let st = Command::new("mount")
            .args([
                "-t",
                "cgroup",
                "-o",
                "hugetlb",
                "cgroup",
                "/sys/fs/cgroup/hugetlb",
            ])
            .status()
            .expect("mount");
        assert!(
            st.success(),
            "could not move hugetlb to a v1 hierarchy for crun"
        );
    }
}

/// A fake GPU node made by fixtures/fake-node.sh.
pub struct FakeNode {
    pub dir: tempfile::TempDir,
}

impl FakeNode {
    pub fn new(args: &[&str]) -> FakeNode {
        let dir = tempfile::Builder::new()
            .prefix("gres-oci-node")
            .tempdir()
            .unwrap();
        let nvml = built("libfake_nvml.so");
        let out = Command::new("bash")
            .arg(repo().join("tests/fixtures/fake-node.sh"))
            .arg(dir.path())
            .arg("--nvml")
            .arg(&nvml)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fake-node.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        FakeNode { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn config(&self) -> PathBuf {
        self.path().join("config.toml")
    }
    pub fn dev(&self) -> PathBuf {
        self.path().join("dev")
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("hook.log")).unwrap_or_default()
    }
    /// Appends TOML to the node's config (keys must go to a table they belong to).
    pub fn edit_config(&self, f: impl FnOnce(String) -> String) {
        let c = std::fs::read_to_string(self.config()).unwrap();
        std::fs::write(self.config(), f(c)).unwrap();
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Runtime {
    Runc,
    Crun,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Runc => "runc",
            Runtime::Crun => "crun",
        }
    }
}

/// A bundle with a busybox-static rootfs and a config.json built from `runc spec`.
pub struct Bundle {
    pub dir: tempfile::TempDir,
    pub spec: Value,
}

pub struct BundleOpts<'a> {
    pub env: &'a [&'a str],
    pub script: &'a str,
    pub readonly: bool,
    pub debian: bool,
    /// Config for the hook; `None` = no hook in the bundle.
    pub hook_config: Option<&'a Path>,
    /// Host dirs bound into the container: (host, container).
    pub binds: Vec<(PathBuf, &'a str)>,
}

impl Default for BundleOpts<'_> {
    fn default() -> Self {
        BundleOpts {
            env: &[],
            script: "true",
            readonly: false,
            debian: true,
            hook_config: None,
            binds: Vec::new(),
        }
    }
}

pub fn busybox_rootfs(rootfs: &Path, debian: bool) {
    for d in ["bin", "dev", "proc", "sys", "tmp", "etc", "out", "hostdev"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static is installed");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
        }
    }
    if debian {
        std::fs::write(rootfs.join("etc/debian_version"), "12.11\n").unwrap();
    }
}

impl Bundle {
    pub fn new(o: BundleOpts) -> Bundle {
        let dir = tempfile::Builder::new()
            .prefix("gres-oci-bundle")
            .tempdir()
            .unwrap();
        busybox_rootfs(&dir.path().join("rootfs"), o.debian);
        let st = Command::new("runc")
            .arg("spec")
            .current_dir(dir.path())
            .status()
            .unwrap();
        assert!(st.success());
        let mut spec: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        spec["process"]["terminal"] = json!(false);
        spec["process"]["args"] = json!(["/bin/sh", "-c", o.script]);
        let env = spec["process"]["env"].as_array_mut().unwrap();
        env.extend(o.env.iter().map(|e| json!(e)));
        spec["root"]["readonly"] = json!(o.readonly);
        // The host network is fine for a test container and keeps runs independent of netns setup.
        let ns = spec["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "network");
        for (host, ctr) in &o.binds {
            spec["mounts"].as_array_mut().unwrap().push(json!({
                "destination": ctr, "type": "bind", "source": host, "options": ["rbind", "rw"]
            }));
        }
        if let Some(cfg) = o.hook_config {
            spec["hooks"] = json!({"prestart": [{
                "path": hook_bin(),
                "args": ["gres-oci-hook", format!("-config={}", cfg.display()), "prestart"],
                "env": gres_oci::HOOK_ENV,
            }]});
        }
        let b = Bundle { dir, spec };
        b.write();
        b
    }
    pub fn write(&self) {
        std::fs::write(
            self.path().join("config.json"),
            serde_json::to_vec_pretty(&self.spec).unwrap(),
        )
        .unwrap();
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn rootfs(&self) -> PathBuf {
        self.path().join("rootfs")
    }

    /// Runs the container to completion with `runtime`; returns its output.
    pub fn run(&self, runtime: Runtime) -> Output {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let id = format!("gres-oci-test-{}-{}", std::process::id(), n);
        let state = self.path().join(format!("state-{}", runtime.name()));
        let out = Command::new(runtime.name())
            .arg("--root")
            .arg(&state)
            .args(["run", "--bundle"])
            .arg(self.path())
            .arg(&id)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        // A container that failed at create may be left behind; delete is idempotent.
        let _ = Command::new(runtime.name())
            .arg("--root")
            .arg(&state)
            .args(["delete", "--force", &id])
            .output();
        out
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A listing of every path under `dir` with its type, to prove a tree was not changed.
pub fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            out.push(format!("{rel} {:?} {}", m.file_type(), m.len()));
            if m.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// What a probe script printed in a container: `node PATH` and `open PATH RESULT` lines.
pub struct Seen {
    pub lines: Vec<String>,
}

impl Seen {
    pub fn nodes(&self) -> BTreeSet<String> {
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix("node /dev/"))
            .map(str::to_owned)
            .collect()
    }
    pub fn open(&self, path: &str) -> &str {
        let prefix = format!("open {path} ");
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no open result for {path}: {:#?}", self.lines))
    }
    pub fn has(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }
}

/// An image that tries to run its own code in any process the hook's runtime starts with the
/// container's environment (CVE-2025-23266): its env sets `LD_PRELOAD`, `LD_AUDIT` and
/// `LD_LIBRARY_PATH` to libraries shipped in the image, each named both through
/// `/proc/self/cwd` (runc runs createContainer hooks in the rootfs, as the CVE's exploit used)
/// and by the rootfs's absolute host path (any stage). Each library's constructor (and the
/// audit library's `la_version`) records the process in a host directory: any file there means
/// the image's code ran as root on the host.
pub struct LoaderTrap {
    /// The host directory the libraries write their markers into.
    pub markers: tempfile::TempDir,
    built: tempfile::TempDir,
}

impl LoaderTrap {
    pub fn new() -> LoaderTrap {
        let markers = tempfile::Builder::new()
            .prefix("gres-oci-trap")
            .tempdir()
            .unwrap();
        let built = tempfile::tempdir().unwrap();
        let src = built.path().join("mark.c");
        std::fs::write(
            &src,
            format!(
                r#"#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static void mark(void) {{
    char path[4096], cmd[160];
    snprintf(path, sizeof path, "{dir}/%s-%d", KIND, (int)getpid());
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) return;
    int c = open("/proc/self/cmdline", O_RDONLY);
    ssize_t n = c >= 0 ? read(c, cmd, sizeof cmd) : 0;
    for (ssize_t i = 0; i < n; i++) if (!cmd[i]) cmd[i] = ' ';
    if (n > 0) write(fd, cmd, (size_t)n);
    close(fd);
}}
__attribute__((constructor)) static void trap(void) {{ mark(); }}
unsigned int la_version(unsigned int v) {{ mark(); return v; }}
"#,
                dir = markers.path().display()
            ),
        )
        .unwrap();
        let cc = |kind: &str, out: &Path, extra: &[&str]| {
            let o = Command::new("gcc")
                .args(["-shared", "-fPIC", "-o"])
                .arg(out)
                .arg(format!("-DKIND=\"{kind}\""))
                .arg(&src)
                .args(extra)
                .output()
                .unwrap();
            assert!(o.status.success(), "gcc: {}", text(&o));
        };
        cc("preload", &built.path().join("preload.so"), &[]);
        cc("audit", &built.path().join("audit.so"), &[]);
        // LD_LIBRARY_PATH: a stand-in for a library the hook binary needs, with the symbols and
        // symbol versions the binary asks of it (the loader checks them before constructors).
        let dump = Command::new("objdump")
            .arg("-T")
            .arg(hook_bin())
            .output()
            .unwrap();
        let mut versions: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for l in String::from_utf8_lossy(&dump.stdout).lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if l.contains("*UND*") && f.len() >= 2 {
                if let Some(v) = f[f.len() - 2]
                    .strip_prefix("(GCC_")
                    .and_then(|v| v.strip_suffix(')'))
                {
                    versions
                        .entry(format!("GCC_{v}"))
                        .or_default()
                        .push(f[f.len() - 1].to_owned());
                }
            }
        }
        assert!(
            !versions.is_empty(),
            "the hook binary needs nothing from libgcc_s; pick another library to stand in for"
        );
        let mut stubs = String::from("#include <stdlib.h>\n");
        let mut script = String::new();
        for (v, syms) in &versions {
            script.push_str(&format!("{v} {{ global: {}; }};\n", syms.join("; ")));
            for s in syms {
                stubs.push_str(&format!("void {s}(void) {{ abort(); }}\n"));
            }
        }
        std::fs::write(built.path().join("stubs.c"), stubs).unwrap();
        std::fs::write(built.path().join("v.map"), script).unwrap();
        std::fs::create_dir_all(built.path().join("lib")).unwrap();
        let stubs = built.path().join("stubs.c").display().to_string();
        let map = format!(
            "-Wl,--version-script={}",
            built.path().join("v.map").display()
        );
        cc(
            "library-path",
            &built.path().join("lib/libgcc_s.so.1"),
            &[&stubs, "-Wl,-soname,libgcc_s.so.1", &map],
        );
        LoaderTrap { markers, built }
    }

    /// Puts the libraries into `rootfs` and returns the image's environment entries naming
    /// them.
    pub fn install(&self, rootfs: &Path) -> Vec<String> {
        let b = self.built.path();
        std::fs::copy(b.join("preload.so"), rootfs.join("preload.so")).unwrap();
        std::fs::copy(b.join("audit.so"), rootfs.join("audit.so")).unwrap();
        std::fs::create_dir_all(rootfs.join("trap")).unwrap();
        std::fs::copy(
            b.join("lib/libgcc_s.so.1"),
            rootfs.join("trap/libgcc_s.so.1"),
        )
        .unwrap();
        let abs = rootfs.display();
        vec![
            format!("LD_PRELOAD=/proc/self/cwd/preload.so {abs}/preload.so"),
            format!("LD_AUDIT=/proc/self/cwd/audit.so:{abs}/audit.so"),
            format!("LD_LIBRARY_PATH=/proc/self/cwd/trap:{abs}/trap"),
        ]
    }

    /// Each marker: which library fired, in which process (its command line).
    pub fn fired(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.markers.path())
            .unwrap()
            .flatten()
            .map(|e| {
                format!(
                    "{}: {}",
                    e.file_name().to_string_lossy(),
                    std::fs::read_to_string(e.path()).unwrap_or_default()
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Proves the trap works: each library, named as the image names them, fires in a process
    /// started with that environment and the rootfs as its working directory.
    pub fn self_test(&self, rootfs: &Path) {
        for e in self.install(rootfs) {
            let (k, v) = e.split_once('=').unwrap();
            let o = Command::new(hook_bin())
                .arg("--version")
                .env_clear()
                .env(k, v)
                .current_dir(rootfs)
                .output()
                .unwrap();
            assert!(o.status.success(), "{e}: {}", text(&o));
            let kind = match k {
                "LD_PRELOAD" => "preload",
                "LD_AUDIT" => "audit",
                _ => "library-path",
            };
            let fired = self.fired();
            assert!(
                fired.iter().any(|f| f.starts_with(&format!("{kind}-"))),
                "{e} did not fire: {fired:?} {}",
                text(&o)
            );
            for f in std::fs::read_dir(self.markers.path()).unwrap().flatten() {
                std::fs::remove_file(f.path()).unwrap();
            }
        }
    }
}
