//! End-to-end tests of the SPANK plugin on a real Slurm 22.05 started by the harness in
//! `tests/slurm/`: srun, sbatch and `srun --container` with runc and the real hook, on a fake
//! GPU node whose minors are not in PCI order. They need root and the Slurm, munge, runc and
//! busybox packages, and fail (never skip) without them. Build first: `cargo build --workspace`.
//!
//! The clusters run one after another (one Slurm at a time on the machine):
//! * `task/none`, gres.conf in minor order (so Slurm's index order is not PCI order);
//! * `task/cgroup` + `ConstrainDevices=yes`, gres.conf not in minor order;
//! * `task/none`, gres.conf not in minor order (the core scenarios again);
//! * MIG: `gres.conf.mig` (four slices on two GPUs, with the fake NVML), `task/none` and then
//!   ConstrainDevices.
//!
//! Expectations are computed from the rendered gres.conf (index → minor, read by the harness
//! itself) and fake-node.sh's fixed minor → bus id/UUID table, plus a few literal values.

mod slurm;

use std::collections::BTreeSet;
use std::time::Duration;

use slurm::engine::*;
use slurm::{devices, scenario, slurm_list, uuid_of_minor, Client, Cluster, Running, Setup};

/// Prints each device node `/dev/nvidiaN` with what opening it says, the environment, and
/// the cgroups. ENXIO ("No such device or address") = allowed; EPERM = denied by the cgroup.
const PROBE: &str = r#"for d in /dev/nvidia*; do case ${d#/dev/nvidia} in *[!0-9]*|'') ;; *) echo "DEV ${d#/dev/nvidia} $(cat $d 2>&1 </dev/null)";; esac; done; env; echo CGROUP; cat /proc/self/cgroup"#;

const ENXIO: &str = "No such device or address";
const EPERM: &str = "Operation not permitted";

/// Minors named by a GRES_OCI_GPUS value (fake UUIDs).
fn minors_in(gpus: &str) -> BTreeSet<u32> {
    gpus.split(',')
        .filter(|s| !s.is_empty())
        .map(|u| {
            slurm::FAKE_GPUS
                .iter()
                .find(|g| g.2 == u)
                .unwrap_or_else(|| panic!("unknown GPU {u:?}"))
                .0
        })
        .collect()
}

// ---------------------------------------------------------------------------------------

fn plugin_has_no_newer_slurm_symbols() {
    let o = slurm::run(
        std::process::Command::new("nm")
            .args(["-D", "--undefined-only"])
            .arg(slurm::plugin_so()),
        Duration::from_secs(30),
    )
    .success();
    assert!(
        !o.stdout.contains("spank_prepend_task_argv"),
        "the plugin references spank_prepend_task_argv, which Slurm 22.05 lacks:\n{o}"
    );
}

fn options_in_help(c: &Cluster) {
    for prog in ["srun", "sbatch"] {
        let o = c.cmd(prog, &["--help"]);
        for opt in ["--gres-oci=on|off", "--gres-oci-caps=LIST"] {
            assert!(o.stdout.contains(opt), "{prog} --help lacks {opt}:\n{o}");
        }
    }
}

fn srun_env(c: &Cluster) {
    let o = c.srun(&["--gres=gpu:2", "env"]).success();
    let env = o.env();
    assert_eq!(env["GRES_OCI_GPUS"], c.gpus_var(&[0, 1]), "{o}");
    assert_eq!(env["NVIDIA_VISIBLE_DEVICES"], c.gpus_var(&[0, 1]), "{o}");
    // Host steps keep Slurm's own numbering and get no container variables.
    assert_eq!(env["CUDA_VISIBLE_DEVICES"], "0,1", "{o}");
    assert!(!env.contains_key("CUDA_DEVICE_ORDER"), "{o}");

    // As an ordinary user (user_init runs with the job user's privileges).
    let o = sh(
        c,
        &["--uid=nobody", "--gres=gpu:1"],
        "echo \"UID=$(id -u)\"; env",
    )
    .success();
    assert_eq!(o.env()["GRES_OCI_GPUS"], c.gpus_var(&[0]), "{o}");
    assert_eq!(o.env()["UID"], "65534", "{o}");

    let o = c.srun(&["env"]).success();
    let env = o.env();
    assert_eq!(env["GRES_OCI_GPUS"], "", "a step without GPUs: {o}");
    assert_eq!(env["NVIDIA_VISIBLE_DEVICES"], "void", "{o}");
}

fn host_env_unchanged(c: &Cluster) {
    let with = c.srun(&["--gres=gpu:2", "env"]).success().env();
    c.set_plugstack("");
    let without = c.srun(&["--gres=gpu:2", "env"]);
    c.set_plugstack(c.plugin_line());
    let without = without.success().env();
    let volatile = |k: &str| {
        ["JOB_ID", "JOBID", "TASK_PID", "_TIME", "_PORT"]
            .iter()
            .any(|v| k.contains(v))
    };
    let keys: BTreeSet<&String> = with.keys().chain(without.keys()).collect();
    let changed: Vec<&String> = keys
        .into_iter()
        .filter(|k| with.get(*k) != without.get(*k) && !volatile(k))
        .collect();
    let show: Vec<String> = changed
        .iter()
        .map(|k| format!("{k}: {:?} -> {:?}", without.get(*k), with.get(*k)))
        .collect();
    assert_eq!(
        changed,
        vec!["GRES_OCI_GPUS", "NVIDIA_VISIBLE_DEVICES"],
        "variables the plugin changed (without -> with): {show:#?}"
    );
    assert!(!without.contains_key("GRES_OCI_GPUS"));
}

