//! Harness for the multi-node Slurm tests: one slurmctld and several slurmd nodes on this
//! machine, each node in a network namespace of its own. See `tests/multinode_e2e.rs`.
//!
//! Network: a namespace `gom<pid>c` holds a bridge with 10.213.0.1/24 (slurmctld and every
//! client command run there, through `nsenter --net`); node `i` gets a namespace `gom<pid>n<i>`
//! whose `eth0` (10.213.0.1<i>/24) is a veth whose peer sits on that bridge. Both ends of every
//! veth are created inside our namespaces, so the host's interfaces and addresses are never
//! touched; deleting the namespaces deletes the veths.
//!
//! Nodes: slurmd runs as `nsenter --net=<ns> unshare --uts sh -c 'hostname N; exec slurmd -N N'`
//! (own hostname; `ip netns exec` would hide /sys/fs/cgroup), with a slurm.conf of its own in
//! the shared etc dir (`slurm-<node>.conf`) that differs only in its spool, pid and log files
//! and its PlugStackConfig; the plugstack line names the node's config.toml (fake-node.sh's
//! dev-root/proc-root, its own state-dir). Slurm and the plugin read one gres.conf with a
//! `NodeName=` line per node (different GPU count and File= order).
//!
//! Everything is stopped in `Drop` (also on panic): jobs, leftover runc containers, daemons
//! by PID, slurmstepd processes in our dir, any process left in our namespaces, then the
//! namespaces themselves.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::slurm::{self, run, Client};

const SUBNET: &str = "10.213.0";

/// One fake GPU: (minor, PCI bus id as NVML prints it, UUID).
pub type Gpu = (u32, &'static str, &'static str);

/// What a node looks like.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: &'static str,
    pub gpus: Vec<Gpu>,
    /// gres.conf's File= order as minors: Slurm index `i` is `file_order[i]`.
    pub file_order: Vec<u32>,
}

/// The default pair: four GPUs in minor order (not PCI order), and three in the order 2,0,1.
pub fn default_nodes() -> Vec<NodeSpec> {
    vec![
        NodeSpec {
            name: "gon1",
            gpus: slurm::FAKE_GPUS.to_vec(),
            file_order: vec![0, 1, 2, 3],
        },
        NodeSpec {
            name: "gon2",
            gpus: vec![
                (
                    0,
                    "00000000:a1:00.0",
                    "GPU-6b2e0f4d-1c2b-4a5e-8f9d-0a1b2c3d4eb0",
                ),
                (
                    1,
                    "00000000:21:00.0",
                    "GPU-6b2e0f4d-1c2b-4a5e-8f9d-0a1b2c3d4eb1",
                ),
                (
                    2,
                    "00000000:61:00.0",
                    "GPU-6b2e0f4d-1c2b-4a5e-8f9d-0a1b2c3d4eb2",
                ),
            ],
            file_order: vec![2, 0, 1],
        },
    ]
}

pub struct Node {
    pub spec: NodeSpec,
    pub addr: String,
    pub netns: String,
    /// fake-node.sh's dir (dev/, proc/, driver/, config.toml, hook.log).
    pub dir: PathBuf,
    pub conf: PathBuf,
}

impl Node {
    pub fn name(&self) -> &str {
        self.spec.name
    }

    pub fn minors_of(&self, indices: &[usize]) -> Vec<u32> {
        indices.iter().map(|&i| self.spec.file_order[i]).collect()
    }

    fn gpu(&self, minor: u32) -> Gpu {
        *self
            .spec
            .gpus
            .iter()
            .find(|g| g.0 == minor)
            .expect("minor of this node")
    }

