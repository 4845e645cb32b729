//! Scenarios shared by the Slurm 22.05 and 24.11 suites in which the job runs a container
//! engine itself (runc in the step, detached from it, per task, started by a daemon) or holds
//! parts of GPUs (MIG slices, shards, MPS shares): each forges or escapes the way an
//! allocation-identity defence must withstand.

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;

use super::{devices, slurm_list, Client, Cluster, Out};

const ENXIO: &str = "No such device or address";

pub fn sh(c: &Cluster, srun_args: &[&str], script: &str) -> Out {
    let mut args: Vec<&str> = srun_args.to_vec();
    args.extend(["/bin/sh", "-c", script]);
    c.srun(&args)
}

pub fn container_args<'a>(c: &'a Cluster, extra: &[&'a str]) -> Vec<String> {
    let mut v = vec![format!("--container={}", c.bundle.display())];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

pub fn in_container(c: &Cluster, extra: &[&str], script: &str) -> Out {
    let args = container_args(c, extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    sh(c, &refs, script)
}

/// The minors task `task`'s probe lines (`T<task> DEV <minor> <open result>`) show: all of
/// them, or with `open_only` those it may open (ENXIO).
pub fn task_devices(out: &str, task: usize, open_only: bool) -> BTreeSet<u32> {
    let prefix = format!("T{task} DEV ");
    out.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|l| !open_only || l.contains(ENXIO))
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect()
}

/// A bundle the job runs with runc itself (not `--container`), so nothing of the plugin's
/// reaches its environment: only what the user wrote, forged values included.
pub fn own_bundle(c: &Cluster, name: &str, env: &[&str], script: &str) -> std::path::PathBuf {
    let dir = c.root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(c.bundle.join("rootfs"))
        .arg(dir.join("rootfs"))
        .status()
        .unwrap();
    assert!(cp.success());
    std::fs::create_dir_all(dir.join("rootfs/hostdev")).unwrap();
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.bundle.join("config.json")).unwrap()).unwrap();
    spec["process"]["args"] = serde_json::json!(["/bin/sh", "-c", script]);
    let e = spec["process"]["env"].as_array_mut().unwrap();
    e.extend(env.iter().map(|v| serde_json::json!(v)));
    spec["mounts"].as_array_mut().unwrap().push(serde_json::json!({
        "destination": "/hostdev", "type": "bind", "source": c.node.join("dev"), "options": ["rbind", "ro"]
    }));
    if c.setup.cgroup {
        // Under ConstrainDevices runc 1.1 cannot write its default device rules below the
        // task's cgroup; with one allow-all rule it writes none, and the container keeps the
        // task cgroup's limits (as the plugin's spool patch does for `--container`).
        spec["linux"]["resources"]["devices"] =
            serde_json::json!([{"allow": true, "access": "rwm"}]);
    }
    spec["hooks"] = serde_json::json!({"prestart": [{
        "path": super::hook_bin(),
        "args": ["gres-oci-hook", format!("-config={}", c.node.join("config.toml").display()), "prestart"],
    }]});
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    dir
}

pub fn runc_args(c: &Cluster, bundle: &std::path::Path, id: &str) -> Vec<String> {
    vec![
        "runc".into(),
        "--root".into(),
        c.root.join("own-runc").display().to_string(),
        "run".into(),
        "--bundle".into(),
        bundle.display().to_string(),
        id.into(),
    ]
}

/// What `/hostdev/nvidiaN` (the node's real nodes, bound in) says when opened.
pub const HOSTDEV_PROBE: &str = r#"for d in /dev/nvidia*; do case ${d#/dev/nvidia} in *[!0-9]*|'') ;; *) echo "DEV ${d#/dev/nvidia} $(cat $d 2>&1 </dev/null)";; esac; done; for d in /hostdev/nvidia[0-9]*; do echo "HOST ${d#/hostdev/nvidia} $(cat $d 2>&1 </dev/null)"; done"#;

/// `runc run` of `bundle` as container `id`, as a shell command line.
pub fn runc_line(c: &Cluster, bundle: &std::path::Path, id: &str) -> String {
    runc_args(c, bundle, id).join(" ")
}

/// The GPUs a container's probe output shows: its `/dev/nvidiaN` minors.
pub fn seen(out: &str) -> BTreeSet<u32> {
    devices(out).keys().copied().collect()
}