fn container_gets_exactly_its_gpus(c: &Cluster, literal_cvd4: Option<&str>) {
    for n in [1usize, 2, 3, 4] {
        let gres = format!("--gres=gpu:{n}");
        let o = in_container(c, &[&gres], PROBE).success();
        let indices: Vec<usize> = (0..n).collect();
        let want: BTreeSet<u32> = c.minors_of(&indices).into_iter().collect();
        let devs = devices(&o.stdout);
        assert_eq!(devs.keys().copied().collect::<BTreeSet<_>>(), want, "{o}");
        for (m, r) in &devs {
            assert!(
                r.contains(ENXIO),
                "nvidia{m} not openable in the container: {r}\n{o}"
            );
        }
        let env = o.env();
        assert_eq!(env["GRES_OCI_GPUS"], c.gpus_var(&indices), "{o}");
        assert_eq!(env["NVIDIA_VISIBLE_DEVICES"], c.gpus_var(&indices), "{o}");
        assert_eq!(
            env["CUDA_VISIBLE_DEVICES"],
            c.container_cvd(&indices),
            "{o}"
        );
        assert_eq!(env["CUDA_DEVICE_ORDER"], "PCI_BUS_ID", "{o}");
        if n == 4 {
            if let Some(cvd) = literal_cvd4 {
                assert_eq!(env["CUDA_VISIBLE_DEVICES"], cvd, "{o}");
            }
        }
        if c.setup.cgroup {
            // The container stays inside the step's task cgroup (device and proctrack).
            let cg = o.stdout.split("CGROUP").nth(1).unwrap_or("");
            let devices_line = cg.lines().find(|l| l.contains(":devices:")).unwrap_or("");
            assert!(
                devices_line.contains("/job_") && devices_line.contains("/task_0/"),
                "container left the task cgroup: {devices_line:?}\n{o}"
            );
        }
    }
    let log = c.hook_log();
    assert!(log.contains("injected"), "hook log:\n{log}");
}

fn concurrent_jobs_disjoint(c: &Cluster) {
    let args = container_args(c, &["--gres=gpu:2", "/bin/sh", "-c"]);
    let script = format!("{PROBE}; sleep 1");
    c.wait_idle(Duration::from_secs(20));
    let start = || {
        let mut cmd = c.command("srun");
        cmd.args(&args).arg(&script);
        Running::start(&mut cmd)
    };
    let (a, b) = (start(), start());
    let (a, b) = (
        a.finish(Duration::from_secs(60)).success(),
        b.finish(Duration::from_secs(60)).success(),
    );
    let (da, db) = (devices(&a.stdout), devices(&b.stdout));
    let (ma, mb): (BTreeSet<u32>, BTreeSet<u32>) =
        (da.keys().copied().collect(), db.keys().copied().collect());
    assert_eq!(ma.len(), 2, "{a}");
    assert_eq!(mb.len(), 2, "{b}");
    assert!(
        ma.is_disjoint(&mb),
        "jobs share GPUs: {ma:?} {mb:?}\n{a}\n{b}"
    );
    assert_eq!(minors_in(&a.env()["GRES_OCI_GPUS"]), ma, "{a}");
    assert_eq!(minors_in(&b.env()["GRES_OCI_GPUS"]), mb, "{b}");
    // The same for host steps.
    c.wait_idle(Duration::from_secs(20));
    let start = || {
        let mut cmd = c.command("srun");
        cmd.args(["--gres=gpu:2", "/bin/sh", "-c", "env; sleep 1"]);
        Running::start(&mut cmd)
    };
    let (a, b) = (start(), start());
    let (a, b) = (
        a.finish(Duration::from_secs(60)).success(),
        b.finish(Duration::from_secs(60)).success(),
    );
    let (ga, gb) = (
        minors_in(&a.env()["GRES_OCI_GPUS"]),
        minors_in(&b.env()["GRES_OCI_GPUS"]),
    );
    assert!(
        ga.len() == 2 && gb.len() == 2 && ga.is_disjoint(&gb),
        "{a}\n{b}"
    );
}

