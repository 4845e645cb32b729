//! The core of the Slurm end-to-end suite on Slurm 24.11 (Debian 13): the same harness as
//! `slurm_e2e.rs` (`tests/slurm/`), with every daemon and client run inside a pivot_root'ed
//! Debian 13 root (`tests/slurm24/`) and the plugin built against that root's headers.
//!
//! What differs from 22.05: `srun --container` gets the final step environment from Slurm
//! itself, so the plugin does not patch the spool `config.json` (there is none yet when its
//! callbacks run); the hook therefore comes from the user's bundle (`hooks.prestart`), and
//! commands are absolute paths (24.11 resolves them outside the container).
//!
//! The first run builds the root (debootstrap + apt, about a minute with the package mirror)
//! and the plugin (`target/slurm24`); later runs reuse both.

mod slurm;
mod slurm24;

use std::collections::BTreeSet;

use serde_json::{json, Value};
use slurm::{devices, engine, scenario, Client, Cluster, Env, Setup};

const PROBE_SH: &str = r#"for d in /dev/nvidia*; do case ${d#/dev/nvidia} in *[!0-9]*|'') ;; *) echo "DEV ${d#/dev/nvidia} $(cat $d 2>&1 </dev/null)";; esac; done; env"#;
const ENXIO: &str = "No such device or address";

/// The bundle runs the hook itself (nothing adds it on 24.11) and has the probe script.
fn prepare_bundle(c: &Cluster) {
    std::fs::write(c.bundle.join("rootfs/probe.sh"), PROBE_SH).unwrap();
    let path = c.bundle.join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let hook = slurm::hook_bin().display().to_string();
    spec["hooks"] = json!({"prestart": [{
        "path": hook,
        "args": [hook, format!("-config={}", c.node.join("config.toml").display()), "prestart"],
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    }]});
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
}

fn srun_env(c: &Cluster) {
    let o = c.srun(&["--gres=gpu:2", "env"]).success();
    let env = o.env();
    assert_eq!(env["GRES_OCI_GPUS"], c.gpus_var(&[0, 1]), "{o}");
    assert_eq!(env["NVIDIA_VISIBLE_DEVICES"], c.gpus_var(&[0, 1]), "{o}");
    assert_eq!(env["CUDA_VISIBLE_DEVICES"], "0,1", "{o}");
    assert!(!env.contains_key("CUDA_DEVICE_ORDER"), "{o}");
    let o = c.srun(&["env"]).success();
    assert_eq!(o.env()["GRES_OCI_GPUS"], "", "{o}");
    assert_eq!(o.env()["NVIDIA_VISIBLE_DEVICES"], "void", "{o}");
}

fn container_gets_exactly_its_gpus(c: &Cluster) {
    let bundle = format!("--container={}", c.bundle.display());
    for n in [1usize, 2, 3, 4] {
        let gres = format!("--gres=gpu:{n}");
        let o = c.srun(&[&bundle, &gres, "/bin/sh", "/probe.sh"]).success();
        let indices: Vec<usize> = (0..n).collect();
        let want: BTreeSet<u32> = c.minors_of(&indices).into_iter().collect();
        let devs = devices(&o.stdout);
        assert_eq!(devs.keys().copied().collect::<BTreeSet<_>>(), want, "{o}");
        for (m, r) in &devs {
            assert!(r.contains(ENXIO), "nvidia{m}: {r}\n{o}");
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
    }
    // A step without GPUs: no device, Slurm's stale variables gone.
    let o = c.srun(&[&bundle, "/bin/sh", "/probe.sh"]).success();
    assert!(devices(&o.stdout).is_empty(), "{o}");
    assert_eq!(o.env()["NVIDIA_VISIBLE_DEVICES"], "void", "{o}");
    assert!(c.hook_log().contains("injected"), "{}", c.hook_log());
    // Nothing was patched: the spool config.json the plugin would edit does not exist yet.
    let log = c.slurmd_log();
    assert!(!log.contains("gres-oci: error"), "{log}");
}

fn batch_steps(c: &Cluster) {
    let bundle = c.bundle.display();
    let script = format!(
        r#"echo "BATCH=$SLURM_JOB_GPUS;$GRES_OCI_GPUS"
srun -n1 --gres=gpu:1 sh -c 'echo "STEP1=$SLURM_STEP_GPUS;$GRES_OCI_GPUS"'
srun -n1 --gres-oci=off sh -c 'echo "STEP4=[$GRES_OCI_GPUS]"'
srun -n1 --container={bundle} --gres=gpu:2 /bin/sh -c 'echo "CSTEP=$GRES_OCI_GPUS;$CUDA_VISIBLE_DEVICES"; ls /dev | grep "^nvidia[0-9]"'
"#
    );
    let (o, text) = c.sbatch(&["-n1", "--gres=gpu:3"], &script);
    assert!(o.ok(), "{o}\n--- job output\n{text}");
    let one = |k: &str| -> String {
        let v: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{k}=")))
            .collect();
        assert_eq!(v.len(), 1, "{k} missing or repeated in:\n{text}");
        v[0].to_owned()
    };
    let list = |s: &str| -> Vec<usize> {
        s.split(',')
            .filter(|x| !x.is_empty())
            .flat_map(|x| match x.split_once('-') {
                Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<_>>(),
                None => vec![x.parse().unwrap()],
            })
            .collect()
    };
    let batch = one("BATCH");
    let (job, g) = batch.split_once(';').unwrap();
    let job = list(job);
    assert_eq!(job.len(), 3, "{text}");
    assert_eq!(g, c.gpus_var(&job), "{text}");
    let s1 = one("STEP1");
    let (s, g) = s1.split_once(';').unwrap();
    assert_eq!(g, c.gpus_var(&list(s)), "{text}");
    assert_eq!(one("STEP4"), "[]", "{text}");
    let cstep = one("CSTEP");
    let (g, cvd) = cstep.split_once(';').unwrap();
    assert_eq!(g.split(',').count(), 2, "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("nvidia")).count(),
        2,
        "{text}"
    );
    assert_eq!(cvd.split(',').count(), 2, "{text}");
}

/// The submitter forges every list the plugin could read; the batch step's list is still the
/// job's own (Slurm 24.11 sets SLURM_JOB_GPUS there too, and sbatch forwards SLURM_* even
/// with `--export=NONE`), and an srun step's the step's own.
fn forged_gpu_lists(c: &Cluster) {
    let all4 = c.gpus_var(&[0, 1, 2, 3]);
    let forged: [(&str, &str); 3] = [
        ("SLURM_STEP_GPUS", "0,1,2,3"),
        ("SLURM_JOB_GPUS", "0,1,2,3"),
        ("GRES_OCI_GPUS", &all4),
    ];
    for export in ["--export=ALL", "--export=NONE"] {
        let (o, text) = c.sbatch_env(
            &[export, "--gres=gpu:1"],
            &forged,
            r#"echo "BATCH=$SLURM_JOB_GPUS;$GRES_OCI_GPUS""#,
        );
        assert!(o.ok(), "{export}: {o}\n{text}");
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("BATCH="))
            .unwrap_or_else(|| panic!("{export}: no output\n{text}"));
        let (job, gpus) = line.split_once(';').unwrap();
        let job = slurm::slurm_list(job);
        assert_eq!(job.len(), 1, "{export}: {text}");
        assert_eq!(gpus, c.gpus_var(&job), "{export}: {text}");
    }
    c.wait_idle(std::time::Duration::from_secs(20));
    let mut cmd = c.command("srun");
    cmd.args(["--gres=gpu:1", "/usr/bin/env"])
        .envs(forged.iter().copied());
    let o = slurm::run(&mut cmd, std::time::Duration::from_secs(60)).success();
    let env = o.env();
    assert_eq!(env["GRES_OCI_GPUS"].split(',').count(), 1, "{o}");
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
    let required = c.srun(&["--gres=gpu:1", "echo", "ran"]);
    let no_gpu = c.srun(&["echo", "ran"]);
    c.set_plugin_gres_conf(&c.root.join("etc/gres.conf"));
    assert!(
        !required.ok() && !required.stdout.contains("ran"),
        "{required}"
    );
    assert!(
        required.stderr.lines().any(|l| l.contains("gres-oci: ")
            && l.contains(&bad.display().to_string())
            && l.contains("unknown key \"Fiel\"")),
        "{required}"
    );
    assert!(no_gpu.ok() && no_gpu.stdout.contains("ran"), "{no_gpu}");
}

