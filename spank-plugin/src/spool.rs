//! The Slurm 22.05 `srun --container` workaround: slurmstepd writes the runtime's config.json
//! into its spool directory (`$SlurmdSpoolDir/oci-jobJJJJJ-SSSSS/`) before the GPU variables
//! exist, and `spank_setenv` never reaches it. The plugin edits that copy before the runtime
//! starts: environment entries, an annotation, optionally our prestart hook and, under
//! `ConstrainDevices`, device rules that let runc stay inside the task's cgroup.
//!
//! [`patch`] is pure (JSON in, JSON out); [`patch_dir`] adds the file handling: it checks the
//! file really is Slurm's copy for this step (never a user's bundle), then replaces it
//! atomically (temporary file in the same directory, then rename), keeping its mode and, when
//! running as root, its owner.
//!
//! # ConstrainDevices and runc
//!
//! runc nests the container's cgroup under the task's and always writes its default device
//! rules, including `c *:* m`; the v1 devices controller refuses any allow rule overlapping the
//! parent's deny exceptions (the GPUs the step did not get), so the container fails to start.
//! Moving the container out of the task cgroup would make it escape Slurm's tracking and
//! limits, so instead the bundle's `linux.resources.devices` becomes `[{allow, rwm}]`: runc
//! then writes no device rule and the container inherits exactly the task cgroup's device
//! limits (runc 1.1.5 tested). That widens the container's device access from runc's default
//! list to whatever the task may open, so `CAP_MKNOD` is also removed from every capability set:
//! the container can only use the nodes runc creates, those the hook injects, and the ones its
//! rootfs already holds, and the task cgroup still denies the GPUs of other steps.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// The annotation that names the step's GPUs for tools that read annotations, not env.
pub const ANNOTATION: &str = "org.gres-oci.gpus";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{}: cannot read", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not valid JSON", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: {what} is not {expected}", path.display())]
    Shape {
        path: PathBuf,
        what: &'static str,
        expected: &'static str,
    },
    #[error("{}: cannot write", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A prestart hook entry for the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub path: PathBuf,
    pub config: Option<PathBuf>,
}

/// What to change in the runtime's config.json.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patch {
    /// Entries to set in `process.env`; earlier entries with these names are removed.
    pub set_env: Vec<(String, String)>,
    /// Names to remove from `process.env` (e.g. a stale `CUDA_VISIBLE_DEVICES` srun carried).
    pub unset_env: Vec<String>,
    /// The value of [`ANNOTATION`].
    pub annotation: Option<String>,
    /// Added to `hooks.prestart` unless a prestart or createRuntime hook already runs it.
    pub hook: Option<Hook>,
    /// Replace device rules so runc writes none (see the module doc).
    pub inherit_devices: bool,
}

/// What [`patch`] changed, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub env: usize,
    pub hook_added: bool,
    pub devices_inherited: bool,
}

fn shape(path: &Path, what: &'static str, expected: &'static str) -> SpoolError {
    SpoolError::Shape {
        path: path.to_owned(),
        what,
        expected,
    }
}

/// Whether `config` is Slurm's copy for job `job_id`: slurmstepd appends the step's launch
/// environment, which always holds `SLURM_JOB_ID`. A user's own bundle config never does
/// unless it was copied from a spool directory, which the caller rules out by location.
pub fn is_slurm_copy(config: &Value, job_id: u32) -> bool {
    let want = format!("SLURM_JOB_ID={job_id}");
    config
        .pointer("/process/env")
        .and_then(Value::as_array)
        .is_some_and(|env| env.iter().any(|e| e.as_str() == Some(want.as_str())))
}

