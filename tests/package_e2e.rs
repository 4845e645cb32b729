//! The Debian package: built from the workspace with `make deb`, installed with dpkg into a
//! scratch root, where the files must land in their FHS places and the hook must run.

mod support;

use std::process::Command;

use support::*;

#[test]
fn deb_installs_into_a_scratch_root_and_runs() {
    require_root();
    let repo = repo();
    // The tests run on the debug build the test command made; packaging it avoids a second
    // (release) build here.
    let profile = target_dir()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let out = Command::new("make")
        .arg("-C")
        .arg(&repo)
        .arg("deb")
        .arg(format!("PROFILE={profile}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "make deb: {}", text(&out));
    let deb = std::fs::read_dir(repo.join("target"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("make deb wrote no .deb");

    let info = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .args(["Package", "Depends"])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("Package: gres-oci"), "{info}");
    assert!(
        info.contains("slurmd (>= 22.05)"),
        "the plugin is tied to the Slurm it was built for: {info}"
    );

    // A scratch root with an empty dpkg database.
    let root = tempfile::tempdir().unwrap();
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.path().join(d)).unwrap();
    }
    std::fs::write(root.path().join("var/lib/dpkg/status"), "").unwrap();
    let o = Command::new("dpkg")
        .arg(format!("--root={}", root.path().display()))
        .args(["--force-depends", "--force-script-chrootless", "-i"])
        .arg(&deb)
        .output()
        .unwrap();
    assert!(o.status.success(), "dpkg -i: {}", text(&o));

    let plugin_dir = Command::new(repo.join("scripts/slurm-plugin-dir"))
        .output()
        .unwrap();
    let plugin_dir = String::from_utf8_lossy(&plugin_dir.stdout)
        .trim()
        .to_owned();
    for f in [
        "usr/bin/gres-oci-hook".to_string(),
        format!("{}/gres-oci.so", plugin_dir.trim_start_matches('/')),
        "etc/gres-oci/config.toml".into(),
        "usr/share/gres-oci/hooks.d/gres-oci.json".into(),
        "usr/share/gres-oci/hooks.d/gres-oci-podman.json".into(),
        "usr/share/doc/gres-oci/README.md".into(),
    ] {
        assert!(root.path().join(&f).exists(), "{f} not installed");
    }
    let hooks =
        std::fs::read_to_string(root.path().join("usr/share/gres-oci/hooks.d/gres-oci.json"))
            .unwrap();
    assert!(hooks.contains("\"/usr/bin/gres-oci-hook\""), "{hooks}");
    let v = Command::new(root.path().join("usr/bin/gres-oci-hook"))
        .arg("-version")
        .output()
        .unwrap();
    let v = String::from_utf8_lossy(&v.stdout);
    assert!(
        v.starts_with("gres-oci-hook ") && v.contains("Slurm 22.05"),
        "{v}"
    );
    // The shipped config loads with the installed hook.
    let o = Command::new(root.path().join("usr/bin/gres-oci-hook"))
        .arg(format!(
            "-config={}",
            root.path().join("etc/gres-oci/config.toml").display()
        ))
        .arg("poststop")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let _ = std::fs::remove_file(&deb);
}