fn batch_steps(c: &Cluster) {
    let bundle = c.bundle.display();
    let script = format!(
        r#"echo "BATCH=$SLURM_JOB_GPUS;$GRES_OCI_GPUS"
srun -n1 --gres=gpu:1 sh -c 'echo "STEP1=$SLURM_STEP_GPUS;$GRES_OCI_GPUS"'
srun -n1 sh -c 'echo "STEP2=$SLURM_STEP_GPUS;$GRES_OCI_GPUS"'
srun -n1 --gres=gpu:0 sh -c 'echo "STEP3=[$GRES_OCI_GPUS];$NVIDIA_VISIBLE_DEVICES"'
srun -n1 --gres-oci=off sh -c 'echo "STEP4=[$GRES_OCI_GPUS]"'
srun --exact -n1 --gres=gpu:1 sh -c 'echo "PAR=$GRES_OCI_GPUS"; sleep 1' &
srun --exact -n1 --gres=gpu:1 sh -c 'echo "PAR=$GRES_OCI_GPUS"; sleep 1' &
wait
srun -n1 --container={bundle} --gres=gpu:1 /bin/sh -c 'echo "CSTEP=$GRES_OCI_GPUS;$CUDA_VISIBLE_DEVICES"; ls /dev | grep "^nvidia[0-9]"'
"#
    );
    let (o, text) = c.sbatch(&["-n2", "--gres=gpu:3"], &script);
    assert!(o.ok(), "{o}\n--- job output\n{text}");
    let get = |k: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_owned)
            .collect()
    };
    let one = |k: &str| -> String {
        let v = get(k);
        assert_eq!(v.len(), 1, "{k} missing or repeated in:\n{text}");
        v[0].clone()
    };
    let split = |s: String| -> (Vec<usize>, String) {
        let (l, g) = s.split_once(';').unwrap();
        (slurm_list(l), g.to_owned())
    };
    let (job, batch) = split(one("BATCH"));
    assert_eq!(job.len(), 3, "{text}");
    assert_eq!(batch, c.gpus_var(&job), "{text}");
    let (s1, g1) = split(one("STEP1"));
    assert_eq!((s1.len(), g1.clone()), (1, c.gpus_var(&s1)), "{text}");
    let (s2, g2) = split(one("STEP2"));
    assert_eq!((s2, g2), (job.clone(), c.gpus_var(&job)), "{text}");
    assert_eq!(one("STEP3"), "[];void", "{text}");
    assert_eq!(
        one("STEP4"),
        "[]",
        "the inherited list must not leak into an opted-out step\n{text}"
    );
    let par: Vec<BTreeSet<u32>> = get("PAR").iter().map(|g| minors_in(g)).collect();
    assert_eq!(par.len(), 2, "{text}");
    assert!(
        par[0].len() == 1 && par[1].len() == 1 && par[0] != par[1],
        "{text}"
    );
    let cstep = one("CSTEP");
    let (g, cvd) = cstep.split_once(';').unwrap();
    let m = minors_in(g);
    assert_eq!(m.len(), 1, "{text}");
    assert_eq!(cvd, "0", "{text}");
    let m = *m.iter().next().unwrap();
    assert!(text.lines().any(|l| l == format!("nvidia{m}")), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("nvidia")).count(),
        1,
        "{text}"
    );
}

fn batch_container(c: &Cluster) {
    let bundle = format!("--container={}", c.bundle.display());
    let (o, text) = c.sbatch(
        &[&bundle, "--gres=gpu:2"],
        r#"echo "IN=$GRES_OCI_GPUS;$CUDA_VISIBLE_DEVICES"; ls /dev | grep "^nvidia[0-9]""#,
    );
    assert!(o.ok(), "{o}\n{text}");
    let want = format!("IN={};{}", c.gpus_var(&[0, 1]), c.container_cvd(&[0, 1]));
    assert!(text.lines().any(|l| l == want), "want {want}:\n{text}");
    let devs: BTreeSet<String> = text
        .lines()
        .filter(|l| l.starts_with("nvidia"))
        .map(str::to_owned)
        .collect();
    let want: BTreeSet<String> = c
        .minors_of(&[0, 1])
        .iter()
        .map(|m| format!("nvidia{m}"))
        .collect();
    assert_eq!(devs, want, "{text}");
}

fn per_task_binding(c: &Cluster) {
    // Each task prints its list and what it may open among the node's four GPUs.
    let probe = format!(
        r#"echo "T$SLURM_PROCID=$GRES_OCI_GPUS"; for m in 0 1 2 3; do echo "T$SLURM_PROCID DEV $m $(cat {dev}/nvidia$m 2>&1 </dev/null)"; done"#,
        dev = c.node.join("dev").display()
    );
    let cases: [(&[&str], [usize; 2]); 3] = [
        (&["-n2", "--gpus-per-task=1"], [0, 1]),
        (&["-n2", "--gres=gpu:4", "--gpu-bind=map_gpu:3,1"], [3, 1]),
        (&["-n2", "--gres=gpu:2", "--gpu-bind=single:1"], [0, 1]),
    ];
    for (args, want) in cases {
        let o = sh(c, args, &probe).success();
        for (task, idx) in want.iter().enumerate() {
            let line = format!("T{task}=");
            let got = o
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix(&line))
                .unwrap_or_else(|| panic!("no output from task {task}: {o}"));
            assert_eq!(got, c.gpus_var(&[*idx]), "task {task} of {args:?}: {o}");
            if c.setup.cgroup {
                // ConstrainDevices: the GPU we name is exactly the one the task may open.
                let allowed = task_devices(&o.stdout, task, true);
                assert_eq!(allowed, minors_in(got), "task {task} of {args:?}: {o}");
                assert!(o.stdout.contains(EPERM), "{o}");
            }
        }
    }
    // (No container case: Slurm 22.05 runs one task per node in a container step, and with
    // one task srun applies no GPU binding at all.)
}