/// Applies `p` to a parsed config.json. `path` only names the file in errors.
///
/// # Errors
/// A config whose `process`, `process.env`, `hooks` or `annotations` has the wrong JSON type.
pub fn patch(config: &mut Value, p: &Patch, path: &Path) -> Result<Changes, SpoolError> {
    let mut changes = Changes::default();
    let root = config
        .as_object_mut()
        .ok_or_else(|| shape(path, "the document", "an object"))?;

    let process = root
        .entry("process")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| shape(path, "process", "an object"))?;
    let env = process
        .entry("env")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or_else(|| shape(path, "process.env", "an array"))?;
    let drop: Vec<&str> = p
        .set_env
        .iter()
        .map(|(k, _)| k.as_str())
        .chain(p.unset_env.iter().map(String::as_str))
        .collect();
    env.retain(|e| {
        let name = e.as_str().map(|s| s.split_once('=').map_or(s, |(k, _)| k));
        !name.is_some_and(|n| drop.contains(&n))
    });
    for (k, v) in &p.set_env {
        env.push(Value::String(format!("{k}={v}")));
        changes.env += 1;
    }
    if p.inherit_devices {
        if let Some(caps) = process
            .get_mut("capabilities")
            .and_then(Value::as_object_mut)
        {
            for set in caps.values_mut() {
                if let Some(list) = set.as_array_mut() {
                    list.retain(|c| c.as_str() != Some("CAP_MKNOD"));
                }
            }
        }
    }

    if let Some(a) = &p.annotation {
        root.entry("annotations")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| shape(path, "annotations", "an object"))?
            .insert(ANNOTATION.to_owned(), Value::String(a.clone()));
    }

    if let Some(h) = &p.hook {
        let hooks = root
            .entry("hooks")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| shape(path, "hooks", "an object"))?;
        let runs_it = |stage: &str| {
            hooks
                .get(stage)
                .and_then(Value::as_array)
                .is_some_and(|l| l.iter().any(|e| same_hook(e, &h.path)))
        };
        if !runs_it("prestart") && !runs_it("createRuntime") {
            let mut args = vec![h.path.display().to_string()];
            if let Some(c) = &h.config {
                args.push(format!("-config={}", c.display()));
            }
            args.push("prestart".to_owned());
            let entry = json!({
                "path": h.path.display().to_string(),
                "args": args,
                // Never the container's environment, whatever stage a runtime runs it at.
                "env": gres_oci::HOOK_ENV,
            });
            hooks
                .entry("prestart")
                .or_insert_with(|| json!([]))
                .as_array_mut()
                .ok_or_else(|| shape(path, "hooks.prestart", "an array"))?
                .push(entry);
            changes.hook_added = true;
        }
    }

    if p.inherit_devices {
        let linux = root
            .entry("linux")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| shape(path, "linux", "an object"))?;
        let resources = linux
            .entry("resources")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| shape(path, "linux.resources", "an object"))?;
        resources.insert("devices".into(), json!([{"allow": true, "access": "rwm"}]));
        changes.devices_inherited = true;
    }
    Ok(changes)
}

/// A hook entry runs `hook` if its path is the same file or has the same file name (a copy of
/// gres-oci's hook installed elsewhere would inject twice).
fn same_hook(entry: &Value, hook: &Path) -> bool {
    let Some(p) = entry.get("path").and_then(Value::as_str) else {
        return false;
    };
    let p = Path::new(p);
    p == hook || (p.file_name().is_some() && p.file_name() == hook.file_name())
}

/// Reads `dir/config.json`, and if it is Slurm's copy for `job_id`, patches it and replaces it
/// atomically; also appends the env entries to `dir/environment` (oci.conf `CreateEnvFile`)
/// when that file exists. `Ok(None)`: not Slurm's copy, nothing done.
///
/// # Errors
/// Unreadable or malformed config, or a failed write, naming the file.
pub fn patch_dir(dir: &Path, job_id: u32, p: &Patch) -> Result<Option<Changes>, SpoolError> {
    let path = dir.join("config.json");
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SpoolError::Read { path, source }),
    };
    let mut config: Value = serde_json::from_slice(&text).map_err(|source| SpoolError::Json {
        path: path.clone(),
        source,
    })?;
    if !is_slurm_copy(&config, job_id) {
        return Ok(None);
    }
    let changes = patch(&mut config, p, &path)?;
    let mut out = serde_json::to_vec_pretty(&config).map_err(|source| SpoolError::Json {
        path: path.clone(),
        source,
    })?;
    out.push(b'\n');
    replace_atomically(&path, &out)?;

    let envfile = dir.join("environment");
    if envfile.exists() && !p.set_env.is_empty() {
        let mut body = std::fs::read(&envfile).map_err(|source| SpoolError::Read {
            path: envfile.clone(),
            source,
        })?;
        for (k, v) in &p.set_env {
            body.extend_from_slice(format!("{k}={v}").as_bytes());
            body.push(0);
        }
        replace_atomically(&envfile, &body)?;
    }
    Ok(Some(changes))
}

