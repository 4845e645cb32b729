//! Multi-node end-to-end tests of the SPANK plugin and the hook on a real Slurm 22.05.
//!
//! The harness (`tests/multinode/`) runs one slurmctld and two slurmd nodes on this machine:
//! * network: one namespace per node plus one for slurmctld and the clients, joined by veths
//!   on a bridge inside the controller's namespace (10.213.0.0/24, private to our
//!   namespaces; the host's interfaces are never touched);
//! * nodes `gon1` (4 fake GPUs, gres.conf File= in minor order, minors not in PCI order) and
//!   `gon2` (3 other fake GPUs, File= order 2,0,1), each with its own hostname
//!   (`unshare --uts`, `slurmd -N`), spool dir, fake-node.sh tree (dev-root, proc-root), plugin
//!   config.toml and state dir; one gres.conf with a `NodeName=` line per node;
//! * slurmd is started with `nsenter --net` (`ip netns exec` would hide /sys/fs/cgroup);
//!   every daemon is stopped by PID and the namespaces (with their veths) deleted in `Drop`,
//!   also when a test panics.
//!
//! Expectations per node come from the node's own table (index → minor from its File= order,
//! minor → bus id and UUID); a task's node is told apart by its GPUs' UUIDs, which differ.
//! Needs root, Slurm, munge, runc, busybox-static, iproute2 and util-linux; fails (never
//! skips) without them. Build first: `cargo build --workspace`.

mod multinode;
mod slurm;

use std::collections::{BTreeMap, BTreeSet};

use multinode::{MultiCluster, Node};
use slurm::{devices, scenario, slurm_list, Client, Out};

/// Written into the bundle as `/probe.sh` (so that it survives the quoting of batch scripts).
const PROBE_SH: &str = r#"for d in /dev/nvidia*; do case ${d#/dev/nvidia} in *[!0-9]*|'') ;; *) echo "DEV ${d#/dev/nvidia} $(cat $d 2>&1 </dev/null)";; esac; done; env"#;
const PROBE: &str = "/probe.sh";
const ENXIO: &str = "No such device or address";

/// `srun --label` output → task id → that task's lines (prefix removed).
fn by_task(stdout: &str) -> BTreeMap<u32, String> {
    let mut m: BTreeMap<u32, String> = BTreeMap::new();
    for l in stdout.lines() {
        let Some((t, rest)) = l.split_once(": ") else {
            continue;
        };
        let Ok(t) = t.trim().parse::<u32>() else {
            continue;
        };
        let e = m.entry(t).or_default();
        e.push_str(rest);
        e.push('\n');
    }
    m
}

/// Checks one task's container output against `node` with Slurm indices `0..k`.
fn check_container_task(node: &Node, k: usize, text: &str, o: &Out) {
    let indices: Vec<usize> = (0..k).collect();
    let want: BTreeSet<u32> = node.minors_of(&indices).into_iter().collect();
    let devs = devices(text);
    assert_eq!(
        devs.keys().copied().collect::<BTreeSet<_>>(),
        want,
        "node {} devices\n{text}\n{o}",
        node.name()
    );
    for (m, r) in &devs {
        assert!(r.contains(ENXIO), "nvidia{m} on {}: {r}\n{o}", node.name());
    }
    let env = slurm::parse_env(text);
    assert_eq!(
        env["GRES_OCI_GPUS"],
        node.gpus_var(&indices),
        "{}\n{o}",
        node.name()
    );
    assert_eq!(
        env["NVIDIA_VISIBLE_DEVICES"],
        node.gpus_var(&indices),
        "{}\n{o}",
        node.name()
    );
    assert_eq!(
        env["CUDA_VISIBLE_DEVICES"],
        node.container_cvd(&indices),
        "{}\n{o}",
        node.name()
    );
}

/// Which node a task ran on, from the GPUs it was given.
fn node_of<'a>(c: &'a MultiCluster, gpus: &str, o: &Out) -> &'a Node {
    c.nodes
        .iter()
        .find(|n| n.owns(gpus))
        .unwrap_or_else(|| panic!("GPUs {gpus:?} belong to no single node\n{o}"))
}

