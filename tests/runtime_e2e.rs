//! End-to-end: real runc and crun containers (busybox-static rootfs) running the real
//! gres-oci-hook against fake GPU nodes (mknod devices, real ELF driver libraries and
//! ld.so.cache, fake procfs, fake NVML). Asserts what the container itself sees.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use support::*;

/// What a container reports about itself: device nodes, open() results, injected files.
const PROBE: &str = r#"
for n in /dev/nvidia* /dev/nvidia-caps/*; do [ -c "$n" ] && echo "node $n"; done
for n in /dev/nvidia* /hostdev/nvidia* /dev/nvidia-caps/* /hostdev/nvidia-caps/*; do
  [ -c "$n" ] || continue
  if cat "$n" </dev/null >/dev/null 2>/dev/shm/err; then echo "open $n ok"; else echo "open $n $(cat /dev/shm/err)"; fi
done
for d in /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/bin /lib/firmware/nvidia/*; do
  [ -d "$d" ] || continue
  for f in "$d"/*; do
    if [ -L "$f" ]; then echo "link $f -> $(readlink "$f")"; elif [ -f "$f" ]; then echo "file $f"; fi
  done
done
[ -f /etc/ld.so.cache ] && cat /etc/ld.so.cache > /out/ld.so.cache
echo "env CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}"
echo probe-done
"#;

struct Case<'a> {
    node: &'a FakeNode,
    env: &'a [&'a str],
    readonly: bool,
    debian: bool,
}

impl Case<'_> {
    fn bundle(&self) -> (Bundle, tempfile::TempDir) {
        let out = tempfile::tempdir().unwrap();
        let b = Bundle::new(BundleOpts {
            env: self.env,
            script: PROBE,
            readonly: self.readonly,
            debian: self.debian,
            hook_config: Some(&self.node.config()),
            binds: vec![
                (self.node.dev(), "/hostdev"),
                (out.path().to_owned(), "/out"),
            ],
        });
        (b, out)
    }

    fn run(&self, rt: Runtime) -> (Seen, tempfile::TempDir) {
        let (b, out) = self.bundle();
        let o = b.run(rt);
        assert!(
            o.status.success(),
            "{} {:?}: {}",
            rt.name(),
            self.env,
            text(&o)
        );
        let s = String::from_utf8_lossy(&o.stdout);
        assert!(s.contains("probe-done"), "{}", text(&o));
        (
            Seen {
                lines: s.lines().map(str::to_owned).collect(),
            },
            out,
        )
    }
}

fn setup() -> FakeNode {
    require_root();
    prepare_cgroups_for_crun();
    FakeNode::new(&[])
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const ENXIO: &str = "cat: can't open";

#[test]
fn each_visible_devices_form_gets_exactly_its_gpus() {
    let node = setup();
    // The fake node's GPUs, in PCI order (= NVML index): minors 2, 0, 3, 1.
    let control = ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"];
    let cases: &[(&str, &[&str])] = &[
        ("0", &["nvidia2"]),
        ("1,3", &["nvidia0", "nvidia1"]),
        ("GPU-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a73", &["nvidia1"]),
        ("0000:5e:00.0", &["nvidia3"]),
        ("all", &["nvidia0", "nvidia1", "nvidia2", "nvidia3"]),
        ("none", &[]),
    ];
    for rt in [Runtime::Runc, Runtime::Crun] {
        for (nvd, gpus) in cases {
            let env = [format!("NVIDIA_VISIBLE_DEVICES={nvd}")];
            let env: Vec<&str> = env.iter().map(String::as_str).collect();
            let (seen, _out) = Case {
                node: &node,
                env: &env,
                readonly: false,
                debian: true,
            }
            .run(rt);
            let mut want = set(gpus);
            want.extend(control.iter().map(|s| s.to_string()));
            assert_eq!(
                seen.nodes(),
                want,
                "{} NVIDIA_VISIBLE_DEVICES={nvd}",
                rt.name()
            );
            // The device cgroup: the container's own nodes open to ENXIO (allowed, no driver),
            // the host's other GPU nodes to EPERM.
            for m in 0..4 {
                let name = format!("nvidia{m}");
                let host = seen.open(&format!("/hostdev/{name}"));
                if gpus.contains(&name.as_str()) {
                    assert!(
                        host.contains(ENXIO) && host.contains("No such device or address"),
                        "{nvd}: {name}: {host}"
                    );
                    let own = seen.open(&format!("/dev/{name}"));
                    assert!(own.contains("No such device or address"), "{nvd}: {own}");
                } else {
                    assert!(
                        host.contains("Operation not permitted"),
                        "{} {nvd}: {name} should be denied: {host}",
                        rt.name()
                    );
                }
            }
            assert!(seen
                .open("/dev/nvidiactl")
                .contains("No such device or address"));
        }
    }
}

#[test]
fn non_gpu_containers_are_left_untouched() {
    let node = setup();
    for env in [
        &[][..],
        &["NVIDIA_VISIBLE_DEVICES="],
        &["NVIDIA_VISIBLE_DEVICES=void"],
        &["NVIDIA_VISIBLE_DEVICES=void,0"],
    ] {
        let case = Case {
            node: &node,
            env,
            readonly: false,
            debian: true,
        };
        let (b, _out) = case.bundle();
        let before = tree(&b.rootfs());
        let o = b.run(Runtime::Runc);
        assert!(o.status.success(), "{}", text(&o));
        let s = String::from_utf8_lossy(&o.stdout);
        assert!(!s.contains("node /dev/nvidia"), "{env:?}: {s}");
        assert!(!s.contains("libcuda"), "{env:?}: {s}");
        let after = tree(&b.rootfs());
        let changed: Vec<_> = after
            .iter()
            .filter(|l| !before.contains(l))
            .chain(before.iter().filter(|l| !after.contains(l)))
            .collect();
        assert!(
            changed.is_empty(),
            "{env:?}: the rootfs changed on disk: {changed:?}"
        );
    }
}

fn check_driver_files(seen: &Seen, libdir: &str, version: &str) {
    for f in [
        format!("file {libdir}/libcuda.so.{version}"),
        format!("link {libdir}/libcuda.so.1 -> libcuda.so.{version}"),
        format!("link {libdir}/libcuda.so -> libcuda.so.{version}"),
        format!("file {libdir}/libnvidia-ml.so.{version}"),
        format!("link {libdir}/libnvidia-ml.so.1 -> libnvidia-ml.so.{version}"),
        format!("file {libdir}/libnvidia-ptxjitcompiler.so.{version}"),
        format!("link {libdir}/libnvidia-nvvm.so.4 -> libnvidia-nvvm.so.{version}"),
        "file /usr/bin/nvidia-smi".to_string(),
        format!("file /lib/firmware/nvidia/{version}/gsp_ga10x.bin"),
    ] {
        assert!(seen.has(&f), "missing {f:?} in {:#?}", seen.lines);
    }
    for l in &seen.lines {
        // Not asked for (video, graphics), another driver's leftover, or not a driver library.
        for bad in [
            "libnvidia-encode",
            "libnvidia-glcore",
            "libcuda.so.470",
            "libcudart",
        ] {
            assert!(!l.contains(bad), "unexpected {l}");
        }
    }
}

fn check_ldcache(out: &Path, libdir: &str) {
    let cache = gres_oci::ldcache::LdCache::read(&out.join("ld.so.cache"))
        .expect("the container has a linker cache");
    let find = |k: &str| {
        cache
            .entries
            .iter()
            .find(|e| e.key == k)
            .map(|e| e.value.clone())
    };
    assert_eq!(find("libcuda.so.1"), Some(format!("{libdir}/libcuda.so.1")));
    assert_eq!(
        find("libnvidia-ml.so.1"),
        Some(format!("{libdir}/libnvidia-ml.so.1"))
    );
}

#[test]
fn driver_libraries_links_binaries_and_linker_cache() {
    let node = setup();
    for rt in [Runtime::Runc, Runtime::Crun] {
        let env = ["NVIDIA_VISIBLE_DEVICES=0"];
        let (seen, out) = Case {
            node: &node,
            env: &env,
            readonly: false,
            debian: true,
        }
        .run(rt);
        check_driver_files(&seen, "/usr/lib/x86_64-linux-gnu", "550.54.15");
        check_ldcache(out.path(), "/usr/lib/x86_64-linux-gnu");
    }
    assert!(node.log().contains("injected"), "hook log: {}", node.log());
}

#[test]
fn rhel_layout_and_another_driver_version() {
    require_root();
    prepare_cgroups_for_crun();
    let node = FakeNode::new(&["--driver", "570.86.15", "--layout", "rhel"]);
    for rt in [Runtime::Runc, Runtime::Crun] {
        let env = ["NVIDIA_VISIBLE_DEVICES=all"];
        let (seen, out) = Case {
            node: &node,
            env: &env,
            readonly: false,
            debian: false,
        }
        .run(rt);
        check_driver_files(&seen, "/usr/lib64", "570.86.15");
        check_ldcache(out.path(), "/usr/lib64");
        assert!(
            !seen.lines.iter().any(|l| l.contains("x86_64-linux-gnu")),
            "{:#?}",
            seen.lines
        );
    }
}

#[test]
fn read_only_rootfs() {
    let node = setup();
    for rt in [Runtime::Runc, Runtime::Crun] {
        let env = ["NVIDIA_VISIBLE_DEVICES=1"];
        let case = Case {
            node: &node,
            env: &env,
            readonly: true,
            debian: true,
        };
        let (b, out) = case.bundle();
        let mut spec = b.spec.clone();
        let script = format!("{PROBE}\nif touch /probe-write 2>/dev/null; then echo rootfs-writable; else echo rootfs-readonly; fi");
        spec["process"]["args"] = serde_json::json!(["/bin/sh", "-c", script]);
        std::fs::write(
            b.path().join("config.json"),
            serde_json::to_vec(&spec).unwrap(),
        )
        .unwrap();
        let o = b.run(rt);
        assert!(o.status.success(), "{}", text(&o));
        let s = String::from_utf8_lossy(&o.stdout);
        assert!(s.contains("rootfs-readonly"), "{s}");
        let seen = Seen {
            lines: s.lines().map(str::to_owned).collect(),
        };
        assert!(seen.nodes().contains("nvidia0"), "{s}");
        check_driver_files(&seen, "/usr/lib/x86_64-linux-gnu", "550.54.15");
        check_ldcache(out.path(), "/usr/lib/x86_64-linux-gnu");
    }
}

#[test]
fn plugin_variable_names_physical_gpus_and_wins() {
    let node = setup();
    let env = [
        "NVIDIA_VISIBLE_DEVICES=all",
        "GRES_OCI_GPUS=minor:3,GPU-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a71",
    ];
    let (seen, _out) = Case {
        node: &node,
        env: &env,
        readonly: false,
        debian: true,
    }
    .run(Runtime::Runc);
    let gpus: BTreeSet<_> = seen
        .nodes()
        .into_iter()
        .filter(|n| n.starts_with("nvidia") && n[6..].parse::<u32>().is_ok())
        .collect();
    assert_eq!(gpus, set(&["nvidia0", "nvidia3"]));
}

#[test]
fn requirements_use_nvml_and_stop_the_container() {
    let node = setup();
    for rt in [Runtime::Runc, Runtime::Crun] {
        let env = ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_CUDA=cuda>=13.0"];
        let (b, _out) = Case {
            node: &node,
            env: &env,
            readonly: false,
            debian: true,
        }
        .bundle();
        let o = b.run(rt);
        assert!(!o.status.success(), "{}", text(&o));
        // runc shows the hook's stderr; crun discards it (unless annotated), so the log has it.
        let err = match rt {
            Runtime::Runc => String::from_utf8_lossy(&o.stderr).into_owned(),
            Runtime::Crun => node.log(),
        };
        assert!(
            err.contains("unsatisfied condition: cuda>=13.0"),
            "{}\n{err}",
            text(&o)
        );
        assert!(!String::from_utf8_lossy(&o.stdout).contains("probe-done"));
        // The fake NVML reports CUDA 12.4: a satisfiable requirement passes.
        let env = [
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_REQUIRE_CUDA=cuda>=12.0 brand=tesla",
        ];
        let (seen, _out) = Case {
            node: &node,
            env: &env,
            readonly: false,
            debian: true,
        }
        .run(rt);
        assert!(seen.nodes().contains("nvidia2"));
    }
    assert!(node.log().contains("inventory=Nvml"), "{}", node.log());
    // Without a working NVML a cuda requirement is never waved through on procfs alone.
    node.edit_config(|c| {
        c.replace(
            "[gres-oci]",
            "[gres-oci]\nnvml-library = \"/nonexistent/libnvidia-ml.so.1\"",
        )
    });
    let env = ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_CUDA=cuda>=12.0"];
    let (b, _out) = Case {
        node: &node,
        env: &env,
        readonly: false,
        debian: true,
    }
    .bundle();
    let o = b.run(Runtime::Runc);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("need NVML") && err.contains("/nonexistent/libnvidia-ml.so.1"),
        "{}",
        text(&o)
    );
}

fn hook(args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut c = Command::new(hook_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_clear()
        .spawn()
        .unwrap();
    // The hook may exit before reading stdin (a bad config); a broken pipe is expected then.
    let _ = c.stdin.take().unwrap().write_all(stdin);
    c.wait_with_output().unwrap()
}

#[test]
fn hook_command_line_contract() {
    let node = setup();
    let cfg = format!("-config={}", node.config().display());
    // Help and version, in the usual shape.
    for cmd in [
        &["-help"][..],
        &["--help"],
        &["prestart", "--help"],
        &["plan", "--help"],
        &["info", "-h"],
        &["cdi", "--help"],
    ] {
        let o = hook(cmd, b"");
        assert!(o.status.success(), "{cmd:?}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).starts_with("Usage: gres-oci-hook"),
            "{cmd:?}: {}",
            text(&o)
        );
    }
    let o = hook(&["--version"], b"");
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("gres-oci-hook 0."),
        "{}",
        text(&o)
    );
    // Other stages are no-ops, whatever stdin holds.
    let o = hook(&[&cfg, "poststop"], b"garbage");
    assert!(o.status.success(), "{}", text(&o));
    // Bad input: one line on stderr, exit 1.
    for (stdin, needle) in [
        (&b"garbage"[..], "not valid JSON"),
        (br#"{"id":"x","pid":1}"#, "no bundle"),
        (
            br#"{"id":"x","pid":1,"bundle":"/nonexistent"}"#,
            "/nonexistent/config.json",
        ),
    ] {
        let o = hook(&[&cfg, "prestart"], stdin);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
        assert!(e.contains(needle), "{e}");
    }
    let o = hook(&["-config=/nonexistent.toml", "prestart"], b"{}");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent.toml"));

    // A malformed config.json.
    let b = Bundle::new(BundleOpts::default());
    std::fs::write(b.path().join("config.json"), b"{\"ociVersion\": 1").unwrap();
    let state = format!(r#"{{"id":"x","pid":1,"bundle":"{}"}}"#, b.path().display());
    let o = hook(&[&cfg, "prestart"], state.as_bytes());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("config.json"),
        "{}",
        text(&o)
    );

    // plan prints every edit as JSON and changes nothing.
    let b = Bundle::new(BundleOpts {
        env: &["NVIDIA_VISIBLE_DEVICES=2"],
        ..Default::default()
    });
    let before = tree(&b.rootfs());
    let o = hook(
        &[
            "plan",
            "--bundle",
            b.path().to_str().unwrap(),
            "--config",
            node.config().to_str().unwrap(),
        ],
        b"",
    );
    assert!(o.status.success(), "{}", text(&o));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let nodes: Vec<&str> = plan["device_nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        nodes,
        [
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools",
            "/dev/nvidia3",
            "/dev/nvidiactl"
        ]
    );
    assert_eq!(plan["inventory"], "procfs");
    assert_eq!(before, tree(&b.rootfs()));

    // info: NVML and procfs agree on the GPUs.
    let info = |src: &str| {
        let o = hook(&[&cfg, "info", "--json", "--source", src], b"");
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let gpus: Vec<(u64, u64, String, String)> = v["inventory"]["gpus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                (
                    g["index"].as_u64().unwrap(),
                    g["minor"].as_u64().unwrap(),
                    g["uuid"].to_string(),
                    g["pci_bus_id"].to_string(),
                )
            })
            .collect();
        (v["inventory"]["driver_version"].clone(), gpus, v)
    };
    let (dv_p, gpus_p, _) = info("procfs");
    let (dv_n, gpus_n, v) = info("nvml");
    assert_eq!(dv_p, dv_n);
    assert_eq!(gpus_p, gpus_n);
    assert_eq!(gpus_p.len(), 4);
    assert_eq!(v["inventory"]["cuda_version"], "12.4");
    let text_out = hook(&[&cfg, "info"], b"");
    assert!(
        String::from_utf8_lossy(&text_out.stdout).contains("GPU 0: minor 2"),
        "{}",
        text(&text_out)
    );
}

/// Non-ASCII text in the container's variables, and bytes that are not UTF-8 at all in its
/// config.json, stop the container with one line from the hook and exit 1: never a panic
/// (exit 101 with a backtrace), in runc and in crun.
#[test]
fn non_ascii_container_input_is_a_one_line_error() {
    let node = setup();
    let cases: [(&[&str], &str); 5] = [
        (&["GRES_OCI_GPUS=ab€"], "ab€"),
        (&["GRES_OCI_GPUS=GPU€"], "GPU€"),
        (&["NVIDIA_VISIBLE_DEVICES=ab€"], "ab€"),
        (
            &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=€"],
            "€",
        ),
        (
            &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_CUDA=cuda>=1€"],
            "€",
        ),
    ];
    for rt in [Runtime::Runc, Runtime::Crun] {
        for (env, needle) in cases {
            let (b, _out) = Case {
                node: &node,
                env,
                readonly: false,
                debian: true,
            }
            .bundle();
            let before = node.log();
            let o = b.run(rt);
            assert!(!o.status.success(), "{} {env:?}: {}", rt.name(), text(&o));
            one_line_hook_failure(rt, &o, &node, &before, needle);
        }
        // Raw bytes that are not UTF-8 in an env value: runc takes them and the hook reports
        // config.json; crun's JSON parser refuses the file before any hook runs.
        if rt == Runtime::Crun {
            continue;
        }
        let (b, _out) = Case {
            node: &node,
            env: &["NVIDIA_VISIBLE_DEVICES=0", "GRES_OCI_GPUS=PLACEHOLDER"],
            readonly: false,
            debian: true,
        }
        .bundle();
        let cfg = std::fs::read(b.path().join("config.json")).unwrap();
        let at = cfg.windows(11).position(|w| w == b"PLACEHOLDER").unwrap();
        let mut bad = cfg[..at].to_vec();
        bad.extend_from_slice(b"ab\xe2\x82\xff\xc3");
        bad.extend_from_slice(&cfg[at + 11..]);
        std::fs::write(b.path().join("config.json"), bad).unwrap();
        let before = node.log();
        let o = b.run(rt);
        assert!(!o.status.success(), "{}: {}", rt.name(), text(&o));
        one_line_hook_failure(rt, &o, &node, &before, "config.json");
    }
}

/// The hook exited 1 (not 101, a panic) and said why in one line, on the runtime's stderr for
/// runc and in the hook's log for crun (which keeps the hook's stderr to itself).
fn one_line_hook_failure(
    rt: Runtime,
    o: &std::process::Output,
    node: &FakeNode,
    log_before: &str,
    needle: &str,
) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{}", text(o));
    match rt {
        Runtime::Runc => assert!(err.contains("exit status 1,"), "{}", text(o)),
        Runtime::Crun => assert!(err.contains("(exit code: 1)"), "{}", text(o)),
    }
    let log = node.log();
    let new = log.strip_prefix(log_before).unwrap_or(&log);
    let lines: Vec<&str> = new.lines().collect();
    assert_eq!(lines.len(), 1, "{}: {new}", rt.name());
    assert!(
        lines[0].contains("ERROR") && lines[0].contains(needle),
        "{}: {new}",
        rt.name()
    );
}

/// config.json is read for what the hook uses and no more: a bundle without `process.user`
/// (which the runtimes accept) or with a field the hook never reads in a shape it does not
/// know still gets its GPU, in runc and crun and through `plan`; a wrong value in a field the
/// hook reads is one line naming the file and the field.
#[test]
fn config_json_is_read_only_where_the_hook_uses_it() {
    let node = setup();
    let cfg = format!("-config={}", node.config().display());
    for rt in [Runtime::Runc, Runtime::Crun] {
        let (mut b, _out) = Case {
            node: &node,
            env: &["NVIDIA_VISIBLE_DEVICES=3"],
            readonly: false,
            debian: true,
        }
        .bundle();
        b.spec["process"].as_object_mut().unwrap().remove("user");
        b.spec["org.example.extension"] = serde_json::json!([1, {"user": 7}]);
        b.write();
        let o = b.run(rt);
        assert!(o.status.success(), "{}: {}", rt.name(), text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("node /dev/nvidia1"),
            "{}: {}",
            rt.name(),
            text(&o)
        );
    }
    let plan = |b: &Bundle| hook(&[&cfg, "plan", "--bundle", b.path().to_str().unwrap()], b"");
    let b = {
        let (mut b, _out) = Case {
            node: &node,
            env: &["NVIDIA_VISIBLE_DEVICES=3"],
            readonly: false,
            debian: true,
        }
        .bundle();
        b.spec["process"].as_object_mut().unwrap().remove("user");
        b.spec["process"]["capabilities"] = serde_json::json!("not an object");
        b.write();
        b
    };
    let o = plan(&b);
    assert!(o.status.success(), "{}", text(&o));
    // Wrong values where the hook reads: one line, exit 1, the file and the field named.
    for (edit, field) in [
        (serde_json::json!({"root": {"path": 3}}), "root.path"),
        (
            serde_json::json!({"process": {"env": "A=1"}}),
            "process.env",
        ),
        (
            serde_json::json!({"process": {"env": ["A=1", 2]}}),
            "process.env[1]",
        ),
        (serde_json::json!({"process": []}), "process"),
        (
            serde_json::json!({"linux": {"resources": {"devices": [{"allow": "yes"}]}}}),
            "linux.resources.devices",
        ),
    ] {
        let mut spec = b.spec.clone();
        for (k, v) in edit.as_object().unwrap() {
            match (spec.get_mut(k), v) {
                (Some(serde_json::Value::Object(have)), serde_json::Value::Object(want)) => {
                    for (k2, v2) in want {
                        have.insert(k2.clone(), v2.clone());
                    }
                }
                _ => spec[k] = v.clone(),
            }
        }
        std::fs::write(
            b.path().join("config.json"),
            serde_json::to_vec(&spec).unwrap(),
        )
        .unwrap();
        let o = plan(&b);
        assert_eq!(o.status.code(), Some(1), "{field}: {}", text(&o));
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(e.trim_end().lines().count(), 1, "{field}: {e}");
        assert!(
            e.contains("config.json") && e.contains(field),
            "{field}: {e}"
        );
    }
}

/// The shipped Sarus hooks.d entry, with its paths pointed at this build and fake node, drives
/// a runc container as Sarus would.
#[test]
fn shipped_sarus_hook_entry_works() {
    let node = setup();
    let shipped = std::fs::read_to_string(repo().join("slurm-conf/hooks.d/gres-oci.json")).unwrap();
    let entry: serde_json::Value = serde_json::from_str(&shipped).unwrap();
    assert_eq!(entry["version"], "1.0.0");
    assert_eq!(entry["stages"], serde_json::json!(["prestart"]));
    assert_eq!(entry["when"]["always"], true);
    let mut hook = entry["hook"].clone();
    hook["path"] = serde_json::json!(hook_bin());
    let args: Vec<String> = hook["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace("/etc/gres-oci/config.toml", node.config().to_str().unwrap())
        })
        .collect();
    assert_eq!(args.last().map(String::as_str), Some("prestart"));
    hook["args"] = serde_json::json!(args);
    let case = Case {
        node: &node,
        env: &["NVIDIA_VISIBLE_DEVICES=3"],
        readonly: false,
        debian: true,
    };
    let (mut b, _out) = case.bundle();
    b.spec["hooks"] = serde_json::json!({ "prestart": [hook] });
    b.write();
    let o = b.run(Runtime::Runc);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("node /dev/nvidia1"),
        "{}",
        text(&o)
    );
}

/// Image symlinks that point out of the rootfs (absolute, relative `../..`, a loop) on the
/// paths the hook writes to never make it create or mount anything outside the rootfs.
#[test]
fn hostile_rootfs_symlinks_stay_inside() {
    let node = setup();
    let host = tempfile::Builder::new()
        .prefix("gres-oci-escape")
        .tempdir()
        .unwrap();
    let abs = host.path().join("abs");
    let rel = host.path().join("rel");
    let etc = host.path().join("etc");
    let layouts: Vec<(bool, &str, String)> = vec![
        // Debian layout: the library dir is an absolute link to a host path.
        (true, "usr/lib/x86_64-linux-gnu", abs.display().to_string()),
        // Other layout: a relative link climbing far above the rootfs.
        (
            false,
            "usr/lib64",
            format!("../../../../../../../../..{}", rel.display()),
        ),
    ];
    for (debian, dir, target) in layouts {
        let case = Case {
            node: &node,
            env: &["NVIDIA_VISIBLE_DEVICES=0"],
            readonly: false,
            debian,
        };
        let (b, out) = case.bundle();
        let link = b.rootfs().join(dir);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        // The same path exists inside the rootfs, so the links resolve (inside) and the hook
        // proceeds; on the host the path exists too and must stay empty.
        std::fs::create_dir_all(b.rootfs().join(abs.strip_prefix("/").unwrap())).unwrap();
        std::fs::create_dir_all(b.rootfs().join(rel.strip_prefix("/").unwrap())).unwrap();
        std::fs::create_dir_all(&abs).unwrap();
        std::fs::create_dir_all(&rel).unwrap();
        // /etc/ld.so.cache and /usr/bin point at host files.
        std::fs::write(etc.with_extension("cache"), b"host file").unwrap();
        std::fs::write(
            b.rootfs()
                .join(etc.with_extension("cache").strip_prefix("/").unwrap()),
            b"image file",
        )
        .unwrap();
        std::os::unix::fs::symlink(
            etc.with_extension("cache"),
            b.rootfs().join("etc/ld.so.cache"),
        )
        .unwrap();
        std::os::unix::fs::symlink(&abs, b.rootfs().join("usr/bin")).unwrap();
        if debian {
            // /dev itself: the runtime mounts its tmpfs where the link leads inside the rootfs,
            // and the hook's device nodes must follow it there, not to the host's directory.
            let devdir = host.path().join("dev");
            std::fs::create_dir_all(&devdir).unwrap();
            std::fs::create_dir_all(b.rootfs().join(devdir.strip_prefix("/").unwrap())).unwrap();
            std::fs::remove_dir(b.rootfs().join("dev")).unwrap();
            std::os::unix::fs::symlink(&devdir, b.rootfs().join("dev")).unwrap();
        }
        let o = b.run(Runtime::Runc);
        assert!(o.status.success(), "{}", text(&o));
        let libdir = if debian {
            "/usr/lib/x86_64-linux-gnu"
        } else {
            "/usr/lib64"
        };
        let seen = Seen {
            lines: String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_owned)
                .collect(),
        };
        assert!(
            seen.has(&format!("file {libdir}/libcuda.so.550.54.15")),
            "{:#?}",
            seen.lines
        );
        check_ldcache(out.path(), libdir);
        // Nothing appeared on the host side of any link.
        let mut on_host: Vec<_> = std::fs::read_dir(host.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        on_host.sort();
        on_host.retain(|n| n != "dev");
        assert_eq!(
            on_host,
            ["abs", "etc.cache", "rel"].map(std::ffi::OsString::from),
            "created outside the rootfs"
        );
        if let Ok(d) = std::fs::read_dir(host.path().join("dev")) {
            // runc 1.1.5 itself follows the link for its /dev/{stdin,stdout,stderr,fd,ptmx}
            // symlinks (a runtime matter); nothing of the hook's may appear there.
            let ours: Vec<_> = d
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| n.to_string_lossy().starts_with("nvidia"))
                .collect();
            assert!(
                ours.is_empty(),
                "device nodes created in the host directory: {ours:?}"
            );
        }
        assert!(seen.nodes().contains("nvidia2"), "{:#?}", seen.lines);
        assert_eq!(
            std::fs::read_dir(&abs).unwrap().count() + std::fs::read_dir(&rel).unwrap().count(),
            0
        );
        assert!(seen.has("file /usr/bin/nvidia-smi"), "{:#?}", seen.lines);
        assert_eq!(
            std::fs::read(etc.with_extension("cache")).unwrap(),
            b"host file"
        );
    }
    // A link loop, or a link to a path the rootfs lacks, fails the container cleanly.
    for target in ["x86_64-linux-gnu", "/nonexistent-in-rootfs"] {
        let case = Case {
            node: &node,
            env: &["NVIDIA_VISIBLE_DEVICES=0"],
            readonly: false,
            debian: true,
        };
        let (b, _out) = case.bundle();
        std::fs::create_dir_all(b.rootfs().join("usr/lib")).unwrap();
        std::os::unix::fs::symlink(target, b.rootfs().join("usr/lib/x86_64-linux-gnu")).unwrap();
        let o = b.run(Runtime::Runc);
        assert!(!o.status.success(), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("/usr/lib/x86_64-linux-gnu: cannot open directory"),
            "{}",
            text(&o)
        );
        assert!(!Path::new(target).exists());
    }
}

/// MIG devices by UUID and by `GPU:MIG` index: the parent's node plus the GPU-instance and
/// compute-instance capability nodes, and the device cgroup opens exactly those.
#[test]
fn mig_devices_get_parent_and_capabilities() {
    require_root();
    let node = FakeNode::new(&[
        "--mig",
        "3:1:0:MIG-11111111-2222-3333-4444-555555555555",
        "--mig",
        "3:2:0:MIG-11111111-2222-3333-4444-555555555556",
    ]);
    // minor 3 is NVML index 2; its mig-minors are gi1 417, gi1/ci0 418, gi2 426, gi2/ci0 427.
    for (nvd, caps) in [
        ("MIG-11111111-2222-3333-4444-555555555556", [426, 427]),
        ("2:0", [417, 418]),
    ] {
        let env = [format!("NVIDIA_VISIBLE_DEVICES={nvd}")];
        let env: Vec<&str> = env.iter().map(String::as_str).collect();
        let (seen, _out) = Case {
            node: &node,
            env: &env,
            readonly: false,
            debian: true,
        }
        .run(Runtime::Runc);
        let mut want = set(&["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia3"]);
        want.extend(caps.iter().map(|c| format!("nvidia-caps/nvidia-cap{c}")));
        assert_eq!(seen.nodes(), want, "{nvd}");
        for c in [417, 418, 426, 427] {
            let host = seen.open(&format!("/hostdev/nvidia-caps/nvidia-cap{c}"));
            let allowed = caps.contains(&c);
            assert_eq!(
                host.contains("No such device or address"),
                allowed,
                "{nvd}: cap{c}: {host}"
            );
            assert_eq!(
                host.contains("Operation not permitted"),
                !allowed,
                "{nvd}: cap{c}: {host}"
            );
        }
    }
    assert!(
        node.log().contains("inventory=Nvml"),
        "MIG ids need NVML: {}",
        node.log()
    );
}

/// 64 containers at once on one node, every fourth asking for a GPU that does not exist: each
/// ends as it should, and the shared log holds one intact line per container.
#[test]
fn many_concurrent_containers() {
    let node = setup();
    const N: usize = 64;
    let results: Vec<(usize, bool, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let node = &node;
                s.spawn(move || {
                    let fail = i % 4 == 3;
                    let nvd = if fail {
                        "NVIDIA_VISIBLE_DEVICES=9".to_string()
                    } else {
                        format!("NVIDIA_VISIBLE_DEVICES={}", i % 4)
                    };
                    let b = Bundle::new(BundleOpts {
                        env: &[nvd.as_str()],
                        script: "ls /dev",
                        hook_config: Some(&node.config()),
                        ..Default::default()
                    });
                    let rt = if i % 2 == 0 {
                        Runtime::Runc
                    } else {
                        Runtime::Crun
                    };
                    let o = b.run(rt);
                    (i, o.status.success(), text(&o))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // NVML index i % 4 → minor, for the fake node's PCI order.
    let minor = [2, 0, 3, 1];
    for (i, ok, out) in &results {
        if i % 4 == 3 {
            assert!(!ok, "container {i} should have failed: {out}");
        } else {
            assert!(ok, "container {i}: {out}\nhook log:\n{}", node.log());
            let m = minor[i % 4];
            assert!(
                out.contains(&format!("nvidia{m}\n")),
                "container {i}: {out}"
            );
            let others = (0..4)
                .filter(|&x| x != m)
                .filter(|x| out.contains(&format!("nvidia{x}\n")))
                .count();
            assert_eq!(others, 0, "container {i} got other GPUs: {out}");
        }
    }
    let log = node.log();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains(" INFO injected id="))
            .count(),
        N / 4 * 3,
        "{log}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains(" ERROR ") && l.contains("GPU 9 is not on this node"))
            .count(),
        N / 4,
        "{log}"
    );
    assert_eq!(lines.len(), N, "stray or torn lines: {log}");
    assert!(lines.iter().all(|l| l.starts_with("20")), "{log}");
}

/// The image's LD_PRELOAD and linker configuration never reach the hook's helpers: ldconfig
/// runs from the host with an empty environment.
#[test]
fn image_environment_does_not_reach_helpers() {
    let node = setup();
    let marker = tempfile::tempdir().unwrap();
    let flag = marker.path().join("preload-ran");
    let case = Case {
        node: &node,
        env: &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "LD_PRELOAD=/evil.so",
            "LD_LIBRARY_PATH=/evil",
        ],
        readonly: false,
        debian: true,
    };
    let (b, out) = case.bundle();
    // A preload library that records any process it is loaded into, at the same path inside the
    // image and on the host.
    let src = marker.path().join("evil.c");
    std::fs::write(&src, format!("#include <stdio.h>\n__attribute__((constructor)) static void f(void) {{ FILE *x = fopen(\"{}\", \"a\"); if (x) fclose(x); }}\n", flag.display())).unwrap();
    for dst in [b.rootfs().join("evil.so"), marker.path().join("evil.so")] {
        let st = Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&dst)
            .arg(&src)
            .status()
            .unwrap();
        assert!(st.success());
    }
    std::fs::create_dir_all(b.rootfs().join("etc/ld.so.conf.d")).unwrap();
    std::fs::write(
        b.rootfs().join("etc/ld.so.conf"),
        "include /etc/ld.so.conf.d/*.conf\n/evil\n/proc/self/root\n",
    )
    .unwrap();
    std::fs::write(
        b.rootfs().join("etc/ld.so.conf.d/x.conf"),
        "/../../../../etc\n",
    )
    .unwrap();
    let o = b.run(Runtime::Runc);
    assert!(o.status.success(), "{}", text(&o));
    check_ldcache(out.path(), "/usr/lib/x86_64-linux-gnu");
    assert!(
        !flag.exists(),
        "the image's LD_PRELOAD ran in a process the hook started"
    );
}

/// Every hook entry gres-oci writes or ships, at each stage it names: the CDI spec's
/// createContainer `update-ldcache` hook (with the spec's mounts, as an engine applies them),
/// the hooks.d files (podman's and Sarus's) and the entry the plugin adds to a Slurm bundle.
/// The image's `LD_PRELOAD`, `LD_AUDIT` and `LD_LIBRARY_PATH` name its own libraries; none of
/// them may run in any process the runtime starts for those entries, with runc 1.1 (which
/// gives an entry without `env` the container's environment at createContainer) and crun.
#[test]
fn image_loader_variables_never_reach_hook_entries() {
    let node = setup();
    let trap = LoaderTrap::new();
    let control = tempfile::tempdir().unwrap();
    trap.self_test(control.path());

    // (what, stage, entry, extra bundle mounts)
    let mut entries: Vec<(String, String, serde_json::Value, Vec<serde_json::Value>)> = Vec::new();
    let cdi_dir = tempfile::tempdir().unwrap();
    let cdi_file = cdi_dir.path().join("spec.json");
    let o = Command::new(hook_bin())
        .arg(format!("-config={}", node.config().display()))
        .args(["cdi", "generate", "--output"])
        .arg(&cdi_file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let cdi: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cdi_file).unwrap()).unwrap();
    let edits = &cdi["containerEdits"];
    let mounts: Vec<serde_json::Value> = edits["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            serde_json::json!({"destination": m["containerPath"], "source": m["hostPath"],
                "type": "bind", "options": m["options"]})
        })
        .collect();
    let cdi_hooks = edits["hooks"].as_array().unwrap();
    assert!(!cdi_hooks.is_empty(), "{cdi}");
    for h in cdi_hooks {
        let mut entry = h.clone();
        let stage = entry.as_object_mut().unwrap().remove("hookName").unwrap();
        entries.push((
            "CDI spec".into(),
            stage.as_str().unwrap().to_owned(),
            entry,
            mounts.clone(),
        ));
    }
    for f in ["gres-oci-podman.json", "gres-oci.json"] {
        let file: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(repo().join("slurm-conf/hooks.d").join(f)).unwrap(),
        )
        .unwrap();
        let mut entry = file["hook"].clone();
        entry["path"] = serde_json::json!(hook_bin());
        for a in entry["args"].as_array_mut().unwrap() {
            if a.as_str().is_some_and(|s| s.starts_with("-config=")) {
                *a = serde_json::json!(format!("-config={}", node.config().display()));
            }
        }
        for stage in file["stages"].as_array().unwrap() {
            entries.push((
                format!("hooks.d/{f}"),
                stage.as_str().unwrap().to_owned(),
                entry.clone(),
                Vec::new(),
            ));
        }
    }
    // The plugin's entry for a Slurm 22.05 bundle (spank-plugin/src/spool.rs builds the same).
    entries.push((
        "plugin's bundle entry".into(),
        "prestart".into(),
        serde_json::json!({"path": hook_bin(),
            "args": [hook_bin(), format!("-config={}", node.config().display()), "prestart"],
            "env": gres_oci::HOOK_ENV}),
        Vec::new(),
    ));

    for rt in [Runtime::Runc, Runtime::Crun] {
        for (what, stage, entry, mounts) in &entries {
            let (mut b, out) = Case {
                node: &node,
                env: &["NVIDIA_VISIBLE_DEVICES=0"],
                readonly: false,
                debian: true,
            }
            .bundle();
            let env = trap.install(&b.rootfs());
            let spec_env = b.spec["process"]["env"].as_array_mut().unwrap();
            spec_env.extend(env.iter().map(|e| serde_json::json!(e)));
            b.spec["mounts"]
                .as_array_mut()
                .unwrap()
                .extend(mounts.clone());
            b.spec["hooks"] = serde_json::json!({ stage.as_str(): [entry] });
            b.write();
            let o = b.run(rt);
            let ctx = format!("{} {what} at {stage}", rt.name());
            assert!(o.status.success(), "{ctx}: {}", text(&o));
            let fired = trap.fired();
            assert!(
                fired.is_empty(),
                "{ctx}: the image's libraries ran on the host: {fired:?}"
            );
            if what == "CDI spec" {
                // The hook did run: the links and the linker cache are there.
                check_ldcache(out.path(), "/usr/lib/x86_64-linux-gnu");
            }
        }
    }
}

/// `outside-slurm = "deny"`: a container that no Slurm step started gets no GPU, whatever it
/// asks for, and says why.
#[test]
fn outside_slurm_deny_policy() {
    let node = setup();
    node.edit_config(|c| c.replace("[gres-oci]", "[gres-oci]\noutside-slurm = \"deny\""));
    let (b, _out) = Case {
        node: &node,
        env: &["NVIDIA_VISIBLE_DEVICES=all"],
        readonly: false,
        debian: true,
    }
    .bundle();
    let o = b.run(Runtime::Runc);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("in no Slurm job"),
        "{}",
        text(&o)
    );
    // The driver alone (no GPU) is still fine.
    let (seen, _out) = Case {
        node: &node,
        env: &["NVIDIA_VISIBLE_DEVICES=none"],
        readonly: false,
        debian: true,
    }
    .run(Runtime::Runc);
    assert!(seen.nodes().contains("nvidiactl"));
    assert!(!seen
        .nodes()
        .iter()
        .any(|n| n.len() > 6 && n[6..].parse::<u32>().is_ok()));
}

/// The linker cache is updated in-process from the image's own cache (keeping its entries),
/// and by the host's ldconfig when the image's cache is in a form that cannot be rewritten
/// faithfully. Either way the image's file on disk stays as it was.
#[test]
fn linker_cache_in_process_and_fallback() {
    let node = setup();
    node.edit_config(|c| c.replace("[gres-oci]", "[gres-oci]\nlog-level = \"debug\""));
    for garbage in [false, true] {
        let case = Case {
            node: &node,
            env: &["NVIDIA_VISIBLE_DEVICES=0"],
            readonly: false,
            debian: true,
        };
        let (b, out) = case.bundle();
        let libdir = b.rootfs().join("usr/lib/x86_64-linux-gnu");
        std::fs::create_dir_all(&libdir).unwrap();
        let src = out.path().join("i.c");
        std::fs::write(&src, "int image_lib(void) { return 1; }\n").unwrap();
        let st = Command::new("cc")
            .args(["-shared", "-fPIC", "-Wl,-soname,libimage.so.1", "-o"])
            .arg(libdir.join("libimage.so.1.0"))
            .arg(&src)
            .status()
            .unwrap();
        assert!(st.success());
        let st = Command::new("ldconfig")
            .arg("-r")
            .arg(b.rootfs())
            .status()
            .unwrap();
        assert!(st.success());
        if garbage {
            std::fs::write(
                b.rootfs().join("etc/ld.so.cache"),
                b"glibc-ld.so.cache9.9 not a cache",
            )
            .unwrap();
        }
        let before = std::fs::read(b.rootfs().join("etc/ld.so.cache")).unwrap();
        let o = b.run(Runtime::Runc);
        assert!(o.status.success(), "{}", text(&o));
        let cache = gres_oci::ldcache::LdCache::read(&out.path().join("ld.so.cache")).unwrap();
        let keys: BTreeSet<&str> = cache.entries.iter().map(|e| e.key.as_str()).collect();
        assert!(
            keys.contains("libcuda.so.1") && keys.contains("libnvidia-ml.so.1"),
            "{keys:?}"
        );
        assert!(
            keys.contains("libimage.so.1"),
            "the image's own libraries were dropped: {keys:?}"
        );
        assert_eq!(
            std::fs::read(b.rootfs().join("etc/ld.so.cache")).unwrap(),
            before,
            "image cache rewritten on disk"
        );
        let fell_back = node.log().contains("running ldconfig");
        assert_eq!(
            fell_back,
            garbage,
            "ldconfig fallback (garbage cache: {garbage}): {}",
            node.log()
        );
    }
}

/// Builds a real shared library with `soname` at `path` (ldconfig ignores non-ELF files).
fn shared_lib(path: &Path, soname: &str) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("l.c");
    std::fs::write(&src, "int lib_marker(void) { return 1; }\n").unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", &format!("-Wl,-soname,{soname}"), "-o"])
        .arg(path)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Image links that lead onto the bundle's bind mount of a host directory, or onto the
/// runtime's procfs, are refused with one line naming the path and the reason: nothing is
/// created in the host directory and nothing is read from it or from procfs.
#[test]
fn image_links_onto_other_mounts_are_refused() {
    let node = setup();
    let mut logged = 0;
    for rt in [Runtime::Runc, Runtime::Crun] {
        // (debian layout, image link, its target, the message expected)
        let cases: [(bool, &str, &str, &str); 4] = [
            (
                false,
                "usr/lib64",
                "/mnt/shm",
                "on another mount than the container's root filesystem",
            ),
            (
                true,
                "etc/ld.so.cache",
                "/mnt/shm/ld.so.cache",
                "on another mount than the container's root filesystem",
            ),
            (true, "etc/ld.so.cache", "/proc/self/mountinfo", "on procfs"),
            // Reading /proc/kmsg would drain the host's kernel log: the path is refused
            // while resolving it, before any open of the file itself.
            (true, "etc/ld.so.cache", "/proc/kmsg", "on procfs"),
        ];
        for (debian, link, target, why) in cases {
            let shm = tempfile::Builder::new()
                .prefix("gres-oci-shm")
                .tempdir()
                .unwrap();
            // A valid linker cache in the host directory, naming a library only the host has.
            let hostroot = tempfile::tempdir().unwrap();
            shared_lib(
                &hostroot.path().join("usr/lib64/libhostonly.so.1"),
                "libhostonly.so.1",
            );
            std::fs::create_dir_all(hostroot.path().join("etc")).unwrap();
            std::fs::write(hostroot.path().join("etc/ld.so.conf"), "/usr/lib64\n").unwrap();
            let st = Command::new("ldconfig")
                .arg("-r")
                .arg(hostroot.path())
                .status()
                .unwrap();
            assert!(st.success());
            std::fs::copy(
                hostroot.path().join("etc/ld.so.cache"),
                shm.path().join("ld.so.cache"),
            )
            .unwrap();
            let before = tree(shm.path());
            let (mut b, _out) = Case {
                node: &node,
                env: &["NVIDIA_VISIBLE_DEVICES=0"],
                readonly: false,
                debian,
            }
            .bundle();
            b.spec["mounts"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({
                    "destination": "/mnt/shm", "type": "bind",
                    "source": shm.path(), "options": ["rbind", "rw"]
                }));
            b.write();
            std::fs::create_dir_all(b.rootfs().join("mnt/shm")).unwrap();
            let l = b.rootfs().join(link);
            std::fs::create_dir_all(l.parent().unwrap()).unwrap();
            let _ = std::fs::remove_file(&l);
            std::os::unix::fs::symlink(target, &l).unwrap();
            let o = b.run(rt);
            let what = format!("{} {link} -> {target}", rt.name());
            assert!(!o.status.success(), "{what}: {}", text(&o));
            // One line naming the path and the reason: on stderr (runc shows a failing
            // hook's stderr, crun only its exit code) and in the hook's log.
            let shown = format!("/{link}");
            let says = |l: &str| l.contains(&shown) && l.contains(why) && l.contains("refusing to");
            if rt == Runtime::Runc {
                let err = String::from_utf8_lossy(&o.stderr);
                assert!(
                    err.lines().any(|l| l.contains("gres-oci-hook:") && says(l)),
                    "{what}: {}",
                    text(&o)
                );
            }
            let log = node.log();
            let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
            assert_eq!(errors.len(), logged + 1, "{what}: {log}");
            assert!(says(errors[logged]), "{what}: {log}");
            logged += 1;
            assert_eq!(tree(shm.path()), before, "{what}: host directory changed");
        }
    }
}

/// The fallback `ldconfig` (forced by an image whose /etc/ld.so.cache is a FIFO) runs without
/// the capabilities the image could abuse: an image `ld.so.conf` naming `/proc/1/root/<host
/// dir>` (the runtime's init, whose root is still the host's) gets nothing from the host,
/// while the cache still gains the driver's and keeps the image's libraries.
#[test]
fn linker_cache_helper_is_confined() {
    let node = setup();
    node.edit_config(|c| c.replace("[gres-oci]", "[gres-oci]\nlog-level = \"debug\""));
    let host = tempfile::Builder::new()
        .prefix("gres-oci-hostlib")
        .tempdir()
        .unwrap();
    shared_lib(&host.path().join("libhostonly.so.1"), "libhostonly.so.1");
    for rt in [Runtime::Runc, Runtime::Crun] {
        let (b, out) = Case {
            node: &node,
            env: &["NVIDIA_VISIBLE_DEVICES=0"],
            readonly: false,
            debian: true,
        }
        .bundle();
        shared_lib(
            &b.rootfs().join("usr/lib/x86_64-linux-gnu/libimage.so.1.0"),
            "libimage.so.1",
        );
        std::fs::write(
            b.rootfs().join("etc/ld.so.conf"),
            format!(
                "/usr/lib/x86_64-linux-gnu\n/proc/1/root{}\n",
                host.path().display()
            ),
        )
        .unwrap();
        let cache = b.rootfs().join("etc/ld.so.cache");
        let st = Command::new("mkfifo").arg(&cache).status().unwrap();
        assert!(st.success());
        let o = b.run(rt);
        assert!(o.status.success(), "{}: {}", rt.name(), text(&o));
        let cache = gres_oci::ldcache::LdCache::read(&out.path().join("ld.so.cache")).unwrap();
        let keys: BTreeSet<&str> = cache.entries.iter().map(|e| e.key.as_str()).collect();
        assert!(
            keys.contains("libcuda.so.1") && keys.contains("libimage.so.1"),
            "{}: {keys:?}",
            rt.name()
        );
        assert!(
            !keys.contains("libhostonly.so.1"),
            "{}: ldconfig read a host directory through /proc/1/root: {keys:?}",
            rt.name()
        );
        assert!(node.log().contains("running ldconfig"), "{}", node.log());
    }
}

/// Fabric devices (NVIDIA's feature-gated ones): each `NVIDIA_<NAME>=enabled` gives the
/// container that kind's nodes from the dev root, with device-cgroup rules that let it open
/// them; other values give nothing; GDS brings the host's cuFile config; a site default gives
/// every GPU container its kind.
#[test]
fn fabric_devices_on_request() {
    const FABRIC_PROBE: &str = r#"
for n in /dev/gdrdrv /dev/infiniband/* /dev/nvidia-fs* /dev/nvidia-nvswitch*; do
  [ -c "$n" ] || continue
  if cat "$n" </dev/null >/dev/null 2>/dev/shm/err; then echo "fabric $n ok"; else echo "fabric $n $(cat /dev/shm/err)"; fi
done
[ -f /etc/cufile.json ] && echo "cufile $(cat /etc/cufile.json)"
echo probe-done
"#;
    let node = setup();
    // The nodes a fabric-equipped node has, on a dynamic major, and GDS's host config.
    let dev = node.dev();
    std::fs::create_dir_all(dev.join("infiniband")).unwrap();
    for (n, name) in [
        "gdrdrv",
        "infiniband/uverbs0",
        "infiniband/uverbs1",
        "infiniband/rdma_cm",
        "infiniband/umad0",
        "nvidia-fs0",
        "nvidia-nvswitch0",
        "nvidia-nvswitchctl",
    ]
    .into_iter()
    .enumerate()
    {
        let o = std::process::Command::new("mknod")
            .args(["-m", "666"])
            .arg(dev.join(name))
            .args(["c", "240", &n.to_string()])
            .output()
            .unwrap();
        assert!(o.status.success(), "mknod {name}: {}", text(&o));
    }
    let driver = node.path().join("driver");
    std::fs::write(driver.join("etc/cufile.json"), "{\"site\": 1}\n").unwrap();
    let run = |env: &[&str], rt: Runtime, config: &Path| {
        let mut e = vec!["NVIDIA_VISIBLE_DEVICES=0"];
        e.extend(env);
        let b = Bundle::new(BundleOpts {
            env: &e,
            script: FABRIC_PROBE,
            hook_config: Some(config),
            ..BundleOpts::default()
        });
        let o = b.run(rt);
        assert!(o.status.success(), "{} {env:?}: {}", rt.name(), text(&o));
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(s.contains("probe-done"), "{}", text(&o));
        let mut seen: Vec<String> = s
            .lines()
            .filter(|l| l.starts_with("fabric ") || l.starts_with("cufile "))
            .map(str::to_owned)
            .collect();
        seen.sort();
        seen
    };
    let enxio =
        |n: &str| format!("fabric /dev/{n} cat: can't open '/dev/{n}': No such device or address");
    for rt in [Runtime::Runc, Runtime::Crun] {
        let cfg = node.config();
        assert!(run(&[], rt, &cfg).is_empty());
        assert!(run(&["NVIDIA_MOFED=true", "NVIDIA_GDS=1"], rt, &cfg).is_empty());
        assert_eq!(
            run(
                &["NVIDIA_MOFED=enabled", "NVIDIA_GDRCOPY=enabled"],
                rt,
                &cfg
            ),
            [
                enxio("gdrdrv"),
                enxio("infiniband/rdma_cm"),
                enxio("infiniband/uverbs0"),
                enxio("infiniband/uverbs1"),
            ],
            "{}",
            rt.name()
        );
        assert_eq!(
            run(&["NVIDIA_GDS=enabled", "NVIDIA_NVSWITCH=enabled"], rt, &cfg),
            [
                "cufile {\"site\": 1}".to_string(),
                enxio("nvidia-fs0"),
                enxio("nvidia-nvswitch0"),
                enxio("nvidia-nvswitchctl"),
            ],
            "{}",
            rt.name()
        );
    }
    // The site's default: every GPU container gets the HCAs.
    let site = node.path().join("site.toml");
    let text_cfg = std::fs::read_to_string(node.config()).unwrap().replacen(
        "[gres-oci]\n",
        "[gres-oci]\nfabric-devices = [\"mofed\"]\n",
        1,
    );
    std::fs::write(&site, text_cfg).unwrap();
    assert_eq!(
        run(&[], Runtime::Runc, &site),
        [
            enxio("infiniband/rdma_cm"),
            enxio("infiniband/uverbs0"),
            enxio("infiniband/uverbs1"),
        ]
    );
}

/// IMEX channels: `NVIDIA_IMEX_CHANNELS` gives the container the channel nodes of the dev root
/// on the major `/proc/devices` (under the proc root) names, with cgroup rules; a node on
/// another major is no channel; a channel the node lacks, or a malformed value, stops the
/// container with one line.
#[test]
fn imex_channels_on_request() {
    const IMEX_PROBE: &str = r#"
for n in /dev/nvidia-caps-imex-channels/*; do
  [ -c "$n" ] || continue
  if cat "$n" </dev/null >/dev/null 2>/dev/shm/err; then echo "chan $n ok"; else echo "chan $n $(cat /dev/shm/err)"; fi
done
echo probe-done
"#;
    let node = setup();
    let dir = node.dev().join("nvidia-caps-imex-channels");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, major, minor) in [
        ("channel0", 234, 0),
        ("channel3", 234, 3),
        ("channel9", 240, 9),
    ] {
        let o = std::process::Command::new("mknod")
            .args(["-m", "666"])
            .arg(dir.join(name))
            .args(["c", &major.to_string(), &minor.to_string()])
            .output()
            .unwrap();
        assert!(o.status.success(), "mknod {name}: {}", text(&o));
    }
    std::fs::write(
        node.path().join("proc/devices"),
        "Character devices:\n195 nvidia-frontend\n234 nvidia-caps-imex-channels\n\nBlock devices:\n  7 loop\n",
    )
    .unwrap();
    let run = |value: &str, rt: Runtime| {
        let env = [
            "NVIDIA_VISIBLE_DEVICES=0".to_string(),
            format!("NVIDIA_IMEX_CHANNELS={value}"),
        ];
        let env: Vec<&str> = env.iter().map(String::as_str).collect();
        let cfg = node.config();
        let b = Bundle::new(BundleOpts {
            env: &env,
            script: IMEX_PROBE,
            hook_config: Some(&cfg),
            ..BundleOpts::default()
        });
        let o = b.run(rt);
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        let mut seen: Vec<String> = s
            .lines()
            .filter_map(|l| l.strip_prefix("chan /dev/nvidia-caps-imex-channels/"))
            .map(str::to_owned)
            .collect();
        seen.sort();
        (o, seen)
    };
    let enxio = |c: &str| {
        format!(
            "{c} cat: can't open '/dev/nvidia-caps-imex-channels/{c}': No such device or address"
        )
    };
    for rt in [Runtime::Runc, Runtime::Crun] {
        let (o, seen) = run("all", rt);
        assert!(o.status.success(), "{}: {}", rt.name(), text(&o));
        assert_eq!(
            seen,
            [enxio("channel0"), enxio("channel3")],
            "{}",
            rt.name()
        );
        let (o, seen) = run("channel3", rt);
        assert!(o.status.success(), "{}: {}", rt.name(), text(&o));
        assert_eq!(seen, [enxio("channel3")], "{}", rt.name());
        for (value, why) in [
            ("9", "IMEX channel 9 is not on this node"),
            ("0;rm", "NVIDIA_IMEX_CHANNELS=\"0;rm\""),
        ] {
            let (o, seen) = run(value, rt);
            assert!(!o.status.success(), "{} {value}: {}", rt.name(), text(&o));
            assert!(seen.is_empty());
            assert!(
                node.log().contains(why),
                "{} {value}: {}",
                rt.name(),
                node.log()
            );
        }
    }
}