/// Issue: the process tree is not an identity. A step's process that leaves the tree (setsid,
/// a double fork) still starts its container inside the job's cgroups, which name the step;
/// where Slurm keeps no cgroups, the container counts as in no job, which gets nothing on a
/// node that runs the plugin.
pub fn tree_escapes(c: &Cluster) {
    let b = own_bundle(c, "escape", &["NVIDIA_VISIBLE_DEVICES=all"], HOSTDEV_PROBE);
    let work = c.root.join("work");
    for (name, detach) in [
        ("setsid", "setsid -f sh -c"),
        ("double-fork", "sh -c '(sh -c \"$0\" &)'"),
    ] {
        let out = work.join(format!("escape-{name}.out"));
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(out.with_extension("done"));
        let inner = format!(
            "{} > {o} 2>&1; touch {d}",
            runc_line(c, &b, &format!("escape-{name}")),
            o = out.display(),
            d = out.with_extension("done").display()
        );
        let script = format!(
            "{detach} '{inner}'; for i in $(seq 200); do [ -e {d} ] && break; sleep 0.05; done; cat {o}",
            d = out.with_extension("done").display(),
            o = out.display()
        );
        let o = sh(c, &["--gres=gpu:1"], &script);
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if c.setup.cgroup {
            assert_eq!(seen(&text).len(), 1, "{name}: {o}\n{text}");
        } else {
            assert!(seen(&text).is_empty(), "{name}: {o}\n{text}");
            assert!(
                text.contains("in no Slurm job") && text.contains("outside-slurm"),
                "{name}: {o}\n{text}"
            );
        }
    }
}