fn srun_two_nodes_container(c: &MultiCluster) {
    let bundle = format!("--container={}", c.bundle.display());
    for k in [1usize, 2, 3] {
        let gres = format!("--gres=gpu:{k}");
        let o = c
            .srun(&[
                "-N2",
                "--ntasks-per-node=1",
                "--label",
                &gres,
                &bundle,
                "/bin/sh",
                PROBE,
            ])
            .success();
        let tasks = by_task(&o.stdout);
        assert_eq!(tasks.len(), 2, "{o}");
        let mut seen = BTreeSet::new();
        for text in tasks.values() {
            let env = slurm::parse_env(text);
            let node = node_of(c, env.get("GRES_OCI_GPUS").map_or("", |s| s), &o);
            check_container_task(node, k, text, &o);
            seen.insert(node.name().to_owned());
        }
        assert_eq!(seen.len(), 2, "both nodes must run a task\n{o}");
    }
    for n in &c.nodes {
        assert!(
            n.hook_log().contains("injected"),
            "{} hook log:\n{}",
            n.name(),
            n.hook_log()
        );
    }
}

fn sbatch_two_nodes_steps(c: &MultiCluster) {
    let bundle = c.bundle.display();
    let script = format!(
        r#"srun -N2 --ntasks-per-node=1 --label sh -c 'echo "HOST=$(hostname);$SLURM_STEP_GPUS;$GRES_OCI_GPUS"'
srun -N2 --ntasks-per-node=1 --label --container={bundle} /bin/sh {PROBE}
"#
    );
    let (o, text) = c.sbatch(&["-N2", "--ntasks-per-node=1", "--gres=gpu:2"], &script);
    assert!(o.ok(), "{o}\n--- job output\n{text}");
    let tasks = by_task(&text);
    let mut hosts = BTreeSet::new();
    for t in tasks.values() {
        let host_line = t
            .lines()
            .find_map(|l| l.strip_prefix("HOST="))
            .unwrap_or_else(|| panic!("no HOST line:\n{text}"));
        let mut it = host_line.split(';');
        let (host, step, gpus) = (
            it.next().unwrap(),
            it.next().unwrap(),
            it.next().unwrap_or(""),
        );
        let node = c
            .nodes
            .iter()
            .find(|n| n.name() == host)
            .unwrap_or_else(|| panic!("unknown host {host}\n{text}"));
        let idx = slurm_list(step);
        assert_eq!(idx.len(), 2, "{text}");
        assert_eq!(gpus, node.gpus_var(&idx), "host step on {host}\n{text}");
        hosts.insert(host.to_owned());
        // The container step's lines of the same task id ran on the same node.
        let container: String = t
            .lines()
            .filter(|l| !l.starts_with("HOST="))
            .map(|l| format!("{l}\n"))
            .collect();
        check_container_task(node, 2, &container, &o);
    }
    assert_eq!(hosts.len(), 2, "{text}");
}