fn opt_out(c: &Cluster) {
    let o = c.srun(&["--gres-oci=off", "--gres=gpu:2", "env"]).success();
    let env = o.env();
    assert!(
        !env.contains_key("GRES_OCI_GPUS") && !env.contains_key("NVIDIA_VISIBLE_DEVICES"),
        "{o}"
    );
    assert_eq!(env["CUDA_VISIBLE_DEVICES"], "0,1", "{o}");
    // No patch, no hook: the container gets no GPU.
    let o = in_container(c, &["--gres-oci=off", "--gres=gpu:2"], PROBE).success();
    assert!(devices(&o.stdout).is_empty(), "{o}");
    assert!(!o.env().contains_key("GRES_OCI_GPUS"), "{o}");
    // sbatch's option reaches the batch step and its steps.
    let (o, text) = c.sbatch(
        &["--gres-oci=off", "--gres=gpu:1"],
        r#"echo "B=[$GRES_OCI_GPUS]"; srun sh -c 'echo "S=[$GRES_OCI_GPUS]"'"#,
    );
    assert!(o.ok(), "{o}\n{text}");
    assert!(text.contains("B=[]") && text.contains("S=[]"), "{text}");
    // A site default of off, and the user turning it on.
    c.set_plugstack(&format!("{} default=off", c.plugin_line()));
    let off = c.srun(&["--gres=gpu:1", "env"]);
    let on = c.srun(&["--gres-oci=on", "--gres=gpu:1", "env"]);
    c.set_plugstack(c.plugin_line());
    let (off, on) = (off.success(), on.success());
    assert!(!off.env().contains_key("GRES_OCI_GPUS"), "{off}");
    assert_eq!(on.env()["GRES_OCI_GPUS"], c.gpus_var(&[0]), "{on}");
}

fn caps_option(c: &Cluster) {
    let o = c
        .srun(&["--gres-oci-caps=compute,utility", "--gres=gpu:1", "env"])
        .success();
    assert_eq!(
        o.env()["NVIDIA_DRIVER_CAPABILITIES"],
        "compute,utility",
        "{o}"
    );
    let o = in_container(c, &["--gres-oci-caps=compute", "--gres=gpu:1"], "env").success();
    assert_eq!(o.env()["NVIDIA_DRIVER_CAPABILITIES"], "compute", "{o}");
    // A bad value stops srun before anything runs, naming the option and the value.
    let o = c.srun(&[
        "--gres-oci-caps=compute,warp",
        "--gres=gpu:1",
        "echo",
        "ran",
    ]);
    assert!(!o.ok() && !o.stdout.contains("ran"), "{o}");
    assert!(o.stderr.contains("--gres-oci-caps=compute,warp"), "{o}");
    // A bad plugstack.conf argument fails steps with a message quoting it.
    c.set_plugstack(&format!("{} bogus=1", c.plugin_line()));
    let o = c.srun(&["echo", "ran"]);
    c.set_plugstack(c.plugin_line());
    assert!(!o.ok() && !o.stdout.contains("ran"), "{o}");
    assert!(
        o.stderr.contains("plugstack.conf argument \"bogus=1\""),
        "{o}"
    );
    let o = c.srun(&["--gres-oci=perhaps", "true"]);
    assert!(
        !o.ok()
            && o.stderr
                .contains("gres-oci: --gres-oci=perhaps: expected on or off"),
        "{o}"
    );
}

fn broken_gres_conf(c: &Cluster) {
    let bad = c.root.join("etc/gres.conf.broken");
    std::fs::write(
        &bad,
        format!(
            "Name=gpu Fiel={}/nvidia[0-3]\n",
            c.node.join("dev").display()
        ),
    )
    .unwrap();
    c.set_plugin_gres_conf(&bad);
    let required = c.srun(&["-n2", "--gres=gpu:1", "echo", "ran"]);
    let no_gpu = c.srun(&["echo", "ran"]);
    c.set_plugstack(&c.plugin_line().replacen("required", "optional", 1));
    let optional = c.srun(&["--gres=gpu:1", "echo", "ran"]);
    c.set_plugstack(c.plugin_line());
    c.set_plugin_gres_conf(&c.root.join("etc/gres.conf"));

    assert!(
        !required.ok() && !required.stdout.contains("ran"),
        "{required}"
    );
    let ours: Vec<&str> = required
        .stderr
        .lines()
        .filter(|l| l.starts_with("gres-oci: "))
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "one line from gres-oci expected:\n{required}"
    );
    assert!(
        ours[0].contains(&bad.display().to_string()) && ours[0].contains("unknown key \"Fiel\""),
        "{required}"
    );
    // A step without GPUs does not need gres.conf.
    assert!(no_gpu.ok() && no_gpu.stdout.contains("ran"), "{no_gpu}");
    // optional: the step runs, the user sees nothing from us, slurmd's log has it.
    assert!(
        optional.ok() && optional.stdout.contains("ran"),
        "{optional}"
    );
    assert!(!optional.stderr.contains("gres-oci"), "{optional}");
    let log = c.slurmd_log();
    assert!(
        log.lines()
            .any(|l| l.contains("unknown key \"Fiel\"") && l.contains("optional plugin")),
        "slurmd.log lacks the optional failure:\n{log}"
    );
}