/// Writes `bytes` to a temporary file next to `path` and renames it over `path`, keeping the
/// old file's permission bits and (as root) its owner. A reader sees the old or the new file,
/// never a partial one.
///
/// # Errors
/// Any failed step, naming `path`; the temporary file is removed on failure.
pub fn replace_atomically(path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let werr = |source| SpoolError::Write {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(werr)?;
    // SAFETY: geteuid has no preconditions.
    let owner = (unsafe { libc::geteuid() } == 0).then(|| (meta.uid(), meta.gid()));
    gres_oci::atomic::replace(path, bytes, meta.mode() & 0o7777, owner).map_err(werr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slurm_config() -> Value {
        json!({
            "ociVersion": "1.0.2-dev",
            "process": {
                "args": ["env"],
                "env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=all", "CUDA_VISIBLE_DEVICES=0,1,2", "SLURM_JOB_ID=42"],
                "capabilities": {"bounding": ["CAP_KILL", "CAP_MKNOD"], "effective": ["CAP_MKNOD"]}
            },
            "root": {"path": "/b/rootfs"},
            "hooks": {"poststop": [{"path": "/bin/true"}]},
            "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}}
        })
    }

    fn full_patch() -> Patch {
        Patch {
            set_env: vec![
                ("GRES_OCI_GPUS".into(), "GPU-a".into()),
                ("NVIDIA_VISIBLE_DEVICES".into(), "GPU-a".into()),
                ("CUDA_VISIBLE_DEVICES".into(), "0".into()),
            ],
            unset_env: vec![],
            annotation: Some("GPU-a".into()),
            hook: Some(Hook {
                path: "/usr/libexec/gres-oci-hook".into(),
                config: Some("/etc/gres-oci/config.toml".into()),
            }),
            inherit_devices: true,
        }
    }

    #[test]
    fn patch_sets_everything_once() {
        let mut c = slurm_config();
        let ch = patch(&mut c, &full_patch(), Path::new("/s/config.json")).unwrap();
        assert_eq!(
            ch,
            Changes {
                env: 3,
                hook_added: true,
                devices_inherited: true
            }
        );
        let env: Vec<&str> = c["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            env,
            vec![
                "PATH=/bin",
                "SLURM_JOB_ID=42",
                "GRES_OCI_GPUS=GPU-a",
                "NVIDIA_VISIBLE_DEVICES=GPU-a",
                "CUDA_VISIBLE_DEVICES=0"
            ]
        );
        assert_eq!(c["annotations"][ANNOTATION], "GPU-a");
        assert_eq!(
            c["hooks"]["prestart"][0]["args"],
            json!([
                "/usr/libexec/gres-oci-hook",
                "-config=/etc/gres-oci/config.toml",
                "prestart"
            ])
        );
        assert_eq!(c["hooks"]["prestart"][0]["env"], json!(gres_oci::HOOK_ENV));
        assert_eq!(c["hooks"]["poststop"][0]["path"], "/bin/true");
        assert_eq!(
            c["linux"]["resources"]["devices"],
            json!([{"allow": true, "access": "rwm"}])
        );
        assert_eq!(
            c["process"]["capabilities"]["bounding"],
            json!(["CAP_KILL"])
        );
        assert_eq!(c["process"]["capabilities"]["effective"], json!([]));
        // A second pass adds no second hook.
        let ch = patch(&mut c, &full_patch(), Path::new("/s/config.json")).unwrap();
        assert!(!ch.hook_added);
        assert_eq!(c["hooks"]["prestart"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn existing_hook_is_kept() {
        let mut c = slurm_config();
        c["hooks"]["createRuntime"] =
            json!([{"path": "/opt/x/gres-oci-hook", "args": ["gres-oci-hook", "prestart"]}]);
        let ch = patch(&mut c, &full_patch(), Path::new("/s/config.json")).unwrap();
        assert!(!ch.hook_added);
        assert!(c["hooks"].get("prestart").is_none());
    }

    #[test]
    fn devices_untouched_unless_asked() {
        let mut c = slurm_config();
        let p = Patch {
            inherit_devices: false,
            unset_env: vec!["CUDA_VISIBLE_DEVICES".into()],
            ..Patch::default()
        };
        patch(&mut c, &p, Path::new("/s/config.json")).unwrap();
        assert_eq!(c["linux"]["resources"]["devices"][0]["allow"], false);
        assert_eq!(
            c["process"]["capabilities"]["bounding"],
            json!(["CAP_KILL", "CAP_MKNOD"])
        );
        assert!(!c["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().starts_with("CUDA_")));
    }

    #[test]
    fn bad_shapes_are_named() {
        let mut c = json!({"process": {"env": "x"}});
        let e = patch(&mut c, &full_patch(), Path::new("/s/config.json"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "/s/config.json: process.env is not an array");
    }

    #[test]
    fn patch_dir_only_touches_slurm_copies() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("config.json");
        let mut user = slurm_config();
        user["process"]["env"] = json!(["PATH=/bin"]);
        std::fs::write(&path, serde_json::to_vec(&user).unwrap()).unwrap();
        assert!(patch_dir(d.path(), 42, &full_patch()).unwrap().is_none());

        std::fs::write(&path, serde_json::to_vec(&slurm_config()).unwrap()).unwrap();
        std::fs::set_permissions(
            &path,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o750),
        )
        .unwrap();
        std::fs::write(d.path().join("environment"), b"A=b\0").unwrap();
        assert!(patch_dir(d.path(), 7, &full_patch()).unwrap().is_none());
        let ch = patch_dir(d.path(), 42, &full_patch()).unwrap().unwrap();
        assert!(ch.hook_added);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o750);
        let c: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(c["annotations"][ANNOTATION], "GPU-a");
        let envfile = std::fs::read(d.path().join("environment")).unwrap();
        assert!(envfile.starts_with(b"A=b\0GRES_OCI_GPUS=GPU-a\0"));
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
        // A missing config is not an error: nothing to patch.
        assert!(patch_dir(&d.path().join("nope"), 42, &full_patch())
            .unwrap()
            .is_none());
        std::fs::write(&path, b"{not json").unwrap();
        let e = patch_dir(d.path(), 42, &full_patch())
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.json: not valid JSON"), "{e}");
    }
}
