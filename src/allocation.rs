//! Which GPUs a container may have. The SPANK plugin records each step's allocation as root in
//! a root-only state directory; the hook finds the container's step from the process tree
//! (root-owned `slurmstepd` ancestors), never from the container's environment, which the
//! user controls. Reading takes the proc root and state dir as parameters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::request::PhysicalId;

/// What the plugin writes for a step (`<state-dir>/<job>.<step>.json`) or a task
/// (`<job>.<step>.task<T>.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub job: u32,
    /// `0`, `1`, … or `batch`, `extern`, `interactive`, as slurmstepd names it.
    pub step: String,
    /// The slurmstepd that owns the step; a record whose stepd is gone is stale.
    pub stepd_pid: i32,
    /// For a task record, the task's pid (the direct child of slurmstepd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_pid: Option<i32>,
    /// The GPUs, as `PhysicalId` strings (`GPU-…`, PCI bus id, `minor:N`).
    pub gpus: Vec<String>,
}

impl Record {
    /// The file name for this record: per step, or per task keyed by the task's pid.
    pub fn file_name(&self) -> String {
        match self.task_pid {
            None => format!("{}.{}.json", self.job, self.step),
            Some(p) => format!("{}.{}.task{p}.json", self.job, self.step),
        }
    }

    /// # Errors
    /// A GPU entry that is not a valid physical id.
    pub fn physical(&self) -> Result<Vec<PhysicalId>, crate::request::RequestError> {
        self.gpus.iter().map(|g| PhysicalId::parse(g)).collect()
    }
}

/// The Slurm step a process runs in, as its root-owned ancestors show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRef {
    pub job: u32,
    pub step: String,
    pub stepd_pid: i32,
    /// The ancestor just below slurmstepd: the task process.
    pub task_pid: Option<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum AllocationError {
    #[error("{path}: cannot read allocation record")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: malformed allocation record: {message}")]
    Format { path: PathBuf, message: String },
    #[error("container is in Slurm job {job} step {step}, but no gres-oci allocation is recorded for it in {dir} (is the SPANK plugin loaded on this node?)")]
    NoRecord {
        job: u32,
        step: String,
        dir: PathBuf,
    },
    #[error("{dir}: the state directory must be a directory owned by root and closed to others")]
    UnsafeDir { dir: PathBuf },
}