#[test]
fn slurm24_task_none_not_minor_order() {
    let _lock = slurm::serial();
    let t = std::time::Instant::now();
    let dir = slurm24::ensure_root();
    let plugin = slurm24::plugin(&dir);
    let root = slurm24::Root::enter(&dir);
    let c = Cluster::start_in(
        Setup {
            cgroup: false,
            gres_template: "gres.conf.not-minor-order",
            oci_template: "oci.conf",
        },
        Env {
            wrap: root.wrap(),
            plugin: Some(plugin.clone()),
            munge_ids: Some(slurm24::ids_in(&dir, "munge")),
        },
    );
    eprintln!("slurm 24.11 cluster up ({:.1?})", t.elapsed());
    let v = c.cmd("srun", &["--version"]).success();
    assert!(v.stdout.contains(" 24.11."), "{v}");
    prepare_bundle(&c);
    scenario("srun env", || srun_env(&c));
    scenario("container gets exactly its GPUs", || {
        container_gets_exactly_its_gpus(&c)
    });
    scenario("batch steps", || batch_steps(&c));
    scenario("forged GPU lists", || forged_gpu_lists(&c));
    scenario("broken gres.conf", || broken_gres_conf(&c));
    // The engine in the job: detached from the step, opted out, per task.
    scenario("tree escapes", || engine::tree_escapes(&c));
    scenario("opted-out step is bounded", || {
        engine::opted_out_step_is_bounded(&c)
    });
    scenario("per-task engine in task", || {
        engine::per_task_engine_in_task(&c)
    });
    scenario("IMEX channels in a step", || {
        engine::imex_channels_in_step(&c)
    });
    drop(c);
    // Another gres.conf on the same root, task/none, the bundle prepared.
    let cluster = |gres_template: &'static str| {
        let c = Cluster::start_in(
            Setup {
                cgroup: false,
                gres_template,
                oci_template: "oci.conf",
            },
            Env {
                wrap: root.wrap(),
                plugin: Some(plugin.clone()),
                munge_ids: Some(slurm24::ids_in(&dir, "munge")),
            },
        );
        prepare_bundle(&c);
        c
    };
    // MIG slices listed as AutoDetect lists them.
    let c = cluster("gres.conf.mig");
    scenario("MIG slices", || engine::mig_slices(&c));
    drop(c);
    // GPUs shared through gres/shard and gres/mps.
    for (template, gres, mps) in [
        ("gres.conf.shard", "--gres=shard:2", None),
        ("gres.conf.mps", "--gres=mps:50", Some("50")),
    ] {
        let c = cluster(template);
        scenario(template, || engine::shared_gpus(&c, gres, mps));
    }
    // InfiniBand adapters shared out as gres/nic.
    let c = cluster("gres.conf.nic");
    scenario("gres.conf.nic", || engine::step_nics(&c));
    drop(c);
    drop(root);
}