fn constrained_host_step(c: &Cluster) {
    let probe = format!(
        r#"echo "G=$GRES_OCI_GPUS"; for m in 0 1 2 3; do echo "DEV $m $(cat {}/nvidia$m 2>&1 </dev/null)"; done"#,
        c.node.join("dev").display()
    );
    let o = sh(c, &["--gres=gpu:2"], &probe).success();
    let allowed: BTreeSet<u32> = devices(&o.stdout)
        .into_iter()
        .filter(|(_, r)| r.contains(ENXIO))
        .map(|(m, _)| m)
        .collect();
    let g = o.stdout.lines().find_map(|l| l.strip_prefix("G=")).unwrap();
    assert_eq!(allowed, minors_in(g), "{o}");
    assert_eq!(allowed, c.minors_of(&[0, 1]).into_iter().collect(), "{o}");
}

// ---------------------------------------------------------------------------------------

/// Issue 4's allocation containment: whatever a job's container asks for through its own
/// environment (`all`, a forged `GRES_OCI_GPUS`, another job's GPUs), it gets only what Slurm
/// allocated to its step, and its device cgroup opens only those.
fn allocation_containment(c: &Cluster) {
    let mine = c.minors_of(&[0])[0];
    let all4 = c.gpus_var(&[0, 1, 2, 3]);
    // `all` in a one-GPU job: exactly that GPU, and the cgroup denies the others.
    let b = own_bundle(c, "own-all", &["NVIDIA_VISIBLE_DEVICES=all"], HOSTDEV_PROBE);
    let mut args = vec!["--gres=gpu:1".to_string()];
    args.extend(runc_args(c, &b, "own-all"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = c.srun(&refs).success();
    let devs = devices(&o.stdout);
    assert_eq!(devs.keys().copied().collect::<Vec<_>>(), vec![mine], "{o}");
    for l in o.stdout.lines().filter_map(|l| l.strip_prefix("HOST ")) {
        let (m, r) = l.split_once(' ').unwrap();
        let m: u32 = m.parse().unwrap();
        let want = if m == mine { ENXIO } else { EPERM };
        assert!(r.contains(want), "host nvidia{m}: {r}\n{o}");
    }
    // A forged plugin variable and another GPU's index are refused, with the reason.
    for (name, env) in [
        ("own-forged", format!("GRES_OCI_GPUS={all4}")),
        (
            "own-uuid",
            format!(
                "NVIDIA_VISIBLE_DEVICES={}",
                uuid_of_minor(c.minors_of(&[1])[0])
            ),
        ),
    ] {
        let b = own_bundle(c, name, &[&env], HOSTDEV_PROBE);
        let mut args = vec!["--gres=gpu:1".to_string()];
        args.extend(runc_args(c, &b, name));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = c.srun(&refs);
        assert!(!o.ok(), "{name}: {o}");
        assert!(
            o.stderr.contains("not allocated to this Slurm step"),
            "{name}: {o}"
        );
        assert!(devices(&o.stdout).is_empty(), "{name}: {o}");
    }
    // Two jobs on the node: B cannot reach A's GPUs, by UUID or with `all`.
    c.wait_idle(Duration::from_secs(20));
    let mut a_cmd = c.command("srun");
    a_cmd.args([
        "--gres=gpu:2",
        "/bin/sh",
        "-c",
        "echo A=$GRES_OCI_GPUS; sleep 3",
    ]);
    let a = Running::start(&mut a_cmd);
    std::thread::sleep(Duration::from_millis(700));
    let a_gpus = c.gpus_var(&[0, 1]);
    for (name, env, ok) in [
        (
            "own-b-steal",
            format!("NVIDIA_VISIBLE_DEVICES={a_gpus}"),
            false,
        ),
        ("own-b-all", "NVIDIA_VISIBLE_DEVICES=all".to_string(), true),
    ] {
        let b = own_bundle(c, name, &[&env], HOSTDEV_PROBE);
        let mut args = vec!["--gres=gpu:2".to_string()];
        args.extend(runc_args(c, &b, name));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = c.cmd("srun", &refs);
        assert_eq!(o.ok(), ok, "{name}: {o}");
        if ok {
            let got: BTreeSet<u32> = devices(&o.stdout).keys().copied().collect();
            let want: BTreeSet<u32> = c.minors_of(&[2, 3]).into_iter().collect();
            assert_eq!(got, want, "{name}: B got A's GPUs\n{o}");
        } else {
            assert!(
                o.stderr.contains("not allocated to this Slurm step"),
                "{name}: {o}"
            );
        }
    }
    let a = a.finish(Duration::from_secs(30)).success();
    assert_eq!(a.env()["A"], a_gpus, "{a}");
    // Records of finished steps are gone. (Job records are the epilog's, and the next job
    // with the same id overwrites its own in its prolog.)
    let left: Vec<_> = std::fs::read_dir(c.root.join("gres-oci-state"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".job.json"))
        .collect();
    assert!(left.is_empty(), "stale allocation records: {left:?}");
}

/// Issue: a list that becomes a record comes from what Slurm sets for the step type. The
/// submitter forges every variable the plugin could read; the container asks for `all` and
/// must still see exactly its job's or step's GPUs.
fn forged_gpu_lists(c: &Cluster) {
    let all4 = c.gpus_var(&[0, 1, 2, 3]);
    let forged: [(&str, &str); 5] = [
        ("SLURM_STEP_GPUS", "0,1,2,3"),
        ("SLURM_JOB_GPUS", "0,1,2,3"),
        ("GRES_OCI_GPUS", &all4),
        ("NVIDIA_VISIBLE_DEVICES", "all"),
        ("CUDA_VISIBLE_DEVICES", "0,1,2,3"),
    ];
    let b = own_bundle(c, "forge", &["NVIDIA_VISIBLE_DEVICES=all"], HOSTDEV_PROBE);
    // srun.
    c.wait_idle(Duration::from_secs(20));
    let mut cmd = c.command("srun");
    cmd.arg("--gres=gpu:1")
        .args(runc_args(c, &b, "forge-srun"))
        .envs(forged.iter().copied());
    let o = slurm::run(&mut cmd, Duration::from_secs(60)).success();
    assert_eq!(seen(&o.stdout).len(), 1, "srun: {o}");
    // sbatch, with the submitter's environment exported or not (sbatch forwards SLURM_*
    // either way).
    for export in ["--export=ALL", "--export=NONE"] {
        let (o, text) = c.sbatch_env(
            &[export, "--gres=gpu:1"],
            &forged,
            &format!("{}\n", runc_line(c, &b, "forge-batch")),
        );
        assert!(o.ok(), "{export}: {o}\n{text}");
        assert_eq!(
            seen(&text).len(),
            1,
            "{export}: the batch step's container\n{text}"
        );
    }
    // sbatch from inside a GPU step: the inner batch job inherits the outer step's genuine
    // lists, which name GPUs the inner job does not have.
    let inner = c.root.join("work/inner.sh");
    std::fs::write(
        &inner,
        format!(
            "#!/bin/sh\necho INNER=$SLURM_JOB_GPUS\n{}\n",
            runc_line(c, &b, "forge-inner")
        ),
    )
    .unwrap();
    let out = c.root.join("work/inner.out");
    let _ = std::fs::remove_file(&out);
    let o = c
        .srun(&[
            "--gres=gpu:2",
            "sbatch",
            "--wait",
            "--gres=gpu:1",
            &format!("--output={}", out.display()),
            &inner.display().to_string(),
        ])
        .success();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let job = slurm_list(
        text.lines()
            .find_map(|l| l.strip_prefix("INNER="))
            .unwrap_or_else(|| panic!("no inner job output: {o}\n{text}")),
    );
    assert_eq!(job.len(), 1, "{text}");
    let want: BTreeSet<u32> = c.minors_of(&job).into_iter().collect();
    assert_eq!(seen(&text), want, "the inner job's container\n{o}\n{text}");
}

/// Issue: ssh through pam_slurm_adopt lands in the job's extern step cgroup, outside any
/// slurmstepd's tree. Done here the way pam_slurm_adopt does it (root writes the pid into the
/// step_extern cgroups); the container gets the job's GPUs on the node, from the prolog's
/// record.
fn adopted_into_extern_step(c: &Cluster) {
    c.wait_idle(Duration::from_secs(20));
    let mut job_cmd = c.command("srun");
    job_cmd.args([
        "--gres=gpu:2",
        "/bin/sh",
        "-c",
        "echo JOB=$SLURM_STEP_GPUS; sleep 4",
    ]);
    let job = Running::start(&mut job_cmd);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let procs: Vec<std::path::PathBuf> = loop {
        let found: Vec<_> = slurm::slurm_cgroups(&c.host)
            .into_iter()
            .filter_map(|d| std::fs::read_dir(d.join("uid_0")).ok())
            .flat_map(|jobs| {
                jobs.flatten()
                    .map(|j| j.path().join("step_extern/cgroup.procs"))
            })
            .filter(|p| p.exists())
            .collect();
        if !found.is_empty() || std::time::Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !procs.is_empty(),
        "no step_extern cgroup (PrologFlags=Contain)"
    );
    let b = own_bundle(c, "adopted", &["NVIDIA_VISIBLE_DEVICES=all"], HOSTDEV_PROBE);
    let adopt: String = procs
        .iter()
        .map(|p| format!("echo $$ > {}; ", p.display()))
        .collect();
    let o = slurm::run(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{adopt}exec {}", runc_line(c, &b, "adopted"))),
        Duration::from_secs(60),
    );
    let j = job.finish(Duration::from_secs(30)).success();
    let job_gpus = slurm_list(j.env().get("JOB").map(String::as_str).unwrap_or(""));
    assert_eq!(job_gpus.len(), 2, "{j}");
    let want: BTreeSet<u32> = c.minors_of(&job_gpus).into_iter().collect();
    assert!(o.ok(), "{o}");
    assert_eq!(seen(&o.stdout), want, "{o}");
}

#[test]
fn slurm_mig_slices() {
    let _lock = slurm::serial();
    let c = Cluster::start(Setup {
        cgroup: false,
        gres_template: "gres.conf.mig",
        oci_template: "oci.conf",
    });
    scenario("mig_slices", || mig_slices(&c));
    drop(c);
    // Under ConstrainDevices the task cgroup opens the slice's files only; the hook checks
    // the parent's node and both capability nodes against it.
    let c = Cluster::start(Setup {
        cgroup: true,
        gres_template: "gres.conf.mig",
        oci_template: "oci.conf",
    });
    scenario("mig_slices", || mig_slices(&c));
}

#[test]
fn slurm_shard_and_mps() {
    let _lock = slurm::serial();
    for (template, gres, mps) in [
        ("gres.conf.shard", "--gres=shard:2", None),
        ("gres.conf.mps", "--gres=mps:50", Some("50")),
    ] {
        let c = Cluster::start(Setup {
            cgroup: false,
            gres_template: template,
            oci_template: "oci.conf",
        });
        scenario(template, || shared_gpus(&c, gres, mps));
    }
    let c = Cluster::start(Setup {
        cgroup: false,
        gres_template: "gres.conf.nic",
        oci_template: "oci.conf",
    });
    scenario("gres.conf.nic", || step_nics(&c));
}

#[test]
fn slurm_task_none_minor_order() {
    let _lock = slurm::serial();
    let c = Cluster::start(Setup {
        cgroup: false,
        gres_template: "gres.conf",
        oci_template: "oci.conf",
    });
    assert_eq!(c.minors, vec![0, 1, 2, 3]);
    scenario(
        "plugin_has_no_newer_slurm_symbols",
        plugin_has_no_newer_slurm_symbols,
    );
    scenario("options_in_help", || options_in_help(&c));
    scenario("srun_env", || srun_env(&c));
    scenario("host_env_unchanged", || host_env_unchanged(&c));
    // Index order 3d,86,1b,5e: ranks by bus id 1,3,0,2.
    scenario("container_gets_exactly_its_gpus", || {
        container_gets_exactly_its_gpus(&c, Some("1,3,0,2"))
    });
    scenario("concurrent_jobs_disjoint", || concurrent_jobs_disjoint(&c));
    scenario("allocation_containment", || allocation_containment(&c));
    scenario("forged_gpu_lists", || forged_gpu_lists(&c));
    scenario("tree_escapes", || tree_escapes(&c));
    scenario("opted_out_step_is_bounded", || {
        opted_out_step_is_bounded(&c)
    });
    scenario("per_task_engine_in_task", || per_task_engine_in_task(&c));
    scenario("daemon_started_container", || daemon_started_container(&c));
    scenario("at_job_escape", || at_job_escape(&c));
    scenario("imex_channels_in_step", || imex_channels_in_step(&c));
    scenario("batch_steps", || batch_steps(&c));
    scenario("batch_container", || batch_container(&c));
    scenario("per_task_binding", || per_task_binding(&c));
    scenario("opt_out", || opt_out(&c));
    scenario("caps_option", || caps_option(&c));
    scenario("broken_gres_conf", || broken_gres_conf(&c));
}

#[test]
fn slurm_constrain_devices_not_minor_order() {
    let _lock = slurm::serial();
    let c = Cluster::start(Setup {
        cgroup: true,
        gres_template: "gres.conf.not-minor-order",
        oci_template: "oci.conf",
    });
    assert_ne!(c.minors, vec![0, 1, 2, 3]);
    scenario("constrained_host_step", || constrained_host_step(&c));
    scenario("srun_env", || srun_env(&c));
    scenario("host_env_unchanged", || host_env_unchanged(&c));
    scenario("container_gets_exactly_its_gpus", || {
        container_gets_exactly_its_gpus(&c, None)
    });
    scenario("concurrent_jobs_disjoint", || concurrent_jobs_disjoint(&c));
    scenario("allocation_containment", || allocation_containment(&c));
    scenario("forged_gpu_lists", || forged_gpu_lists(&c));
    scenario("tree_escapes", || tree_escapes(&c));
    scenario("adopted_into_extern_step", || adopted_into_extern_step(&c));
    scenario("opted_out_step_is_bounded", || {
        opted_out_step_is_bounded(&c)
    });
    scenario("per_task_engine_in_task", || per_task_engine_in_task(&c));
    scenario("daemon_started_container", || daemon_started_container(&c));
    scenario("at_job_escape", || at_job_escape(&c));
    scenario("imex_channels_in_step", || imex_channels_in_step(&c));
    scenario("batch_steps", || batch_steps(&c));
    scenario("batch_container", || batch_container(&c));
    scenario("per_task_binding", || per_task_binding(&c));
    scenario("opt_out", || opt_out(&c));
    scenario("broken_gres_conf", || broken_gres_conf(&c));
}

#[test]
fn slurm_task_none_not_minor_order() {
    let _lock = slurm::serial();
    let c = Cluster::start(Setup {
        cgroup: false,
        gres_template: "gres.conf.not-minor-order",
        // This cluster runs its containers with crun, through the shipped oci.conf.crun.
        oci_template: "oci.conf.crun",
    });
    scenario("srun_env", || srun_env(&c));
    scenario("container_gets_exactly_its_gpus", || {
        container_gets_exactly_its_gpus(&c, None)
    });
    scenario("per_task_binding", || per_task_binding(&c));
    // The GPU a map_gpu binding names is gres.conf's index, not /dev/nvidiaN.
    let o = sh(
        &c,
        &["-n2", "--gres=gpu:4", "--gpu-bind=map_gpu:2,0"],
        r#"echo "T$SLURM_PROCID=$GRES_OCI_GPUS""#,
    )
    .success();
    assert!(
        o.stdout
            .contains(&format!("T0={}", uuid_of_minor(c.minors[2]))),
        "{o}"
    );
    assert!(
        o.stdout
            .contains(&format!("T1={}", uuid_of_minor(c.minors[0]))),
        "{o}"
    );
}

/// `cargo test --test slurm_e2e -- --ignored --nocapture bench_srun` (or
/// tests/slurm/bench-srun.sh): `srun -n1 true` N times with and without the plugin,
/// interleaved, in one cluster; prints medians and the ratio. `BENCH_ARGS` replaces `-n1`
/// (`{bundle}` stands for the test bundle, e.g. `-n1 --container={bundle} --gres=gpu:2`),
/// `BENCH_N` sets the runs per variant, `BENCH_CGROUP` selects task/cgroup.
#[test]
#[ignore = "benchmark; run explicitly"]
fn bench_srun() {
    let _lock = slurm::serial();
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let c = Cluster::start(Setup {
        cgroup: std::env::var_os("BENCH_CGROUP").is_some(),
        gres_template: "gres.conf",
        oci_template: "oci.conf",
    });
    let args: Vec<String> = std::env::var("BENCH_ARGS")
        .map(|a| {
            a.split_whitespace()
                .map(|w| w.replace("{bundle}", &c.bundle.display().to_string()))
                .collect()
        })
        .unwrap_or_else(|_| vec!["-n1".into()]);
    let mut with = Vec::new();
    let mut without = Vec::new();
    // Warm up both paths once.
    for plugin in [true, false] {
        c.set_plugstack(if plugin { c.plugin_line() } else { "" });
        let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
        a.push("/bin/true");
        c.srun(&a).success();
    }
    for i in 0..2 * n {
        let plugin = i % 2 == 0;
        c.set_plugstack(if plugin { c.plugin_line() } else { "" });
        let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
        a.push("/bin/true");
        let t = std::time::Instant::now();
        c.srun(&a).success();
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if plugin {
            with.push(ms)
        } else {
            without.push(ms)
        }
    }
    c.set_plugstack(c.plugin_line());
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (mw, mo) = (median(&mut with), median(&mut without));
    println!(
        "srun {} /bin/true, {n} runs each, interleaved: with plugin median {mw:.1} ms \
         (min {:.1}, max {:.1}); without {mo:.1} ms (min {:.1}, max {:.1}); ratio {:.3}",
        args.join(" "),
        with[0],
        with[with.len() - 1],
        without[0],
        without[without.len() - 1],
        mw / mo
    );
}

/// The README's main job (`make demo` runs it): a private single-node Slurm with four fake
/// GPUs listed out of minor order in gres.conf, task/cgroup with ConstrainDevices, and a
/// `srun --container` job asking for two GPUs, through the plugin and the hook. Prints what
/// Slurm handed the step and what the container saw.
#[test]
#[ignore = "the demo; run by scripts/demo.sh"]
fn demo_slurm_job() {
    let _lock = slurm::serial();
    let c = Cluster::start(Setup {
        cgroup: true,
        gres_template: "gres.conf.not-minor-order",
        oci_template: "oci.conf",
    });
    println!(
        "== Slurm: slurmctld and slurmd up, node {} with gres.conf:",
        c.host
    );
    let gres = std::fs::read_to_string(c.root.join("etc/gres.conf")).unwrap();
    for l in gres
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        println!("   {l}");
    }
    println!(
        "   (so Slurm's GPU index i is /dev/nvidia{:?}[i])",
        c.minors
    );
    let host = sh(&c, &["--gres=gpu:2"], r#"echo "   host step: SLURM_STEP_GPUS=$SLURM_STEP_GPUS CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES GRES_OCI_GPUS=$GRES_OCI_GPUS""#)
        .success();
    print!("== srun --gres=gpu:2 (a host step)\n{}", host.stdout);
    let script = r#"echo "   GRES_OCI_GPUS=$GRES_OCI_GPUS"; echo "   CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES CUDA_DEVICE_ORDER=$CUDA_DEVICE_ORDER"; for d in /dev/nvidia*; do echo "   $(ls -l $d | awk '{print $1, $5, $6, $NF}'): $(cat $d 2>&1 </dev/null | sed 's/.*: //')"; done; echo "   libraries: $(ls /usr/lib64 /usr/lib/x86_64-linux-gnu 2>/dev/null | grep -E '^lib(cuda|nvidia-ml)' | tr '\n' ' ')"; nvidia-smi | sed 's/^/   /'"#;
    let o = in_container(&c, &["--gres=gpu:2"], script).success();
    print!(
        "== srun --gres=gpu:2 --container=BUNDLE: what the container saw\n{}",
        o.stdout
    );
    let log = c.hook_log();
    println!("== hook log\n   {}", log.lines().last().unwrap_or(""));
    assert!(log.contains("injected"));
}