fn broken_node(c: &MultiCluster) {
    let bad = c.root.join("etc/gres.conf.broken");
    std::fs::write(
        &bad,
        format!(
            "NodeName={} Name=gpu Fiel={}/dev/nvidia[0-2]\n",
            c.nodes[1].name(),
            c.nodes[1].dir.display()
        ),
    )
    .unwrap();
    c.set_plugin_gres_conf(1, &bad);
    let bundle = format!("--container={}", c.bundle.display());
    let both = c.srun(&[
        "-N2",
        "--ntasks-per-node=1",
        "--label",
        "--gres=gpu:1",
        "sh",
        "-c",
        "echo \"RAN=$(hostname);$GRES_OCI_GPUS\"",
    ]);
    let good_only = c.srun(&[
        "-w",
        c.nodes[0].name(),
        "--gres=gpu:2",
        &bundle,
        "/bin/sh",
        PROBE,
    ]);
    let bad_only = c.srun(&["-w", c.nodes[1].name(), "--gres=gpu:1", "echo", "ran"]);
    let bad_no_gpu = c.srun(&["-w", c.nodes[1].name(), "echo", "ran"]);
    c.set_plugin_gres_conf(1, &c.gres_conf);

    // The step fails, with our one-line message naming the broken file, from gon2 only.
    assert!(!both.ok(), "{both}");
    let ours: Vec<&str> = both
        .stderr
        .lines()
        .filter(|l| l.contains("gres-oci: "))
        .collect();
    assert_eq!(ours.len(), 1, "one line from gres-oci expected:\n{both}");
    assert!(
        ours[0].contains(&bad.display().to_string()) && ours[0].contains("unknown key \"Fiel\""),
        "{both}"
    );
    // gon2's task exits 1; gon1's task runs with its GPU.
    assert!(
        both.stderr.contains(&format!(
            "{}: task 1: Exited with exit code 1",
            c.nodes[1].name()
        )),
        "{both}"
    );
    let ran: Vec<&str> = both
        .stdout
        .lines()
        .filter_map(|l| l.split_once("RAN=").map(|x| x.1))
        .collect();
    assert_eq!(
        ran,
        vec![format!(
            "{};{}",
            c.nodes[0].name(),
            c.nodes[0].gpus_var(&[0])
        )],
        "only the good node's task may run\n{both}"
    );
    // The good node is unaffected.
    let good_only = good_only.success();
    check_container_task(&c.nodes[0], 2, &good_only.stdout, &good_only);
    assert!(
        !bad_only.ok() && !bad_only.stdout.contains("ran"),
        "{bad_only}"
    );
    assert!(
        bad_only.stderr.contains("unknown key \"Fiel\""),
        "{bad_only}"
    );
    // A step without GPUs does not need gres.conf, even there.
    assert!(
        bad_no_gpu.ok() && bad_no_gpu.stdout.contains("ran"),
        "{bad_no_gpu}"
    );

    // One gres.conf shared by both nodes, with a garbled line for the second: the first
    // node skips that line (slurmd is strict only about its own lines), the second fails.
    let shared = c.root.join("etc/gres.conf.shared-broken");
    let good_lines: String = std::fs::read_to_string(&c.gres_conf)
        .unwrap()
        .lines()
        .filter(|l| !l.contains(&format!("NodeName={}", c.nodes[1].name())))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(
        &shared,
        format!(
            "{good_lines}NodeName={} Name=gpu File={}/dev/nvidia[0-1\n",
            c.nodes[1].name(),
            c.nodes[1].dir.display()
        ),
    )
    .unwrap();
    c.set_plugin_gres_conf(0, &shared);
    c.set_plugin_gres_conf(1, &shared);
    let good = c.srun(&[
        "-w",
        c.nodes[0].name(),
        "--gres=gpu:2",
        &bundle,
        "/bin/sh",
        PROBE,
    ]);
    let bad = c.srun(&["-w", c.nodes[1].name(), "--gres=gpu:1", "echo", "ran"]);
    c.set_plugin_gres_conf(0, &c.gres_conf);
    c.set_plugin_gres_conf(1, &c.gres_conf);
    let good = good.success();
    check_container_task(&c.nodes[0], 2, &good.stdout, &good);
    assert!(!bad.ok() && bad.stderr.contains("unclosed"), "{bad}");
}

#[test]
fn multinode_two_nodes_22_05() {
    let _lock = slurm::serial();
    let t = std::time::Instant::now();
    let c = MultiCluster::start(multinode::default_nodes());
    std::fs::write(c.bundle.join("rootfs/probe.sh"), PROBE_SH).unwrap();
    eprintln!("cluster up ({:.1?})", t.elapsed());
    scenario("srun -N2 --container", || srun_two_nodes_container(&c));
    scenario("sbatch -N2 steps", || sbatch_two_nodes_steps(&c));
    scenario("broken gres.conf on one node", || broken_node(&c));
}
