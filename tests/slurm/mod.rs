//! Harness for the Slurm end-to-end tests: a private single-node Slurm 22.05 on this machine
//! (its own munged socket, slurmctld and slurmd on free ports, a fresh temp dir per run), a
//! fake GPU node from `tests/fixtures/fake-node.sh`, the built SPANK plugin in plugstack.conf,
//! runc through oci.conf, and the real hook in the bundles Slurm writes.
//!
//! The Slurm configs are rendered from the shipped examples in `slurm-conf/` (only host, ports,
//! paths and the TaskPlugin choice are replaced), so the files we ship are the files we test.
//!
//! Every daemon is started with `setsid` (so no test wrapper's process-group signal reaches
//! it) and stopped by PID in `Drop`, also when a test panics; so are slurmstepd processes and
//! runc containers left in our directories. Waits are bounded.

#![allow(dead_code)]

pub mod engine;
#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One Slurm instance at a time on this machine.
static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the machine-wide Slurm lock (a failed test must not block the others).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The default GPUs of fake-node.sh: (minor, PCI bus id, UUID). Minors are not in PCI order.
pub const FAKE_GPUS: [(u32, &str, &str); 4] = [
    (
        2,
        "00000000:1b:00.0",
        "GPU-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a70",
    ),
    (
        0,
        "00000000:3d:00.0",
        "GPU-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a71",
    ),
    (
        3,
        "00000000:5e:00.0",
        "GPU-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a72",
    ),
    (
        1,
        "00000000:86:00.0",
        "GPU-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a73",
    ),
];

pub fn uuid_of_minor(minor: u32) -> &'static str {
    FAKE_GPUS
        .iter()
        .find(|g| g.0 == minor)
        .expect("fake minor")
        .2
}

pub fn bus_of_minor(minor: u32) -> &'static str {
    FAKE_GPUS
        .iter()
        .find(|g| g.0 == minor)
        .expect("fake minor")
        .1
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>`, from this test binary's path (`target/<profile>/deps/slurm_e2e-…`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_owned()
}

fn built(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` (same profile as the tests) first",
        p.display()
    );
    p
}

pub fn plugin_so() -> PathBuf {
    built("libgres_oci_spank.so")
}

pub fn hook_bin() -> PathBuf {
    built("gres-oci-hook")
}

/// Fails (never skips) when the tests cannot run here.
pub fn preflight() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the Slurm end-to-end tests must run as root");
    for tool in [
        "slurmctld",
        "slurmd",
        "srun",
        "sbatch",
        "scontrol",
        "sinfo",
        "squeue",
        "scancel",
        "munged",
        "munge",
        "runc",
        "busybox",
        "setsid",
        "hostname",
        "id",
        "bash",
        "nm",
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
            .any(|d| d.join(tool).is_file());
        assert!(
            found,
            "{tool} is missing: the Slurm tests need slurmctld, slurmd, slurm-client, munge, \
             runc and busybox-static (see .ci/install-deps)"
        );
    }
    plugin_so();
    hook_bin();
}