/// Issue: an opted-out step still has a record, and the state dir exists from slurmd's
/// start, so no step's container gets GPUs the step does not hold.
pub fn opted_out_step_is_bounded(c: &Cluster) {
    let state = c.root.join("gres-oci-state");
    assert!(
        state.is_dir(),
        "the plugin makes {} when slurmd loads it",
        state.display()
    );
    let b = own_bundle(c, "optout", &["NVIDIA_VISIBLE_DEVICES=all"], HOSTDEV_PROBE);
    let mut args = vec!["--gres-oci=off".to_string(), "--gres=gpu:1".to_string()];
    args.extend(runc_args(c, &b, "optout"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = c.srun(&refs).success();
    assert_eq!(seen(&o.stdout).len(), 1, "{o}");
}

/// Issue: each task running its own engine (Sarus per task) gets exactly its task's GPU:
/// under ConstrainDevices the one its task cgroup opens, otherwise the one Slurm names.
pub fn per_task_engine_in_task(c: &Cluster) {
    let probe = |t: usize| {
        format!(
            r#"for d in /dev/nvidia*; do case ${{d#/dev/nvidia}} in *[!0-9]*|'') ;; *) echo "T{t} DEV ${{d#/dev/nvidia}} $(cat $d 2>&1 </dev/null)";; esac; done"#
        )
    };
    for t in 0..2 {
        own_bundle(
            c,
            &format!("pt{t}"),
            &["NVIDIA_VISIBLE_DEVICES=all"],
            &probe(t),
        );
    }
    let cases: [(&[&str], [usize; 2]); 2] = [
        (&["-n2", "--gpus-per-task=1"], [0, 1]),
        (&["-n2", "--gres=gpu:4", "--gpu-bind=map_gpu:3,1"], [3, 1]),
    ];
    for (args, want) in cases {
        let script = format!(
            "runc --root {} run --bundle {}/pt$SLURM_LOCALID pt$SLURM_LOCALID-$SLURM_JOB_ID",
            c.root.join("own-runc").display(),
            c.root.display()
        );
        let o = sh(c, args, &script);
        assert!(o.ok(), "{args:?}: {o}");
        for (t, idx) in want.iter().enumerate() {
            let got = task_devices(&o.stdout, t, true);
            let all = task_devices(&o.stdout, t, false);
            let want: BTreeSet<u32> = c.minors_of(&[*idx]).into_iter().collect();
            assert_eq!(all, want, "task {t} of {args:?}: {o}");
            assert_eq!(got, want, "task {t} of {args:?}: {o}");
        }
    }
}

/// Lists the container's MIG capability nodes (`CAP N`) and GPU nodes (`DEV N …`), then its
/// GPU variables.
pub const MIG_PROBE: &str = r#"for d in /dev/nvidia-caps/nvidia-cap*; do [ -c "$d" ] && echo "CAP ${d#/dev/nvidia-caps/nvidia-cap}"; done; for d in /dev/nvidia*; do case ${d#/dev/nvidia} in *[!0-9]*|'') ;; *) echo "DEV ${d#/dev/nvidia} $(cat $d 2>&1 </dev/null)";; esac; done; env | grep -E '^(GRES_OCI_GPUS|NVIDIA_VISIBLE_DEVICES|CUDA_VISIBLE_DEVICES)='"#;

/// `gres.conf.mig`'s slices by Slurm index: parent minor and capability minors.
pub const MIG_CAPS: [(u32, [u32; 2]); 4] = [
    (0, [21, 22]),
    (0, [30, 31]),
    (1, [156, 157]),
    (1, [165, 166]),
];

pub fn caps_seen(out: &str) -> BTreeSet<u32> {
    out.lines()
        .filter_map(|l| l.strip_prefix("CAP ")?.trim().parse().ok())
        .collect()
}

/// Issue: records name MIG devices themselves. A step holding one slice gets that slice's
/// capability nodes and its parent's node whatever its image asks for; another tenant's slice
/// on the same parent, by UUID, by index or by a forged list, is refused.
pub fn mig_slices(c: &Cluster) {
    let mig_uuid = |i: usize| super::MIG_SLICES[i].rsplit(':').next().unwrap().to_owned();
    let step_index = |out: &str| -> usize {
        let l = slurm_list(
            out.lines()
                .find_map(|l| l.strip_prefix("STEP="))
                .unwrap_or_else(|| panic!("no STEP= line: {out}")),
        );
        assert_eq!(l.len(), 1, "{out}");
        l[0]
    };
    // `all` in a one-slice step, run by an engine in the step.
    let b = own_bundle(c, "mig-all", &["NVIDIA_VISIBLE_DEVICES=all"], MIG_PROBE);
    let o = sh(
        c,
        &["--gres=gpu:1"],
        &format!(
            "echo STEP=$SLURM_STEP_GPUS; {}",
            runc_line(c, &b, "mig-all")
        ),
    )
    .success();
    let i = step_index(&o.stdout);
    let (parent, caps) = MIG_CAPS[i];
    assert_eq!(caps_seen(&o.stdout), caps.into_iter().collect(), "{o}");
    assert_eq!(seen(&o.stdout), [parent].into_iter().collect(), "{o}");
    // The sibling slice on the same parent, asked for in every way the image can.
    let sibling = if i % 2 == 0 { i + 1 } else { i - 1 };
    let (sp, sc) = MIG_CAPS[sibling];
    let nvml_index = |minor: u32| {
        super::FAKE_GPUS
            .iter()
            .position(|g| g.0 == minor)
            .expect("fake GPU")
    };
    let forged_env = [
        format!("NVIDIA_VISIBLE_DEVICES={}", mig_uuid(sibling)),
        format!("GRES_OCI_GPUS=mig:{sp}/{}/{}", sc[0], sc[1]),
        format!("NVIDIA_VISIBLE_DEVICES={}", nvml_index(parent)),
    ];
    for (n, env) in forged_env.iter().enumerate() {
        let name = format!("mig-forged{n}");
        let b = own_bundle(c, &name, &[env.as_str()], MIG_PROBE);
        let o = sh(
            c,
            &["--gres=gpu:1"],
            &format!("echo STEP=$SLURM_STEP_GPUS; {}", runc_line(c, &b, &name)),
        );
        assert!(!o.ok(), "{env}: {o}");
        assert!(
            caps_seen(&o.stdout).is_empty(),
            "{env}: the container ran: {o}"
        );
        // runc passes the hook's one-line refusal on.
        assert!(
            o.to_string()
                .contains("is not allocated to this Slurm step"),
            "{env}: {o}"
        );
    }
    // `srun --container` with two slices: the plugin's list names both by their files.
    let o = in_container(c, &["--gres=gpu:2"], MIG_PROBE).success();
    let env = o.env();
    let ids: Vec<&str> = env["GRES_OCI_GPUS"].split(',').collect();
    assert_eq!(ids.len(), 2, "{o}");
    let mut want = BTreeSet::new();
    for id in &ids {
        let (_, caps) = MIG_CAPS
            .iter()
            .find(|(p, c)| *id == format!("mig:{p}/{}/{}", c[0], c[1]))
            .unwrap_or_else(|| panic!("{id} names no slice of gres.conf.mig: {o}"));
        want.extend(caps);
    }
    assert_eq!(caps_seen(&o.stdout), want, "{o}");
    // No UniqueId in this gres.conf: NVIDIA's hook must not be handed the parent.
    assert_eq!(env["NVIDIA_VISIBLE_DEVICES"], "void", "{o}");
    assert_eq!(env["CUDA_VISIBLE_DEVICES"], "0,1", "{o}");
}

/// Issue: an engine whose containers a daemon starts. podman's conmon double-forks away from
/// the step, so the container has no slurmstepd ancestor; podman also puts it into cgroups of
/// its own (`libpod_parent`), outside the job. Either way it is in no job, which on a node
/// that runs the plugin gets nothing: `all` in a one-GPU step never yields the node's GPUs.
/// With `--cgroups=disabled` the container stays in the step's cgroups and gets the step's GPU
/// where Slurm keeps cgroups.
pub fn daemon_started_container(c: &Cluster) {
    let rootfs = c.root.join("podman-rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(c.bundle.join("rootfs"))
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(cp.success());
    std::fs::create_dir_all(rootfs.join("hostdev")).unwrap();
    std::fs::write(rootfs.join("probe-host.sh"), HOSTDEV_PROBE).unwrap();
    // The shipped hooks.d entry, pointed at the built hook and this node's config.
    let hooks = c.root.join("podman-hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let shipped = super::repo().join("slurm-conf/hooks.d/gres-oci-podman.json");
    let text = std::fs::read_to_string(&shipped)
        .unwrap()
        .replace(
            "/usr/bin/gres-oci-hook",
            &super::hook_bin().display().to_string(),
        )
        .replace(
            "/etc/gres-oci/config.toml",
            &c.node.join("config.toml").display().to_string(),
        );
    std::fs::write(hooks.join("gres-oci-podman.json"), text).unwrap();
    let podman = |name: &str, extra: &str| {
        format!(
            "podman --hooks-dir {h} run --rm --name {name}-$SLURM_JOB_ID --network none {extra} \
             --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
             --annotation org.gres-oci.gpus=1 -e NVIDIA_VISIBLE_DEVICES=all \
             -v {dev}:/hostdev --rootfs {r} /bin/sh /probe-host.sh",
            h = hooks.display(),
            dev = c.node.join("dev").display(),
            r = rootfs.display(),
        )
    };
    let o = sh(c, &["--gres=gpu:1"], &podman("gres-oci-conmon", ""));
    assert!(seen(&o.stdout).is_empty(), "podman's container: {o}");
    assert!(!o.ok(), "{o}");
    assert!(
        c.hook_log().contains("in no Slurm job"),
        "the hook's refusal: {}\n{o}",
        c.hook_log()
    );
    if c.setup.cgroup {
        let o = sh(
            c,
            &["--gres=gpu:1"],
            &podman("gres-oci-nocg", "--cgroups=disabled"),
        );
        assert!(o.ok(), "{o}");
        assert_eq!(seen(&o.stdout).len(), 1, "{o}");
    }
}

/// Issue: `at` runs the job's command from atd, outside every Slurm process tree and cgroup.
/// The container it starts is in no job and gets nothing. atd runs for this scenario only.
pub fn at_job_escape(c: &Cluster) {
    let b = own_bundle(c, "at-job", &["NVIDIA_VISIBLE_DEVICES=all"], HOSTDEV_PROBE);
    let out = c.root.join("work/at-job.out");
    let done = out.with_extension("done");
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&done);
    let job = format!(
        "{} > {o} 2>&1; touch {d}",
        runc_line(c, &b, "at-job"),
        o = out.display(),
        d = done.display()
    );
    std::fs::write(c.root.join("work/at-job.sh"), job).unwrap();
    let mut atd = std::process::Command::new("atd")
        .arg("-f")
        .process_group(0)
        .spawn()
        .expect("atd (apt-get install --no-install-recommends at)");
    let o = sh(
        c,
        &["--gres=gpu:1"],
        &format!(
            "at -f {} now 2>&1; for i in $(seq 600); do [ -e {d} ] && break; sleep 0.05; done",
            c.root.join("work/at-job.sh").display(),
            d = done.display()
        ),
    );
    super::stop_child("atd", &mut atd);
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(done.exists(), "atd never ran the job: {o}\n{text}");
    assert!(seen(&text).is_empty(), "{o}\n{text}");
    assert!(
        text.contains("in no Slurm job") && text.contains("outside-slurm"),
        "{o}\n{text}"
    );
}

/// Issue: a step holding GPU shares gets the GPU underneath, whether the shares are
/// gres/shard or gres/mps; an MPS step's containers also get the MPS log directory and Slurm's
/// `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`. Both through `srun --container` and through an engine
/// run in the step asking for `all`.
pub fn shared_gpus(c: &Cluster, gres: &str, mps: Option<&str>) {
    const LIST: &str = r#"for d in /dev/nvidia*; do case ${d#/dev/nvidia} in *[!0-9]*|'') ;; *) echo "DEV ${d#/dev/nvidia} $(cat $d 2>&1 </dev/null)";; esac; done; for d in /tmp/nvidia-mps /var/log/nvidia-mps; do [ -d $d ] && echo "DIR $d"; done; env | grep -E '^(GRES_OCI_GPUS|CUDA_VISIBLE_DEVICES|CUDA_MPS_ACTIVE_THREAD_PERCENTAGE)='; echo STEP=$SLURM_STEP_GPUS"#;
    let o = in_container(c, &[gres], LIST).success();
    let env = o.env();
    let one: BTreeSet<u32> = c.minors_of(&[0]).into_iter().collect();
    assert_eq!(seen(&o.stdout), one, "{gres}: {o}");
    assert_eq!(env["GRES_OCI_GPUS"], c.gpus_var(&[0]), "{o}");
    assert_eq!(env["CUDA_VISIBLE_DEVICES"], "0", "{o}");
    assert_eq!(
        env.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
            .map(String::as_str),
        mps,
        "{o}"
    );
    assert!(o.stdout.contains("DIR /tmp/nvidia-mps"), "{o}");
    assert_eq!(
        o.stdout.contains("DIR /var/log/nvidia-mps"),
        mps.is_some(),
        "{o}"
    );
    // An engine in the step, asking for everything.
    let b = own_bundle(c, "shared", &["NVIDIA_VISIBLE_DEVICES=all"], LIST);
    let o = sh(
        c,
        &[gres],
        &format!("echo JOB=$SLURM_STEP_GPUS; {}", runc_line(c, &b, "shared")),
    )
    .success();
    let step = slurm_list(o.env().get("JOB").map(String::as_str).unwrap_or(""));
    assert_eq!(step.len(), 1, "{o}");
    let want: BTreeSet<u32> = c.minors_of(&step).into_iter().collect();
    assert_eq!(seen(&o.stdout), want, "{gres}: {o}");
    assert_eq!(
        o.stdout.contains("DIR /var/log/nvidia-mps"),
        mps.is_some(),
        "{o}"
    );
}

/// Issue: inside a Slurm job a container gets only the IMEX channels the job was given. The
/// plugin records the channels the step's own `/dev` holds when it starts (switch/nvidia_imex
/// makes the job's channel there); a channel node that appears later is not the job's, so
/// `all` leaves it out and asking for it by id is refused.
pub fn imex_channels_in_step(c: &Cluster) {
    let dev = c.node.join("dev/nvidia-caps-imex-channels");
    let _ = std::fs::remove_dir_all(&dev);
    std::fs::create_dir_all(&dev).unwrap();
    let mk = |id: u32| format!("mknod -m 666 {}/channel{id} c 234 {id}", dev.display());
    let ok = std::process::Command::new("sh")
        .arg("-c")
        .arg(mk(4))
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::write(
        c.node.join("proc/devices"),
        "Character devices:\n195 nvidia-frontend\n234 nvidia-caps-imex-channels\n",
    )
    .unwrap();
    const PROBE: &str = r#"for n in /dev/nvidia-caps-imex-channels/*; do [ -c "$n" ] && echo "CHAN ${n##*/}"; done; echo done"#;
    let chans = |out: &str| -> BTreeSet<String> {
        out.lines()
            .filter_map(|l| l.strip_prefix("CHAN "))
            .map(str::to_owned)
            .collect()
    };
    for (name, value) in [("imex-all", "all"), ("imex-7", "7")] {
        let b = own_bundle(
            c,
            name,
            &[
                "NVIDIA_VISIBLE_DEVICES=all",
                &format!("NVIDIA_IMEX_CHANNELS={value}"),
            ],
            PROBE,
        );
        // Channel 7 appears after the step started: the job was not given it.
        let o = sh(
            c,
            &["--gres=gpu:1"],
            &format!("{}; {}", mk(7), runc_line(c, &b, name)),
        );
        let _ = std::fs::remove_file(dev.join("channel7"));
        if value == "all" {
            assert!(o.ok(), "{o}");
            assert_eq!(
                chans(&o.stdout),
                ["channel4".to_string()].into_iter().collect(),
                "{o}"
            );
        } else {
            assert!(!o.ok(), "{o}");
            assert!(chans(&o.stdout).is_empty(), "{o}");
            assert!(
                o.to_string()
                    .contains("IMEX channel 7 is not the Slurm job's"),
                "{o}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dev);
    let _ = std::fs::remove_file(c.node.join("proc/devices"));
}

/// Issue: with Slurm's gres/nic and `mofed-step-nics`, a container asking for MOFED gets only
/// its step's adapters (the uverbs nodes of the gres.conf files `SLURM_STEP_NICS` numbers) and
/// `rdma_cm`; a step without NICs gets none, whatever the submitter exported. Without the key,
/// every adapter on the node, as NVIDIA's hook gives.
pub fn step_nics(c: &Cluster) {
    const PROBE: &str =
        r#"for n in /dev/infiniband/*; do [ -c "$n" ] && echo "IB ${n##*/}"; done; echo done"#;
    let ib = |out: &str| -> BTreeSet<String> {
        out.lines()
            .filter_map(|l| l.strip_prefix("IB "))
            .map(str::to_owned)
            .collect()
    };
    let b = own_bundle(
        c,
        "nics",
        &["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_MOFED=enabled"],
        PROBE,
    );
    let run = |args: &[&str]| {
        sh(
            c,
            args,
            &format!("echo NICS=$SLURM_STEP_NICS; {}", runc_line(c, &b, "nics")),
        )
        .success()
    };
    let names = |nics: &[usize]| -> BTreeSet<String> {
        let mut s: BTreeSet<String> = nics.iter().map(|n| format!("uverbs{n}")).collect();
        if !nics.is_empty() {
            s.insert("rdma_cm".into());
        }
        s
    };
    c.set_gres_oci_key("mofed-step-nics", None);
    let o = run(&["--gres=gpu:1,nic:1"]);
    assert_eq!(ib(&o.stdout), names(&[0, 1, 2, 3]), "without the key: {o}");

    c.set_gres_oci_key("mofed-step-nics", Some("true"));
    for (gres, count) in [("--gres=gpu:1,nic:1", 1), ("--gres=gpu:1,nic:2", 2)] {
        let o = run(&[gres]);
        // gres/nic writes `mlx4_<number of the file>` whatever the adapter.
        let nics: Vec<usize> = o.env()["NICS"]
            .split(',')
            .map(|n| n.strip_prefix("mlx4_").unwrap().parse().unwrap())
            .collect();
        assert_eq!(nics.len(), count, "{gres}: {o}");
        assert_eq!(ib(&o.stdout), names(&nics), "{gres}: {o}");
    }
    // A step without NICs, its submitter claiming one: Slurm unsets the variable.
    let o = run(&["--gres=gpu:1", "--export=ALL,SLURM_STEP_NICS=3"]);
    assert!(ib(&o.stdout).is_empty(), "{o}");
    // Holding NIC 0, claiming NIC 3: Slurm sets its own list.
    let o = run(&["--gres=gpu:1,nic:1", "--export=ALL,SLURM_STEP_NICS=3"]);
    assert_eq!(ib(&o.stdout), names(&[0]), "{o}");
    c.set_gres_oci_key("mofed-step-nics", None);
}