/// The fields of `/proc/<pid>/stat` after the command name: the name may contain spaces and
/// parentheses, so parse from the last `)`.
fn ppid(proc_root: &Path, pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn real_uid(proc_root: &Path, pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `slurmstepd: [145.0]` → (145, "0"); `[145.batch]` → (145, "batch").
pub fn parse_stepd_title(cmdline: &[u8]) -> Option<(u32, String)> {
    let text = String::from_utf8_lossy(cmdline);
    let title = text.split('\0').next()?;
    let inner = title.strip_prefix("slurmstepd: [")?.strip_suffix(']')?;
    let (job, step) = inner.split_once('.')?;
    let step_ok = !step.is_empty() && step.bytes().all(|b| b.is_ascii_alphanumeric());
    step_ok.then_some(())?;
    Some((job.parse().ok()?, step.to_owned()))
}

/// Walks up from `pid` to the nearest ancestor that is a root-owned `slurmstepd`. `None` when
/// the process is not in a Slurm step (or its chain cannot be read).
pub fn find_step(proc_root: &Path, pid: i32) -> Option<StepRef> {
    let mut below: Option<i32> = None;
    let mut cur = pid;
    // Bounded: a pid chain is short, and a crafted /proc tree must not loop us forever.
    for _ in 0..128 {
        let dir = proc_root.join(cur.to_string());
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end() == "slurmstepd" && real_uid(proc_root, cur) == Some(0) {
            let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
            let (job, step) = parse_stepd_title(&cmdline)?;
            return Some(StepRef {
                job,
                step,
                stepd_pid: cur,
                task_pid: below,
            });
        }
        let parent = ppid(proc_root, cur)?;
        if parent <= 1 || parent == cur {
            return None;
        }
        below = Some(cur);
        cur = parent;
    }
    None
}

fn read_record(path: &Path) -> Result<Option<Record>, AllocationError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AllocationError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| AllocationError::Format {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

/// The state directory must be root's alone, or a user could plant records.
fn check_dir(dir: &Path) -> Result<(), AllocationError> {
    use std::os::unix::fs::MetadataExt;
    let ok = std::fs::symlink_metadata(dir)
        .map(|m| m.is_dir() && m.uid() == 0 && m.mode() & 0o022 == 0)
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(AllocationError::UnsafeDir {
            dir: dir.to_owned(),
        })
    }
}

/// The GPUs the step (or, when recorded, the task) of `step` may use. Records whose
/// slurmstepd pid differs from the live one are stale and ignored.
///
/// # Errors
/// An unsafe state dir, an unreadable or malformed record, or no record for a live step.
pub fn allowed_gpus(state_dir: &Path, step: &StepRef) -> Result<Vec<PhysicalId>, AllocationError> {
    check_dir(state_dir)?;
    let fresh =
        |r: &Record| r.job == step.job && r.step == step.step && r.stepd_pid == step.stepd_pid;
    if let Some(task) = step.task_pid {
        let path = state_dir.join(format!("{}.{}.task{task}.json", step.job, step.step));
        // Written by the plugin in task_init_privileged, in the task process itself.
        if let Some(r) = read_record(&path)?.filter(|r| fresh(r) && r.task_pid == Some(task)) {
            return to_ids(&path, &r);
        }
    }
    let path = state_dir.join(format!("{}.{}.json", step.job, step.step));
    match read_record(&path)?.filter(fresh) {
        Some(r) => to_ids(&path, &r),
        None => Err(AllocationError::NoRecord {
            job: step.job,
            step: step.step.clone(),
            dir: state_dir.to_owned(),
        }),
    }
}

fn to_ids(path: &Path, r: &Record) -> Result<Vec<PhysicalId>, AllocationError> {
    r.physical().map_err(|e| AllocationError::Format {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Writes `record` into `state_dir` atomically (temp file + rename, so the hook never reads
/// half a record), creating the directory root-only if needed.
///
/// # Errors
/// The directory cannot be made or is unsafe, or the write fails.
pub fn write_record(state_dir: &Path, record: &Record) -> Result<(), AllocationError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |source| AllocationError::Read {
        path: state_dir.to_owned(),
        source,
    };
    if !state_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io)?;
    }
    check_dir(state_dir)?;
    let path = state_dir.join(record.file_name());
    let tmp = state_dir.join(format!(".{}.{}", record.file_name(), std::process::id()));
    let bytes = serde_json::to_vec(record).map_err(|e| AllocationError::Format {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        std::io::Write::write_all(&mut f, &bytes)?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        AllocationError::Read { path, source }
    })
}

/// Removes every record of `job`.`step` owned by `stepd_pid` (the step is ending).
pub fn remove_step(state_dir: &Path, job: u32, step: &str, stepd_pid: i32) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    let prefix = format!("{job}.{step}.");
    for e in entries.flatten() {
        let path = e.path();
        if !e.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        if let Ok(Some(r)) = read_record(&path) {
            if r.stepd_pid == stepd_pid {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// Removes the records of finished steps: those whose slurmstepd is gone or is another
/// process now. Errors are ignored; a leftover never grants anything anyway.
pub fn sweep_stale(state_dir: &Path, proc_root: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    let mut live: BTreeMap<i32, Option<(u32, String)>> = BTreeMap::new();
    for e in entries.flatten() {
        let path = e.path();
        let Ok(Some(r)) = read_record(&path) else {
            continue;
        };
        let owner = live.entry(r.stepd_pid).or_insert_with(|| {
            std::fs::read(proc_root.join(r.stepd_pid.to_string()).join("cmdline"))
                .ok()
                .and_then(|c| parse_stepd_title(&c))
        });
        if owner.as_ref() != Some(&(r.job, r.step.clone())) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn proc_entry(root: &Path, pid: i32, ppid: i32, comm: &str, uid: u32, cmdline: &str) {
        let d = root.join(pid.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("stat"), format!("{pid} ({comm}) S {ppid} 1 1 0 -1")).unwrap();
        std::fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
        std::fs::write(
            d.join("status"),
            format!("Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"),
        )
        .unwrap();
        std::fs::write(d.join("cmdline"), cmdline.replace(' ', "\0")).unwrap();
    }

    /// init(1) → slurmd(10) → slurmstepd(20, "[7.0]") → task sh(30, user) → runc(40) → ctr(50)
    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        proc_entry(r, 10, 1, "slurmd", 0, "slurmd");
        std::fs::create_dir_all(r.join("20")).unwrap();
        proc_entry(r, 20, 10, "slurmstepd", 0, "x");
        std::fs::write(r.join("20/cmdline"), b"slurmstepd: [7.0]\0\0").unwrap();
        proc_entry(r, 30, 20, "sh", 1000, "/bin/sh -c runc");
        proc_entry(r, 40, 30, "runc", 1000, "runc run");
        proc_entry(r, 50, 40, "runc:[2:INIT]", 1000, "runc init");
        t
    }

    #[test]
    fn step_from_the_process_tree() {
        let t = tree();
        assert_eq!(
            find_step(t.path(), 50),
            Some(StepRef {
                job: 7,
                step: "0".into(),
                stepd_pid: 20,
                task_pid: Some(30)
            })
        );
        // A user process named slurmstepd (uid 1000) is not trusted.
        proc_entry(t.path(), 60, 50, "slurmstepd", 1000, "slurmstepd: [8.0]");
        proc_entry(t.path(), 70, 60, "ctr", 1000, "ctr");
        assert_eq!(find_step(t.path(), 70).map(|s| s.job), Some(7));
        // Outside Slurm.
        proc_entry(t.path(), 80, 1, "podman", 0, "podman");
        proc_entry(t.path(), 90, 80, "ctr", 0, "ctr");
        assert_eq!(find_step(t.path(), 90), None);
        assert_eq!(find_step(t.path(), 12345), None);
    }

    #[test]
    fn titles() {
        assert_eq!(
            parse_stepd_title(b"slurmstepd: [145.0]\0"),
            Some((145, "0".into()))
        );
        assert_eq!(
            parse_stepd_title(b"slurmstepd: [145.batch]"),
            Some((145, "batch".into()))
        );
        for bad in [
            &b"slurmstepd: [145]"[..],
            b"slurmstepd: [x.0]",
            b"slurmd",
            b"slurmstepd: [1./0]",
            b"",
        ] {
            assert_eq!(parse_stepd_title(bad), None, "{bad:?}");
        }
    }

    fn state_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    fn write(dir: &Path, r: &Record) {
        std::fs::write(dir.join(r.file_name()), serde_json::to_vec(r).unwrap()).unwrap();
    }

    #[test]
    fn records_fresh_stale_and_per_task() {
        let d = state_dir();
        let step = StepRef {
            job: 7,
            step: "0".into(),
            stepd_pid: 20,
            task_pid: Some(30),
        };
        let e = allowed_gpus(d.path(), &step).unwrap_err().to_string();
        assert!(
            e.contains("job 7 step 0") && e.contains("SPANK plugin"),
            "{e}"
        );
        let rec = Record {
            job: 7,
            step: "0".into(),
            stepd_pid: 20,
            task_pid: None,
            gpus: vec!["minor:1".into(), "minor:3".into()],
        };
        write(d.path(), &rec);
        assert_eq!(
            allowed_gpus(d.path(), &step).unwrap(),
            vec![PhysicalId::Minor(1), PhysicalId::Minor(3)]
        );
        // The task's own record narrows it.
        write(
            d.path(),
            &Record {
                task_pid: Some(30),
                gpus: vec!["minor:3".into()],
                ..rec.clone()
            },
        );
        assert_eq!(
            allowed_gpus(d.path(), &step).unwrap(),
            vec![PhysicalId::Minor(3)]
        );
        // A record left by an earlier slurmstepd with the same ids grants nothing.
        let other = StepRef {
            stepd_pid: 21,
            ..step.clone()
        };
        assert!(allowed_gpus(d.path(), &other).is_err());
        // Garbage is an error naming the file.
        std::fs::write(d.path().join("7.0.json"), b"{").unwrap();
        let e = allowed_gpus(
            d.path(),
            &StepRef {
                task_pid: None,
                ..step
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("7.0.json"), "{e}");
    }

    #[test]
    fn unsafe_state_dir_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let step = StepRef {
            job: 1,
            step: "0".into(),
            stepd_pid: 2,
            task_pid: None,
        };
        assert!(matches!(
            allowed_gpus(d.path(), &step),
            Err(AllocationError::UnsafeDir { .. })
        ));
    }

    #[test]
    fn write_and_remove() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("state");
        let r = Record {
            job: 9,
            step: "batch".into(),
            stepd_pid: 20,
            task_pid: Some(31),
            gpus: vec!["minor:2".into()],
        };
        write_record(&dir, &r).unwrap();
        assert_eq!(
            std::fs::metadata(&dir)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap(),
            0o700
        );
        let step = StepRef {
            job: 9,
            step: "batch".into(),
            stepd_pid: 20,
            task_pid: Some(31),
        };
        assert_eq!(
            allowed_gpus(&dir, &step).unwrap(),
            vec![PhysicalId::Minor(2)]
        );
        remove_step(&dir, 9, "batch", 21);
        assert!(
            dir.join("9.batch.task31.json").exists(),
            "another stepd's records stay"
        );
        remove_step(&dir, 9, "batch", 20);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn sweep_removes_records_of_gone_steps() {
        let t = tree();
        let d = state_dir();
        let live = Record {
            job: 7,
            step: "0".into(),
            stepd_pid: 20,
            task_pid: None,
            gpus: vec![],
        };
        let gone = Record {
            job: 6,
            step: "0".into(),
            stepd_pid: 20,
            ..live.clone()
        };
        write(d.path(), &live);
        write(d.path(), &gone);
        sweep_stale(d.path(), t.path());
        assert!(d.path().join("7.0.json").exists());
        assert!(!d.path().join("6.0.json").exists());
    }
}