/// Output of a finished command.
#[derive(Debug, Clone)]
pub struct Out {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub what: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.status == Some(0)
    }

    /// Panics with the whole output unless the command succeeded.
    pub fn success(self) -> Out {
        assert!(self.ok(), "{self}");
        self
    }

    /// `NAME=value` lines of stdout as a map (last wins).
    pub fn env(&self) -> BTreeMap<String, String> {
        parse_env(&self.stdout)
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited {:?}\n--- stdout\n{}--- stderr\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Runs `cmd` to completion within `limit`, killing it (by PID) past the limit. Output goes
/// through anonymous files, so a chatty command cannot block on a full pipe.
pub fn run(cmd: &mut Command, limit: Duration) -> Out {
    use std::io::{Seek, SeekFrom};
    let what = format!("{cmd:?}");
    let mut out_f = tempfile::tempfile().expect("temp file");
    let mut err_f = tempfile::tempfile().expect("temp file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out_f.try_clone().unwrap())
        .stderr(err_f.try_clone().unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let status = wait_bounded(&mut child, limit);
    let mut stdout = String::new();
    let mut stderr = String::new();
    let _ = out_f.seek(SeekFrom::Start(0));
    let _ = out_f.read_to_string(&mut stdout);
    let _ = err_f.seek(SeekFrom::Start(0));
    let _ = err_f.read_to_string(&mut stderr);
    let status = match status {
        Some(s) => s.code(),
        None => {
            stderr.push_str(&format!("\n[harness: killed after {limit:?}]\n"));
            None
        }
    };
    Out {
        status,
        stdout,
        stderr,
        what,
    }
}

/// Waits for `child` at most `limit`; on timeout kills it (by PID) and returns `None`.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// A command started in the background (e.g. one of two concurrent jobs).
pub struct Running {
    child: Child,
    out: std::fs::File,
    err: std::fs::File,
    what: String,
}

impl Running {
    pub fn start(cmd: &mut Command) -> Running {
        let what = format!("{cmd:?}");
        let out = tempfile::tempfile().expect("temp file");
        let err = tempfile::tempfile().expect("temp file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(err.try_clone().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Running {
            child,
            out,
            err,
            what,
        }
    }

    pub fn finish(mut self, limit: Duration) -> Out {
        use std::io::{Seek, SeekFrom};
        let status = wait_bounded(&mut self.child, limit).and_then(|s| s.code());
        let (mut stdout, mut stderr) = (String::new(), String::new());
        let _ = self.out.seek(SeekFrom::Start(0));
        let _ = self.out.read_to_string(&mut stdout);
        let _ = self.err.seek(SeekFrom::Start(0));
        let _ = self.err.read_to_string(&mut stderr);
        Out {
            status,
            stdout,
            stderr,
            what: self.what,
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free TCP port")
        .port()
}

pub fn short_hostname() -> String {
    let o = Command::new("hostname")
        .arg("-s")
        .output()
        .expect("hostname -s");
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

pub fn id_of(flag: &str, user: &str) -> u32 {
    let o = Command::new("id").args([flag, user]).output().expect("id");
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no {user} user (is munge installed?)"))
}

/// How the cluster is configured.
#[derive(Debug, Clone)]
pub struct Setup {
    /// `task/cgroup` + `proctrack/cgroup` with cgroup.conf's `ConstrainDevices=yes`, else
    /// `task/none` + `proctrack/linuxproc`.
    pub cgroup: bool,
    /// Which shipped gres.conf to render: `gres.conf` or `gres.conf.not-minor-order`.
    pub gres_template: &'static str,
    /// Which shipped oci.conf: `oci.conf` (runc) or `oci.conf.crun`.
    pub oci_template: &'static str,
}

/// Where the daemons and client commands run. The default is this machine; a test for another
/// Slurm release runs them inside a prepared root (`tests/slurm24/`).
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// An `nsenter …` command line that every Slurm, munge and runc command is run through
    /// (then `env --chdir=DIR`); empty: run them here. The cluster's temp dir and the repo
    /// must have the same paths inside.
    pub wrap: Vec<String>,
    /// The plugin to load instead of `target/<profile>/libgres_oci_spank.so`.
    pub plugin: Option<PathBuf>,
    /// The munge user's (uid, gid) where munged runs (inside the root: its own ids).
    pub munge_ids: Option<(u32, u32)>,
}

struct Daemon {
    name: &'static str,
    child: Child,
}

/// A running private Slurm with one fake GPU node.
pub struct Cluster {
    pub setup: Setup,
    pub env: Env,
    dir: Option<tempfile::TempDir>,
    pub root: PathBuf,
    pub host: String,
    pub conf: PathBuf,
    pub node: PathBuf,
    pub bundle: PathBuf,
    /// Slurm's index order on this node: `minors[i]` is the minor of index `i`.
    pub minors: Vec<u32>,
    plugstack_line: String,
    daemons: Vec<Daemon>,
    /// Slurm's cgroup dirs (`/sys/fs/cgroup/<ctrl>/slurm_<host>`) that did not exist before
    /// this cluster; removed (rmdir, bottom-up) when it stops.
    new_cgroups: Vec<PathBuf>,
}

impl Cluster {
    /// Builds the node, renders the configs and starts munged, slurmctld and slurmd.
    pub fn start(setup: Setup) -> Cluster {
        Cluster::start_in(setup, Env::default())
    }

    /// [`Cluster::start`] with the daemons and clients run as `env` says.
    pub fn start_in(setup: Setup, env: Env) -> Cluster {
        preflight();
        if setup.oci_template.contains("crun") {
            support::prepare_cgroups_for_crun();
        }
        let dir = tempfile::Builder::new()
            .prefix("gres-oci-slurm.")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().to_owned();
        // munged (as the munge user) must traverse it.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        for d in ["etc", "state", "spool", "log", "run", "work", "runc"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let host = short_hostname();
        assert!(!host.is_empty(), "hostname -s printed nothing");
        let node = root.join("node");
        let out = run(
            Command::new("bash")
                .arg(repo().join("tests/fixtures/fake-node.sh"))
                .arg(&node)
                .args(fake_node_args(setup.gres_template)),
            Duration::from_secs(60),
        );
        assert!(out.ok(), "fake-node.sh failed: {out}");

        let mut c = Cluster {
            conf: root.join("etc/slurm.conf"),
            bundle: root.join("bundle"),
            node,
            host,
            root,
            dir: Some(dir),
            setup,
            env,
            minors: Vec::new(),
            plugstack_line: String::new(),
            daemons: Vec::new(),
            new_cgroups: Vec::new(),
        };
        if c.setup.cgroup {
            c.new_cgroups = slurm_cgroups(&c.host)
                .into_iter()
                .filter(|p| !p.exists())
                .collect();
        }
        c.write_configs();
        c.make_bundle();
        c.start_daemons();
        c
    }

    pub fn template(name: &str) -> String {
        let p = repo().join("slurm-conf").join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn write_configs(&mut self) {
        let r = self.root.display().to_string();
        let munge = self.root.join("munge");
        let (ctld_port, d_port) = (free_port(), free_port());
        let host = &self.host;
        let cgroup = self.setup.cgroup;

        // slurm.conf: the shipped file with this machine's values.
        let mut over: BTreeMap<&str, String> = BTreeMap::new();
        over.insert("ClusterName", "gresocitest".into());
        over.insert("SlurmctldHost", format!("{host}(127.0.0.1)"));
        over.insert("SlurmUser", "root".into());
        over.insert("SlurmctldPort", ctld_port.to_string());
        over.insert("SlurmdPort", d_port.to_string());
        over.insert("StateSaveLocation", format!("{r}/state"));
        over.insert("SlurmdSpoolDir", format!("{r}/spool"));
        over.insert("SlurmctldPidFile", format!("{r}/run/slurmctld.pid"));
        over.insert("SlurmdPidFile", format!("{r}/run/slurmd.pid"));
        over.insert("SlurmctldLogFile", format!("{r}/log/slurmctld.log"));
        over.insert("SlurmdLogFile", format!("{r}/log/slurmd.log"));
        over.insert("PlugStackConfig", format!("{r}/etc/plugstack.conf"));
        // The shipped plugstack line names the plugin relative to PluginDir, as `make install`
        // puts it there: Slurm's own dir first, then ours holding the built plugin.
        let plugins = self.root.join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        let _ = std::fs::remove_file(plugins.join("gres-oci.so"));
        let so = self.env.plugin.clone().unwrap_or_else(plugin_so);
        std::os::unix::fs::symlink(so, plugins.join("gres-oci.so")).unwrap();
        let slurm_dir = std::process::Command::new(repo().join("scripts/slurm-plugin-dir"))
            .output()
            .unwrap();
        let slurm_dir = String::from_utf8_lossy(&slurm_dir.stdout).trim().to_owned();
        over.insert("PluginDir", format!("{slurm_dir}:{}", plugins.display()));
        if let Some((name, _)) = shared_gres(self.setup.gres_template) {
            over.insert("GresTypes", format!("gpu,{name}"));
        }
        if !cgroup {
            over.insert("ProctrackType", "proctrack/linuxproc".into());
            over.insert("TaskPlugin", "task/none".into());
        } else {
            // The extern step, as pam_slurm_adopt sites run it (needs proctrack/cgroup).
            over.insert("PrologFlags", "Contain".into());
        }
        let mut slurm_conf = String::new();
        for line in Self::template("slurm.conf").lines() {
            let key = line.split_once('=').map(|(k, _)| k.trim());
            match key {
                Some("NodeName" | "PartitionName") => continue,
                Some(k) if over.contains_key(k) => {
                    slurm_conf.push_str(&format!("{k}={}\n", over.remove(k).unwrap()));
                }
                _ => {
                    slurm_conf.push_str(line);
                    slurm_conf.push('\n');
                }
            }
        }
        for (k, v) in over {
            slurm_conf.push_str(&format!("{k}={v}\n"));
        }
        slurm_conf.push_str(&format!(
            "AuthInfo=socket={m}/munge.socket\n\
             NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 Gres=gpu:h100:4{shared} State=UNKNOWN\n\
             PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
            m = munge.display(),
            shared = shared_gres(self.setup.gres_template)
                .map(|(name, count)| format!(",{name}:{count}"))
                .unwrap_or_default(),
        ));
        std::fs::write(&self.conf, slurm_conf).unwrap();

        // gres.conf: the shipped example for this node's fake devices.
        let dev = self.node.join("dev").display().to_string();
        let gres = Self::template(self.setup.gres_template)
            .replace("node[01-16]", host)
            .replace("/dev/nvidia", &format!("{dev}/nvidia"))
            .replace("/dev/infiniband", &format!("{dev}/infiniband"));
        self.minors = gres_minors(&gres);
        assert_eq!(
            self.minors.len(),
            4,
            "gres.conf template should list 4 GPUs"
        );
        std::fs::write(self.root.join("etc/gres.conf"), gres).unwrap();

        std::fs::write(
            self.root.join("etc/cgroup.conf"),
            Self::template("cgroup.conf"),
        )
        .unwrap();
        std::fs::write(
            self.root.join("etc/oci.conf"),
            Self::template(self.setup.oci_template)
                .replace("/run/slurm-runc", &format!("{r}/runc"))
                .replace("/run/slurm-crun", &format!("{r}/crun")),
        )
        .unwrap();

        // The plugin's and the hook's config: fake-node.sh's, plus our gres.conf.
        let cfg = self.node.join("config.toml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        assert!(
            text.contains("\n[gres-oci]\n"),
            "fake-node.sh's config.toml has no [gres-oci] table"
        );
        let text = text.replacen(
            "\n[gres-oci]\n",
            &format!("\n[gres-oci]\ngres-conf = \"{r}/etc/gres.conf\"\nstate-dir = \"{r}/gres-oci-state\"\n"),
            1,
        );
        std::fs::write(&cfg, text).unwrap();

        // plugstack.conf: the shipped line with the built plugin, our config and hook.
        let line = Self::template("plugstack.conf")
            .lines()
            .find(|l| l.starts_with("required "))
            .expect("plugstack.conf has a `required` line")
            .replace("/etc/gres-oci/config.toml", &cfg.display().to_string())
            .replace("/usr/bin/gres-oci-hook", &hook_bin().display().to_string());
        self.plugstack_line = line.clone();
        self.set_plugstack(&line);
    }

    /// The rendered `required …` line of plugstack.conf.
    pub fn plugin_line(&self) -> &str {
        &self.plugstack_line
    }

    /// Replaces plugstack.conf atomically (every srun and slurmstepd re-reads it).
    pub fn set_plugstack(&self, content: &str) {
        let p = self.root.join("etc/plugstack.conf");
        let tmp = self.root.join("etc/.plugstack.conf.tmp");
        std::fs::write(&tmp, format!("{content}\n")).unwrap();
        std::fs::rename(&tmp, p).unwrap();
    }

    /// Sets (or with `None` removes) a key of the `[gres-oci]` table in the plugin's and the
    /// hook's config.toml; both read it afresh for each step and container.
    pub fn set_gres_oci_key(&self, key: &str, value: Option<&str>) {
        let cfg = self.node.join("config.toml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        let mut out = String::new();
        for l in text.lines() {
            if l.starts_with(&format!("{key} = ")) {
                continue;
            }
            out.push_str(l);
            out.push('\n');
            if l == "[gres-oci]" {
                if let Some(v) = value {
                    out.push_str(&format!("{key} = {v}\n"));
                }
            }
        }
        let tmp = self.node.join(".config.toml.tmp");
        std::fs::write(&tmp, out).unwrap();
        std::fs::rename(tmp, cfg).unwrap();
    }

    /// Points the plugin's config at another gres.conf (the daemons keep theirs).
    pub fn set_plugin_gres_conf(&self, path: &Path) {
        let cfg = self.node.join("config.toml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("gres-conf = ") {
                    format!("gres-conf = \"{}\"\n", path.display())
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        let tmp = self.node.join(".config.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, cfg).unwrap();
    }

    /// A busybox bundle whose config.json came from `runc spec` (no hooks of its own: the
    /// plugin adds the hook on 22.05).
    fn make_bundle(&self) {
        make_busybox_bundle(&self.bundle);
    }

    fn spawn_daemon(&mut self, name: &'static str, mut cmd: Command) {
        let log = std::fs::File::create(self.root.join(format!("log/{name}.out"))).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.daemons.push(Daemon { name, child });
    }

    fn check_alive(&mut self) {
        for d in &mut self.daemons {
            if let Ok(Some(st)) = d.child.try_wait() {
                let out = std::fs::read_to_string(self.root.join(format!("log/{}.out", d.name)))
                    .unwrap_or_default();
                panic!("{} exited early ({st}):\n{out}", d.name);
            }
        }
    }

    fn start_daemons(&mut self) {
        // munged, as the munge user, with its own socket under our dir.
        let m = self.root.join("munge");
        std::fs::create_dir_all(&m).unwrap();
        let (uid, gid) = self
            .env
            .munge_ids
            .unwrap_or_else(|| (id_of("-u", "munge"), id_of("-g", "munge")));
        std::os::unix::fs::chown(&m, Some(uid), Some(gid)).unwrap();
        let munged_args = [
            "--foreground".to_owned(),
            format!("--socket={}/munge.socket", m.display()),
            format!("--pid-file={}/munged.pid", m.display()),
            format!("--log-file={}/munged.log", m.display()),
            format!("--seed-file={}/munged.seed", m.display()),
        ];
        let mut cmd = Command::new("setsid");
        if self.env.wrap.is_empty() {
            cmd.arg("munged").args(munged_args).uid(uid).gid(gid);
        } else {
            // nsenter needs root; runuser drops to the root's munge user inside.
            cmd.args(self.wrap_args(&self.root))
                .args(["runuser", "-u", "munge", "--", "munged"])
                .args(munged_args);
        }
        self.spawn_daemon("munged", cmd);
        self.wait_for("munged", Duration::from_secs(10), |c| {
            run(
                c.program("bash", &c.root).arg("-c").arg(format!(
                    "munge -S {s} -n | unmunge -S {s}",
                    s = c.root.join("munge/munge.socket").display()
                )),
                Duration::from_secs(5),
            )
            .stdout
            .contains("Success (0)")
        });

        let mut cmd = Command::new("setsid");
        cmd.args(self.wrap_args(&self.root))
            .args(["slurmctld", "-D", "-c", "-f"])
            .arg(&self.conf);
        self.spawn_daemon("slurmctld", cmd);
        self.wait_for("slurmctld", Duration::from_secs(20), |c| {
            c.cmd("scontrol", &["ping"]).stdout.contains("is UP")
        });
        let mut cmd = Command::new("setsid");
        cmd.args(self.wrap_args(&self.root))
            .args(["slurmd", "-D", "-f"])
            .arg(&self.conf);
        self.spawn_daemon("slurmd", cmd);
        self.wait_for("slurmd (node idle)", Duration::from_secs(30), |c| {
            let s = c.cmd("sinfo", &["-h", "-N", "-o", "%T"]).stdout;
            s.contains("idle") || s.contains("mixed") || s.contains("allocated")
        });
    }

    /// `env.wrap` with `env --chdir=wd`, or nothing when commands run here.
    fn wrap_args(&self, wd: &Path) -> Vec<String> {
        let mut v = self.env.wrap.clone();
        if !v.is_empty() {
            v.push("env".into());
            v.push(format!("--chdir={}", wd.display()));
        }
        v
    }

    /// `program` run where this cluster's daemons run, in `wd`.
    pub fn program(&self, program: &str, wd: &Path) -> Command {
        let wrap = self.wrap_args(wd);
        match wrap.split_first() {
            None => {
                let mut c = Command::new(program);
                c.current_dir(wd);
                c
            }
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
        }
    }

    fn wait_for(&mut self, what: &str, limit: Duration, mut ready: impl FnMut(&Cluster) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            self.check_alive();
            if ready(self) {
                return;
            }
            if Instant::now() > deadline {
                panic!("{what} not ready after {limit:?}\n{}", self.logs_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A Slurm client command against this cluster, from its work dir, with an environment
    /// free of any outer job's variables.
    pub fn command(&self, program: &str) -> Command {
        let mut c = self.program(program, &self.root.join("work"));
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("SLURM_")
                || k.starts_with("SPANK_")
                || k.starts_with("GRES_OCI")
                || k.starts_with("NVIDIA_")
                || k.starts_with("CUDA_")
                || k.starts_with("SBATCH_")
                || k.starts_with("SRUN_")
            {
                c.env_remove(&*k);
            }
        }
        c.env("SLURM_CONF", &self.conf)
            .current_dir(self.root.join("work"));
        c
    }

    /// Slurm's index list → minors, via this node's gres.conf.
    pub fn minors_of(&self, indices: &[usize]) -> Vec<u32> {
        indices.iter().map(|&i| self.minors[i]).collect()
    }

    /// GRES_OCI_GPUS for these indices (ascending index order).
    pub fn gpus_var(&self, indices: &[usize]) -> String {
        let mut idx = indices.to_vec();
        idx.sort_unstable();
        self.minors_of(&idx)
            .into_iter()
            .map(uuid_of_minor)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The container's CUDA_VISIBLE_DEVICES for these indices: each GPU's rank by bus id.
    pub fn container_cvd(&self, indices: &[usize]) -> String {
        let mut idx = indices.to_vec();
        idx.sort_unstable();
        let buses: Vec<&str> = self.minors_of(&idx).into_iter().map(bus_of_minor).collect();
        let mut sorted = buses.clone();
        sorted.sort_unstable();
        buses
            .iter()
            .map(|b| sorted.iter().position(|s| s == b).unwrap().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn dev(&self, minor: u32) -> PathBuf {
        self.node.join(format!("dev/nvidia{minor}"))
    }

    pub fn slurmd_log(&self) -> String {
        std::fs::read_to_string(self.root.join("log/slurmd.log")).unwrap_or_default()
    }

    pub fn hook_log(&self) -> String {
        std::fs::read_to_string(self.node.join("hook.log")).unwrap_or_default()
    }

    fn logs_tail(&self) -> String {
        tail_logs(
            &self.root.join("log"),
            [
                "slurmctld.log",
                "slurmd.log",
                "slurmctld.out",
                "slurmd.out",
                "munged.out",
            ],
        )
    }

    fn stop(&mut self) {
        // Jobs first, so slurmd can clean its steps up; bounded.
        if self.daemons.iter().any(|d| d.name == "slurmctld") {
            self.cancel_all_jobs();
        }
        delete_runc_containers(|| self.program("runc", &self.root), &self.root.join("runc"));
        // Daemons in reverse start order, by PID.
        while let Some(mut d) = self.daemons.pop() {
            stop_child(d.name, &mut d.child);
        }
        // slurmstepd processes of our slurmd (they run in our spool dir).
        for pid in stepds_in(&self.root) {
            // SAFETY: kill(2) on a PID whose cwd is inside our temp dir.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for dir in std::mem::take(&mut self.new_cgroups) {
            remove_cgroup_tree(&dir);
        }
    }
}

/// A busybox bundle in `bundle` whose config.json came from `runc spec` (terminal off, rootfs
/// writable, no network namespace; no hooks of its own).
pub fn make_busybox_bundle(bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "dev", "proc", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox");
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
        }
    }
    let out = run(
        Command::new("runc").arg("spec").current_dir(bundle),
        Duration::from_secs(20),
    );
    assert!(out.ok(), "{out}");
    let path = bundle.join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["process"]["terminal"] = json!(false);
    spec["root"]["readonly"] = json!(false);
    spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != "network");
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
}

pub fn wait_bounded_term(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// `/sys/fs/cgroup/<ctrl>/slurm_<host>` for every v1 hierarchy.
pub fn slurm_cgroups(host: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path().join(format!("slurm_{host}")))
        .collect()
}

/// Removes an (empty of processes) cgroup directory tree, children first. Cgroup dirs only
/// hold kernel files, so rmdir is the whole job; a busy one is left alone.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// PIDs of `slurmstepd` processes whose working directory lies under `root`.
pub fn stepds_in(root: &Path) -> Vec<libc::pid_t> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() != "slurmstepd" {
            continue;
        }
        if std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(root)) {
            out.push(pid);
        }
    }
    out
}

/// The MIG devices of `gres.conf.mig`, as `fake-node.sh --mig` takes them: two slices on each
/// of minors 0 and 1 (GPU instances 2 and 3, compute instance 0).
pub const MIG_SLICES: [&str; 4] = [
    "0:2:0:MIG-5c89e3b2-0a1f-5d6e-8b7c-9d0e1f2a3b40",
    "0:3:0:MIG-5c89e3b2-0a1f-5d6e-8b7c-9d0e1f2a3b41",
    "1:2:0:MIG-5c89e3b2-0a1f-5d6e-8b7c-9d0e1f2a3b42",
    "1:3:0:MIG-5c89e3b2-0a1f-5d6e-8b7c-9d0e1f2a3b43",
];

/// fake-node.sh's arguments for a gres.conf template: the MIG one needs the fake NVML (only
/// NVML lists MIG devices) and the slices it names.
fn fake_node_args(gres_template: &str) -> Vec<String> {
    if gres_template == "gres.conf.nic" {
        return vec!["--ib".to_owned(), "4".to_owned()];
    }
    if gres_template != "gres.conf.mig" {
        return Vec::new();
    }
    let mut args = vec![
        "--nvml".to_owned(),
        support::built("libfake_nvml.so").display().to_string(),
    ];
    for m in MIG_SLICES {
        args.extend(["--mig".to_owned(), m.to_owned()]);
    }
    args
}

/// The GRES besides gpu that a gres.conf template configures, with the node's count:
/// `gres.conf.shard` four shards per GPU, `gres.conf.mps` 100 MPS shares per GPU,
/// `gres.conf.nic` four InfiniBand adapters.
pub fn shared_gres(gres_template: &str) -> Option<(&'static str, u32)> {
    match gres_template {
        "gres.conf.shard" => Some(("shard", 16)),
        "gres.conf.mps" => Some(("mps", 400)),
        "gres.conf.nic" => Some(("nic", 4)),
        _ => None,
    }
}

/// The minors a rendered gres.conf lists for the node, in file order (the test's own reading,
/// independent of the plugin's parser: `File=` values with `[a,b-c]` ranges).
fn gres_minors(text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for line in text.lines().map(|l| l.split('#').next().unwrap_or("")) {
        // Shards and MPS shares name the GPUs' files again.
        if !line.split_whitespace().any(|t| t == "Name=gpu") {
            continue;
        }
        // A MIG device's line names its parent's node first.
        let Some(file) = line.split_whitespace().find_map(|t| {
            t.strip_prefix("File=").or_else(|| {
                t.strip_prefix("MultipleFiles=")
                    .and_then(|f| f.split(',').next())
            })
        }) else {
            continue;
        };
        for item in split_top(file) {
            let (prefix, rest) = item.split_once("nvidia").expect("File= names /dev/nvidiaN");
            let _ = prefix;
            if let Some(inner) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                for part in inner.split(',') {
                    match part.split_once('-') {
                        Some((a, b)) => {
                            out.extend(a.parse::<u32>().unwrap()..=b.parse::<u32>().unwrap())
                        }
                        None => out.push(part.parse().unwrap()),
                    }
                }
            } else {
                out.push(rest.parse().unwrap());
            }
        }
    }
    out
}

/// Splits on commas outside brackets.
fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!("harness: test failed; Slurm logs:\n{}", self.logs_tail());
        }
        self.stop();
        if std::env::var_os("GRES_OCI_KEEP").is_some() {
            if let Some(d) = self.dir.take() {
                eprintln!("harness: keeping {}", d.keep().display());
            }
        }
    }
}

/// `DEV N result` lines of a test probe → minor → what opening `/dev/nvidiaN` said.
pub fn devices(out: &str) -> BTreeMap<u32, String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("DEV "))
        .filter_map(|l| l.split_once(' '))
        .map(|(m, r)| (m.parse().unwrap(), r.to_owned()))
        .collect()
}

/// Runs one named scenario of a cluster's test, timing it on stderr.
pub fn scenario(name: &str, f: impl FnOnce()) {
    let t = std::time::Instant::now();
    eprintln!("scenario {name} ...");
    f();
    eprintln!("scenario {name} ok ({:.1?})", t.elapsed());
}

/// Slurm's GPU index lists (`0,2-3`) → indices.
pub fn slurm_list(s: &str) -> Vec<usize> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .flat_map(|x| match x.split_once('-') {
            Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<usize>>(),
            None => vec![x.parse().unwrap()],
        })
        .collect()
}

/// The last 25 lines of each log file in `dir`, for failure messages.
pub fn tail_logs<S: AsRef<str>>(dir: &Path, files: impl IntoIterator<Item = S>) -> String {
    let mut s = String::new();
    for f in files {
        let f = f.as_ref();
        let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(25);
        s.push_str(&format!("--- {f} (tail)\n{}\n", lines[start..].join("\n")));
    }
    s
}

/// Deletes every container left in the runc root `root`; `runc` makes the runc command (the
/// host's, or one that runs inside a test root).
pub fn delete_runc_containers(runc: impl Fn() -> Command, root: &Path) {
    let ids = run(
        runc().arg("--root").arg(root).args(["list", "-q"]),
        Duration::from_secs(10),
    );
    for id in ids.stdout.lines().filter(|l| !l.is_empty()) {
        let _ = run(
            runc()
                .arg("--root")
                .arg(root)
                .args(["delete", "--force", id]),
            Duration::from_secs(10),
        );
    }
}

/// Stops a daemon we spawned, by PID: SIGTERM, then SIGKILL after 10 s.
pub fn stop_child(name: &str, child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    if wait_bounded_term(child, Duration::from_secs(10)).is_none() {
        eprintln!("harness: {name} (pid {pid}) ignored SIGTERM; killed");
    }
}

/// What every test cluster offers its tests: Slurm's client commands with the cluster's
/// environment. Implementors say how to run a client and where job files go; the rest is here
/// once.
pub trait Client {
    /// A client command (`srun`, `sbatch`, `scontrol`, …) set up for this cluster.
    fn command(&self, program: &str) -> Command;
    /// A scratch directory for job scripts and their output.
    fn work_dir(&self) -> PathBuf;

    /// Cancels every job and waits (bounded) for the queue to drain.
    fn cancel_all_jobs(&self) {
        let _ = self.cmd("scancel", &["--user=root"]);
        self.wait_idle(Duration::from_secs(10));
    }

    fn cmd(&self, program: &str, args: &[&str]) -> Out {
        run(self.command(program).args(args), Duration::from_secs(60))
    }

    /// `srun ARGS` once the queue is empty, so that Slurm picks GPUs from an idle node (a job
    /// still completing would push the next one onto other indices).
    fn srun(&self, args: &[&str]) -> Out {
        self.wait_idle(Duration::from_secs(20));
        self.cmd("srun", args)
    }

    /// Submits `script` with sbatch and waits (bounded) until the job ends; returns the
    /// submission's output with `status` set to the job's exit code, and the job's output
    /// file. Polls `scontrol show job` every 50 ms (`sbatch --wait` backs off to seconds).
    fn sbatch(&self, args: &[&str], script: &str) -> (Out, String) {
        self.sbatch_env(args, &[], script)
    }

    /// [`Client::sbatch`] with extra variables in the submitter's environment.
    fn sbatch_env(&self, args: &[&str], env: &[(&str, &str)], script: &str) -> (Out, String) {
        let n = self.work_dir().read_dir().map(|d| d.count()).unwrap_or(0);
        let script_path = self.work_dir().join(format!("job{n}.sh"));
        std::fs::write(&script_path, format!("#!/bin/sh\n{script}\n")).unwrap();
        let out_path = self.work_dir().join(format!("job{n}.out"));
        let mut all: Vec<String> = vec![
            "--parsable".into(),
            format!("--output={}", out_path.display()),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        all.push(script_path.display().to_string());
        self.wait_idle(Duration::from_secs(20));
        let mut out = run(
            self.command("sbatch").args(&all).envs(env.iter().copied()),
            Duration::from_secs(60),
        );
        if !out.ok() {
            return (out, String::new());
        }
        let id = out.stdout.trim().split(';').next().unwrap_or("").to_owned();
        let deadline = Instant::now() + Duration::from_secs(120);
        let (state, code) = loop {
            let s = self.cmd("scontrol", &["show", "job", "-o", &id]).stdout;
            let field = |k: &str| {
                s.split_whitespace()
                    .find_map(|t| t.strip_prefix(k))
                    .unwrap_or("")
                    .to_owned()
            };
            let state = field("JobState=");
            if !["PENDING", "RUNNING", "CONFIGURING", "COMPLETING", ""].contains(&state.as_str()) {
                break (state, field("ExitCode="));
            }
            if Instant::now() > deadline {
                let _ = self.cmd("scancel", &[&id]);
                break (
                    format!("{state} (harness: timed out, cancelled)"),
                    String::new(),
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // ExitCode=rc:signal
        let rc = code.split(':').next().and_then(|c| c.parse().ok());
        out.status = if state == "COMPLETED" {
            Some(0)
        } else {
            rc.filter(|&c| c != 0).or(Some(-1))
        };
        out.stderr
            .push_str(&format!("[harness: job {id} {state} ExitCode={code}]\n"));
        // The output file is complete once the job is; give NFS-less local fs a moment anyway.
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        (out, text)
    }

    /// Waits until no job of ours is left in the queue.
    fn wait_idle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let q = self.cmd("squeue", &["-h", "-o", "%i"]);
            if q.ok() && q.stdout.trim().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Client for Cluster {
    fn command(&self, program: &str) -> Command {
        Cluster::command(self, program)
    }
    fn work_dir(&self) -> PathBuf {
        self.root.join("work")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gres_minors_reads_both_templates() {
        assert_eq!(
            gres_minors("Name=gpu File=/x/dev/nvidia[0-3]\n"),
            vec![0, 1, 2, 3]
        );
        assert_eq!(
            gres_minors("A Name=gpu File=/d/nvidia[2,0]\nB Name=gpu File=/d/nvidia3,/d/nvidia1\n"),
            vec![2, 0, 3, 1]
        );
    }
}