    /// GRES_OCI_GPUS (= NVIDIA_VISIBLE_DEVICES) for these indices: UUIDs in index order.
    pub fn gpus_var(&self, indices: &[usize]) -> String {
        let mut idx = indices.to_vec();
        idx.sort_unstable();
        self.minors_of(&idx)
            .into_iter()
            .map(|m| self.gpu(m).2)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The container's CUDA_VISIBLE_DEVICES: each GPU's rank by PCI bus id.
    pub fn container_cvd(&self, indices: &[usize]) -> String {
        let mut idx = indices.to_vec();
        idx.sort_unstable();
        let buses: Vec<&str> = self
            .minors_of(&idx)
            .into_iter()
            .map(|m| self.gpu(m).1)
            .collect();
        let mut sorted = buses.clone();
        sorted.sort_unstable();
        buses
            .iter()
            .map(|b| sorted.iter().position(|s| s == b).unwrap().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node whose GPUs these UUIDs are, if all are this node's.
    pub fn owns(&self, gpus_var: &str) -> bool {
        !gpus_var.is_empty()
            && gpus_var
                .split(',')
                .all(|u| self.spec.gpus.iter().any(|g| g.2 == u))
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    pub fn hook_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("hook.log")).unwrap_or_default()
    }
}

struct Daemon {
    name: String,
    child: Child,
}

/// A running private Slurm with several nodes.
pub struct MultiCluster {
    dir: Option<tempfile::TempDir>,
    pub root: PathBuf,
    /// The client's (and slurmctld's) slurm.conf.
    pub conf: PathBuf,
    pub gres_conf: PathBuf,
    pub bundle: PathBuf,
    pub nodes: Vec<Node>,
    ctl_ns: String,
    netns: Vec<String>,
    daemons: Vec<Daemon>,
    plugstack_line: String,
}

fn ip(args: &[&str]) {
    let o = run(Command::new("ip").args(args), Duration::from_secs(10));
    assert!(o.ok(), "{o}");
}

impl MultiCluster {
    pub fn start(specs: Vec<NodeSpec>) -> MultiCluster {
        slurm::preflight();
        for tool in ["ip", "nsenter", "unshare"] {
            assert!(
                ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                    .iter()
                    .any(|d| Path::new(d).join(tool).is_file()),
                "{tool} is missing: the multi-node tests need iproute2 and util-linux"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("gres-oci-multinode.")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().to_owned();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        for d in [
            "etc", "state", "log", "run", "work", "runc", "nodes", "munge",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let tag = format!("gom{}", std::process::id());
        let mut c = MultiCluster {
            conf: root.join("etc/slurm.conf"),
            gres_conf: root.join("etc/gres.conf"),
            bundle: root.join("bundle"),
            nodes: Vec::new(),
            ctl_ns: format!("{tag}c"),
            netns: Vec::new(),
            daemons: Vec::new(),
            plugstack_line: String::new(),
            root,
            dir: Some(dir),
        };
        for (i, spec) in specs.into_iter().enumerate() {
            let dir = c.root.join("nodes").join(spec.name);
            let mut cmd = Command::new("bash");
            cmd.arg(slurm::repo().join("tests/fixtures/fake-node.sh"))
                .arg(&dir);
            for (minor, bus, uuid) in &spec.gpus {
                // fake-node.sh wants a 4-digit PCI domain (as /proc/driver/nvidia shows it).
                let bus = bus.strip_prefix("0000").unwrap_or(bus);
                cmd.arg("--gpu").arg(format!("{minor}:{bus}:{uuid}"));
            }
            let out = run(&mut cmd, Duration::from_secs(60));
            assert!(out.ok(), "fake-node.sh failed: {out}");
            c.nodes.push(Node {
                addr: format!("{SUBNET}.{}", 11 + i),
                netns: format!("{tag}n{}", i + 1),
                conf: c.root.join(format!("etc/slurm-{}.conf", spec.name)),
                dir,
                spec,
            });
        }
        c.make_network();
        c.write_configs();
        slurm::make_busybox_bundle(&c.bundle);
        c.start_daemons();
        c
    }

    fn make_network(&mut self) {
        let ctl = self.ctl_ns.clone();
        ip(&["netns", "add", &ctl]);
        self.netns.push(ctl.clone());
        ip(&["-n", &ctl, "link", "set", "lo", "up"]);
        ip(&["-n", &ctl, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &ctl,
            "addr",
            "add",
            &format!("{SUBNET}.1/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &ctl, "link", "set", "br0", "up"]);
        for (i, n) in self.nodes.iter().enumerate() {
            ip(&["netns", "add", &n.netns]);
            self.netns.push(n.netns.clone());
            let peer = format!("v{}", i + 1);
            // Both ends are born in our namespaces: never on the host.
            ip(&[
                "-n", &ctl, "link", "add", &peer, "type", "veth", "peer", "name", "eth0", "netns",
                &n.netns,
            ]);
            ip(&["-n", &ctl, "link", "set", &peer, "master", "br0"]);
            ip(&["-n", &ctl, "link", "set", &peer, "up"]);
            ip(&["-n", &n.netns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &n.netns,
                "addr",
                "add",
                &format!("{}/24", n.addr),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &n.netns, "link", "set", "eth0", "up"]);
        }
    }

    fn write_configs(&mut self) {
        let r = self.root.display().to_string();
        let host = slurm::short_hostname();
        // slurm.conf: the shipped file with our values; per-node copies change only the
        // node-local paths and the plugin stack.
        let render = |node: Option<&Node>| -> String {
            let local = node.map(|n| n.name()).unwrap_or("client");
            let mut over: std::collections::BTreeMap<&str, String> = Default::default();
            over.insert("ClusterName", "gresocimulti".into());
            over.insert("SlurmctldHost", format!("{host}({SUBNET}.1)"));
            over.insert("SlurmUser", "root".into());
            // Private namespaces: Slurm's default ports are free there.
            over.insert("SlurmctldPort", "6817".into());
            over.insert("SlurmdPort", "6818".into());
            over.insert("StateSaveLocation", format!("{r}/state"));
            over.insert("SlurmdSpoolDir", format!("{r}/nodes/{local}/spool"));
            over.insert("SlurmctldPidFile", format!("{r}/run/slurmctld.pid"));
            over.insert("SlurmdPidFile", format!("{r}/run/slurmd-{local}.pid"));
            over.insert("SlurmctldLogFile", format!("{r}/log/slurmctld.log"));
            over.insert("SlurmdLogFile", format!("{r}/log/slurmd-{local}.log"));
            over.insert("PlugStackConfig", format!("{r}/etc/plugstack-{local}.conf"));
            over.insert("PluginDir", slurm_plugin_dir());
            over.insert("ProctrackType", "proctrack/linuxproc".into());
            over.insert("TaskPlugin", "task/none".into());
            let mut text = String::new();
            for line in slurm::Cluster::template("slurm.conf").lines() {
                match line.split_once('=').map(|(k, _)| k.trim()) {
                    Some("NodeName" | "PartitionName") => continue,
                    Some(k) if over.contains_key(k) => {
                        text.push_str(&format!("{k}={}\n", over.remove(k).unwrap()));
                    }
                    _ => {
                        text.push_str(line);
                        text.push('\n');
                    }
                }
            }
            for (k, v) in over {
                text.push_str(&format!("{k}={v}\n"));
            }
            text.push_str(&format!("AuthInfo=socket={r}/munge/munge.socket\n"));
            for n in &self.nodes {
                text.push_str(&format!(
                    "NodeName={} NodeAddr={} CPUs=2 RealMemory=1000 Gres=gpu:h100:{} State=UNKNOWN\n",
                    n.name(),
                    n.addr,
                    n.spec.gpus.len()
                ));
            }
            let names: Vec<&str> = self.nodes.iter().map(|n| n.name()).collect();
            text.push_str(&format!(
                "PartitionName=debug Nodes={} Default=YES MaxTime=INFINITE State=UP\n",
                names.join(",")
            ));
            text
        };
        std::fs::write(&self.conf, render(None)).unwrap();
        for n in &self.nodes {
            std::fs::create_dir_all(self.root.join("nodes").join(n.name()).join("spool")).unwrap();
            std::fs::write(&n.conf, render(Some(n))).unwrap();
        }
        std::fs::create_dir_all(self.root.join("nodes/client/spool")).unwrap();

        // One gres.conf, a NodeName= line per node.
        let mut gres = String::from("# gres-oci multi-node test: one line per node\n");
        for n in &self.nodes {
            let files: Vec<String> = n
                .spec
                .file_order
                .iter()
                .map(|m| format!("{}/dev/nvidia{m}", n.dir.display()))
                .collect();
            gres.push_str(&format!(
                "NodeName={} Name=gpu Type=h100 File={}\n",
                n.name(),
                files.join(",")
            ));
        }
        std::fs::write(&self.gres_conf, gres).unwrap();
        std::fs::write(
            self.root.join("etc/cgroup.conf"),
            slurm::Cluster::template("cgroup.conf"),
        )
        .unwrap();
        std::fs::write(
            self.root.join("etc/oci.conf"),
            slurm::Cluster::template("oci.conf").replace("/run/slurm-runc", &format!("{r}/runc")),
        )
        .unwrap();

        // Each node's plugin/hook config: fake-node.sh's plus the shared gres.conf and a
        // state dir of its own.
        for n in &self.nodes {
            let cfg = n.config();
            let text = std::fs::read_to_string(&cfg).unwrap();
            assert!(text.contains("\n[gres-oci]\n"));
            let text = text.replacen(
                "\n[gres-oci]\n",
                &format!(
                    "\n[gres-oci]\ngres-conf = \"{}\"\nstate-dir = \"{}/state\"\n",
                    self.gres_conf.display(),
                    n.dir.display()
                ),
                1,
            );
            std::fs::write(&cfg, text).unwrap();
        }
        let line = slurm::Cluster::template("plugstack.conf")
            .lines()
            .find(|l| l.starts_with("required "))
            .expect("plugstack.conf has a `required` line")
            .replace("gres-oci.so", &slurm::plugin_so().display().to_string())
            .replace(
                "/usr/bin/gres-oci-hook",
                &slurm::hook_bin().display().to_string(),
            );
        self.plugstack_line = line;
        self.set_plugstack_all();
    }

    /// Writes every plugstack file: each node's names its own config.toml; the client's names
    /// the first node's (srun's local context only reads options from it).
    fn set_plugstack_all(&self) {
        let write = |local: &str, cfg: &Path| {
            let p = self.root.join(format!("etc/plugstack-{local}.conf"));
            let tmp = self.root.join(format!("etc/.plugstack-{local}.tmp"));
            let line = self
                .plugstack_line
                .replace("/etc/gres-oci/config.toml", &cfg.display().to_string());
            std::fs::write(&tmp, format!("{line}\n")).unwrap();
            std::fs::rename(&tmp, p).unwrap();
        };
        write("client", &self.nodes[0].config());
        for n in &self.nodes {
            write(n.name(), &n.config());
        }
    }

    /// Points one node's plugin config at another gres.conf (Slurm keeps reading its own).
    pub fn set_plugin_gres_conf(&self, node: usize, path: &Path) {
        let cfg = self.nodes[node].config();
        let text: String = std::fs::read_to_string(&cfg)
            .unwrap()
            .lines()
            .map(|l| {
                if l.starts_with("gres-conf = ") {
                    format!("gres-conf = \"{}\"\n", path.display())
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        let tmp = cfg.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, cfg).unwrap();
    }

    fn spawn_daemon(&mut self, name: &str, mut cmd: Command) {
        let log = std::fs::File::create(self.root.join(format!("log/{name}.out"))).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.daemons.push(Daemon {
            name: name.to_owned(),
            child,
        });
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

    fn wait_for(&mut self, what: &str, limit: Duration, mut ready: impl FnMut(&Self) -> bool) {
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

    fn start_daemons(&mut self) {
        use std::os::unix::process::CommandExt;
        let m = self.root.join("munge");
        let (uid, gid) = (slurm::id_of("-u", "munge"), slurm::id_of("-g", "munge"));
        std::os::unix::fs::chown(&m, Some(uid), Some(gid)).unwrap();
        let mut cmd = Command::new("setsid");
        cmd.arg("munged")
            .arg("--foreground")
            .arg(format!("--socket={}/munge.socket", m.display()))
            .arg(format!("--pid-file={}/munged.pid", m.display()))
            .arg(format!("--log-file={}/munged.log", m.display()))
            .arg(format!("--seed-file={}/munged.seed", m.display()))
            .uid(uid)
            .gid(gid);
        self.spawn_daemon("munged", cmd);
        self.wait_for("munged", Duration::from_secs(10), |c| {
            run(
                Command::new("bash").arg("-c").arg(format!(
                    "munge -S {s} -n | unmunge -S {s}",
                    s = c.root.join("munge/munge.socket").display()
                )),
                Duration::from_secs(5),
            )
            .stdout
            .contains("Success (0)")
        });

        // setsid, then nsenter and unshare exec in place: the PID we hold is the daemon's.
        let mut cmd = Command::new("setsid");
        cmd.arg("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ctl_ns))
            .args(["slurmctld", "-D", "-c", "-f"])
            .arg(&self.conf);
        self.spawn_daemon("slurmctld", cmd);
        self.wait_for("slurmctld", Duration::from_secs(20), |c| {
            c.cmd("scontrol", &["ping"]).stdout.contains("is UP")
        });
        for i in 0..self.nodes.len() {
            let (name, ns, conf) = {
                let n = &self.nodes[i];
                (n.name().to_owned(), n.netns.clone(), n.conf.clone())
            };
            let mut cmd = Command::new("setsid");
            cmd.arg("nsenter")
                .arg(format!("--net=/run/netns/{ns}"))
                .args(["unshare", "--uts", "--", "sh", "-c"])
                .arg(r#"hostname "$1" && exec slurmd -D -N "$1" -f "$2""#)
                .arg("sh")
                .arg(&name)
                .arg(&conf);
            self.spawn_daemon(&format!("slurmd-{name}"), cmd);
        }
        let want = self.nodes.len();
        self.wait_for("slurmd (all nodes idle)", Duration::from_secs(30), |c| {
            let s = c.cmd("sinfo", &["-h", "-N", "-o", "%N %T"]).stdout;
            s.lines().filter(|l| l.ends_with(" idle")).count() == want
        });
    }

    /// A Slurm client command in the controller's namespace, free of any outer job's
    /// variables.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ctl_ns))
            .arg(program);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if [
                "SLURM_", "SPANK_", "GRES_OCI", "NVIDIA_", "CUDA_", "SBATCH_", "SRUN_",
            ]
            .iter()
            .any(|p| k.starts_with(p))
            {
                c.env_remove(&*k);
            }
        }
        c.env("SLURM_CONF", &self.conf)
            .current_dir(self.root.join("work"));
        c
    }

    pub fn slurmd_log(&self, node: usize) -> String {
        std::fs::read_to_string(
            self.root
                .join(format!("log/slurmd-{}.log", self.nodes[node].name())),
        )
        .unwrap_or_default()
    }

    pub fn logs_tail(&self) -> String {
        let mut files = vec!["slurmctld.log".to_owned(), "slurmctld.out".to_owned()];
        for n in &self.nodes {
            files.push(format!("slurmd-{}.log", n.name()));
            files.push(format!("slurmd-{}.out", n.name()));
        }
        slurm::tail_logs(&self.root.join("log"), files)
    }

    fn stop(&mut self) {
        if self.daemons.iter().any(|d| d.name == "slurmctld") {
            self.cancel_all_jobs();
        }
        slurm::delete_runc_containers(|| Command::new("runc"), &self.root.join("runc"));
        while let Some(mut d) = self.daemons.pop() {
            slurm::stop_child(&d.name, &mut d.child);
        }
        for pid in slurm::stepds_in(&self.root) {
            // SAFETY: kill(2) on a slurmstepd whose cwd is inside our temp dir.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // Anything still inside our namespaces is ours; then the namespaces (and with them
        // the veths and the bridge) go.
        for ns in std::mem::take(&mut self.netns).into_iter().rev() {
            let pids = run(
                Command::new("ip").args(["netns", "pids", &ns]),
                Duration::from_secs(10),
            );
            for pid in pids.stdout.split_whitespace() {
                if let Ok(pid) = pid.parse::<libc::pid_t>() {
                    eprintln!("harness: killing pid {pid} left in netns {ns}");
                    // SAFETY: kill(2) on a process inside a namespace this harness created.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            let o = run(
                Command::new("ip").args(["netns", "del", &ns]),
                Duration::from_secs(10),
            );
            if !o.ok() {
                eprintln!("harness: cannot delete netns {ns}: {o}");
            }
        }
    }
}

fn slurm_plugin_dir() -> String {
    let o = Command::new(slurm::repo().join("scripts/slurm-plugin-dir"))
        .output()
        .expect("scripts/slurm-plugin-dir");
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

impl Drop for MultiCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
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

impl slurm::Client for MultiCluster {
    fn command(&self, program: &str) -> Command {
        MultiCluster::command(self, program)
    }
    fn work_dir(&self) -> PathBuf {
        self.root.join("work")
    }
}
