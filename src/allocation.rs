//! Which GPUs a container may have, from what Slurm itself vouches for. The SPANK plugin
//! records, as root, each job's GPUs on the node (job prolog, from the prolog's
//! `SLURM_JOB_GPUS`), each step's and each task's, in a root-only state directory. The hook
//! identifies a container's job, step and task from its cgroup membership, which a user's
//! process cannot leave (setsid, double forks, daemons and ssh all stay in, or are put into,
//! the job's cgroups), and only where Slurm keeps no cgroup for jobs from the container's
//! root-owned `slurmstepd` ancestor. Never from the container's environment. Every lookup
//! takes the proc root and the state dir as parameters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::request::PhysicalId;

/// The step name of a job-level record (written by the job prolog, not by a step).
pub const JOB_RECORD: &str = "job";

/// What the plugin writes: for the job on this node (`<job>.job.json`), for a step
/// (`<job>.<step>.json`) or for a task (`<job>.<step>.task<T>.json`, T the node-local task id,
/// as in Slurm's `task_T` cgroup).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub job: u32,
    /// `0`, `1`, … or `batch`, `extern`, `interactive`, as slurmstepd names it; `job` for the
    /// job record.
    pub step: String,
    /// The slurmstepd that owns the step; a record whose stepd is gone is stale. 0 for the job
    /// record, which the job epilog removes.
    pub stepd_pid: i32,
    /// For a task record, the task's pid (the direct child of slurmstepd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_pid: Option<i32>,
    /// For a task record, the node-local task id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<u32>,
    /// The GPUs, as `PhysicalId` strings (`GPU-…`, PCI bus id, `minor:N`, `mig:P/C/C`).
    pub gpus: Vec<String>,
    /// The job or step holds CUDA MPS shares (Slurm's gres/mps): its containers also get the
    /// MPS log directory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mps: bool,
    /// The IMEX channels Slurm's switch/nvidia_imex gave the step on this node (the channel
    /// nodes slurmstepd made in the step's own `/dev/nvidia-caps-imex-channels`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub imex_channels: Vec<u32>,
    /// The network adapters Slurm's gres/nic gave the step on this node (`SLURM_STEP_NICS`
    /// through gres.conf's `Name=nic` files), as device numbers; recorded where the site
    /// set `mofed-step-nics`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<crate::plan::DevNum>,
}

impl Record {
    /// The file name for this record: per job, per step, or per task keyed by its local id.
    pub fn file_name(&self) -> String {
        match self.task_id {
            None => format!("{}.{}.json", self.job, self.step),
            Some(t) => format!("{}.{}.task{t}.json", self.job, self.step),
        }
    }

    /// # Errors
    /// A GPU entry that is not a valid physical id.
    pub fn physical(&self) -> Result<Vec<PhysicalId>, crate::request::RequestError> {
        self.gpus.iter().map(|g| PhysicalId::parse(g)).collect()
    }
}

/// The Slurm step a container runs in, and how it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRef {
    pub job: u32,
    pub step: String,
    /// The slurmstepd found above the container in the process tree, when it was.
    pub stepd_pid: Option<i32>,
    /// The ancestor just below slurmstepd: the task process (process-tree identity).
    pub task_pid: Option<i32>,
    /// The node-local task id from the `task_T` cgroup (cgroup identity).
    pub task_id: Option<u32>,
    /// The v1 `devices` cgroup of the task (or step) as Slurm made it, relative to the
    /// hierarchy's root, when the container's cgroups show one: Slurm's own answer to which
    /// devices the task may open (ConstrainDevices).
    pub devices_cgroup: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AllocationError {
    #[error("{path}: cannot read allocation record")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot write allocation record")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: malformed allocation record: {message}")]
    Format { path: PathBuf, message: String },
    #[error("container is in Slurm job {job} step {step}, but no live gres-oci record vouches for it in {dir} (is the SPANK plugin loaded on this node, and the step not opted out?)")]
    NoRecord {
        job: u32,
        step: String,
        dir: PathBuf,
    },
    #[error("container is in Slurm job {job} step {step}, but {dir} does not exist: the gres-oci SPANK plugin is not loaded on this node, so nothing vouches for the job's GPUs")]
    NoStateDir {
        job: u32,
        step: String,
        dir: PathBuf,
    },
    #[error("{dir}: the state directory must be a directory owned by root and closed to others")]
    UnsafeDir { dir: PathBuf },
    #[error("the container's cgroups name two Slurm steps ({first} and {second})")]
    Conflict { first: String, second: String },
}

/// The fields of `/proc/<pid>/stat` after the command name: the name may contain spaces and
/// parentheses, so parse from the last `)`.
fn ppid(proc_root: &Path, pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
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
    valid_step_name(step).then_some(())?;
    Some((job.parse().ok()?, step.to_owned()))
}

fn valid_step_name(step: &str) -> bool {
    !step.is_empty() && step.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Whether `pid` is a live, root-owned slurmstepd of `job`.`step`.
pub fn stepd_is_live(proc_root: &Path, pid: i32, job: u32, step: &str) -> bool {
    if pid <= 1 {
        return false;
    }
    let dir = proc_root.join(pid.to_string());
    let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
    if comm.trim_end() != "slurmstepd" || real_uid(proc_root, pid) != Some(0) {
        return false;
    }
    std::fs::read(dir.join("cmdline"))
        .ok()
        .and_then(|c| parse_stepd_title(&c))
        .is_some_and(|(j, s)| j == job && s == step)
}

/// Walks up from `pid` to the nearest ancestor that is a root-owned `slurmstepd`. `None` when
/// no such ancestor exists (or the chain cannot be read): that alone does not mean the
/// process is in no job, since a user's process can leave the tree (setsid, double fork).
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
                stepd_pid: Some(cur),
                task_pid: below,
                task_id: None,
                devices_cgroup: None,
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

/// Where one `/proc/<pid>/cgroup` path sits in Slurm's tree: (job, step, task, the path up to
/// and including the task or step component). Anchored at the top of Slurm's tree, so a
/// cgroup a user makes below their own task (`…/task_0/job_9/step_0`) names nothing new:
/// - v1: `/slurm[_<node>]/uid_U/job_J/step_S[/task_T]/…`
/// - v2: `…/[<node>_]slurmstepd.scope/job_J/step_S[/user/task_T]/…`
fn slurm_path(path: &str) -> Option<(u32, String, Option<u32>, String)> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let (job_at, v2) = if comps
        .first()
        .is_some_and(|c| *c == "slurm" || c.starts_with("slurm_"))
    {
        comps.get(1)?.strip_prefix("uid_")?.parse::<u32>().ok()?;
        (2, false)
    } else {
        let i = comps
            .iter()
            .position(|c| *c == "slurmstepd.scope" || c.ends_with("_slurmstepd.scope"))?;
        (i + 1, true)
    };
    let job: u32 = comps.get(job_at)?.strip_prefix("job_")?.parse().ok()?;
    let step = comps.get(job_at + 1)?.strip_prefix("step_")?;
    if !valid_step_name(step) {
        return None;
    }
    let task_at = if v2 {
        (comps.get(job_at + 2) == Some(&"user")).then_some(job_at + 3)
    } else {
        Some(job_at + 2)
    };
    let task = task_at
        .and_then(|i| comps.get(i))
        .and_then(|c| c.strip_prefix("task_"))
        .and_then(|t| t.parse::<u32>().ok());
    let end = match task {
        Some(_) => task_at.unwrap_or(job_at + 2) + 1,
        None => job_at + 2,
    };
    let prefix = format!("/{}", comps[..end].join("/"));
    Some((job, step.to_owned(), task, prefix))
}

/// The Slurm step a process's cgroups place it in, from the text of `/proc/<pid>/cgroup`.
/// `Ok(None)` when no line is in Slurm's tree.
///
/// # Errors
/// Two lines that name different steps or tasks.
pub fn step_from_cgroups(proc_pid_cgroup: &str) -> Result<Option<StepRef>, AllocationError> {
    let mut found: Option<StepRef> = None;
    for (ctrls, path) in crate::proc_cgroup::entries(proc_pid_cgroup) {
        let Some((job, step, task, prefix)) = slurm_path(path) else {
            continue;
        };
        let devices = ctrls.has("devices").then_some(prefix);
        let here = StepRef {
            job,
            step,
            stepd_pid: None,
            task_pid: None,
            task_id: task,
            devices_cgroup: devices,
        };
        match &mut found {
            None => found = Some(here),
            Some(f) => {
                let same_step = f.job == here.job && f.step == here.step;
                let tasks_agree =
                    f.task_id.is_none() || here.task_id.is_none() || f.task_id == here.task_id;
                if !same_step || !tasks_agree {
                    return Err(AllocationError::Conflict {
                        first: f.to_string(),
                        second: here.to_string(),
                    });
                }
                f.task_id = f.task_id.or(here.task_id);
                if f.devices_cgroup.is_none() {
                    f.devices_cgroup = here.devices_cgroup;
                }
            }
        }
    }
    Ok(found)
}

impl std::fmt::Display for StepRef {
    /// `job J step S`, with `task T` when the cgroup names the task.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job {} step {}", self.job, self.step)?;
        match self.task_id {
            Some(t) => write!(f, " task {t}"),
            None => Ok(()),
        }
    }
}

/// The container's Slurm step: from its cgroups when Slurm keeps them, else from its
/// root-owned `slurmstepd` ancestor. When both answer they must agree; the process tree then
/// adds the stepd and task pids.
///
/// # Errors
/// Contradicting cgroups.
pub fn identify(proc_root: &Path, pid: i32) -> Result<Option<StepRef>, AllocationError> {
    let text =
        std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).unwrap_or_default();
    let tree = find_step(proc_root, pid);
    match (step_from_cgroups(&text)?, tree) {
        (Some(mut cg), Some(t)) if t.job == cg.job && t.step == cg.step => {
            cg.stepd_pid = t.stepd_pid;
            cg.task_pid = t.task_pid;
            Ok(Some(cg))
        }
        // A root engine may have put the container in cgroups of its own under the step
        // (kept) or elsewhere; the cgroup is what the kernel vouches for.
        (Some(cg), _) => Ok(Some(cg)),
        (None, tree) => Ok(tree),
    }
}

/// Whether a v1 `devices.list` (Slurm's task cgroup under ConstrainDevices) lets the cgroup
/// read and write character device `major`:`minor`.
pub fn devices_list_allows(text: &str, major: u32, minor: u32) -> bool {
    let fits = |field: &str, n: u32| field == "*" || field.parse::<u32>().ok() == Some(n);
    text.lines().any(|line| {
        let mut f = line.split_whitespace();
        let (Some(kind), Some(num), Some(access)) = (f.next(), f.next(), f.next()) else {
            return false;
        };
        let Some((maj, min)) = num.split_once(':') else {
            return false;
        };
        (kind == "a" || kind == "c")
            && access.contains('r')
            && access.contains('w')
            && fits(maj, major)
            && fits(min, minor)
    })
}

/// The plugin's per-task list from a task's `/proc/<pid>/environ` (NUL-separated), as
/// slurmstepd handed it to the task at exec; `None` when absent or malformed. It only ever
/// narrows within the grant, so a user who re-execs with other values gains nothing.
pub fn task_gpus_from_environ(environ: &[u8]) -> Option<Vec<PhysicalId>> {
    let prefix = format!("{}=", crate::request::GPUS_VAR);
    let value = environ
        .split(|b| *b == 0)
        .find_map(|e| e.strip_prefix(prefix.as_bytes()))?;
    std::str::from_utf8(value)
        .ok()?
        .split(',')
        .filter(|s| !s.is_empty())
        .map(PhysicalId::parse)
        .collect::<Result<Vec<_>, _>>()
        .ok()
}

/// Whether a container needs NVML's list of MIG devices to be planned: its step holds MIG
/// slices (`granted`) and it asks for some GPU.
pub fn needs_mig_listing(request: &crate::request::Request, granted: &[PhysicalId]) -> bool {
    !matches!(
        request.devices,
        crate::request::Devices::Nvidia(crate::nvidia_env::DeviceRequest::None)
    ) && granted
        .iter()
        .any(|id| matches!(id, PhysicalId::Mig { .. }))
}

/// The GPUs a container in a Slurm step may have: those of `inventory` the records grant,
/// narrowed to its task's own when the task's environment names them (`task`, the plugin's
/// per-task `GRES_OCI_GPUS`, which only ever narrows within the grant), and to those the task's
/// device cgroup lets it open (`devices_list`, Slurm's own answer under ConstrainDevices: a
/// MIG device needs its parent's node and each of its capability nodes). A whole GPU is named
/// by UUID when known, else by minor; a MIG device by its MIG id.
pub fn narrow(
    granted: &[PhysicalId],
    task: Option<&[PhysicalId]>,
    devices_list: Option<&str>,
    inventory: &crate::inventory::Inventory,
    devices: &crate::plan::HostDevices,
    mig_minors: &BTreeMap<String, u32>,
) -> Vec<PhysicalId> {
    // Every device of the node, whole GPUs and MIG devices alike, with the nodes it needs.
    let mut candidates: Vec<(PhysicalId, Vec<String>)> = Vec::new();
    for g in &inventory.gpus {
        let parent = format!("nvidia{}", g.minor);
        if granted.iter().any(|id| id.matches(g)) {
            let id = match &g.uuid {
                Some(u) => PhysicalId::Uuid(u.clone()),
                None => PhysicalId::Minor(g.minor),
            };
            candidates.push((id, vec![parent.clone()]));
        }
        for m in &g.migs {
            let Some(id) = PhysicalId::of_mig(g, m, mig_minors).filter(|id| granted.contains(id))
            else {
                continue;
            };
            let caps = match &id {
                PhysicalId::Mig { caps, .. } => caps.as_slice(),
                _ => &[],
            };
            let nodes = std::iter::once(parent.clone())
                .chain(caps.iter().map(|c| format!("nvidia-caps/nvidia-cap{c}")))
                .collect();
            candidates.push((id, nodes));
        }
    }
    let in_task = |id: &PhysicalId| {
        task.is_some_and(|t| {
            t.iter().any(|tid| {
                tid == id
                    || inventory
                        .gpus
                        .iter()
                        .any(|g| tid.matches(g) && id.matches(g))
            })
        })
    };
    // A task list that names none of the step's GPUs is not the plugin's: ignore it.
    if candidates.iter().any(|(id, _)| in_task(id)) {
        candidates.retain(|(id, _)| in_task(id));
    }
    candidates
        .into_iter()
        .filter(|(_, nodes)| {
            devices_list.is_none_or(|list| {
                nodes.iter().all(|n| {
                    devices
                        .get(n)
                        .is_some_and(|d| devices_list_allows(list, d.major, d.minor))
                })
            })
        })
        .map(|(id, _)| id)
        .collect()
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

/// What the records grant a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The step's (or the job's, for the extern step) GPUs, bounded by the job record.
    pub ids: Vec<PhysicalId>,
    /// The task's pid, when a task record matched (its environment names the task's GPUs).
    pub task_pid: Option<i32>,
    /// The step (for the extern step, the job) holds MPS shares.
    pub mps: bool,
    /// The step's IMEX channels (none for the extern step: the job prolog sees none).
    pub imex_channels: Vec<u32>,
    /// The step's gres/nic adapters (none for the extern step), as device numbers.
    pub nics: Vec<crate::plan::DevNum>,
}

/// The GPUs the records vouch for, for a container in `step`. Records whose slurmstepd is not
/// the live one are stale and ignored. The extern step (pam_slurm_adopt's ssh sessions) gets
/// the job's GPUs on the node; every other step gets its own, bounded by the job's when the
/// job record exists.
///
/// # Errors
/// A missing or unsafe state dir, an unreadable or malformed record, or no live record.
pub fn allowed_gpus(
    state_dir: &Path,
    proc_root: &Path,
    step: &StepRef,
) -> Result<Grant, AllocationError> {
    if !state_dir.exists() {
        return Err(AllocationError::NoStateDir {
            job: step.job,
            step: step.step.clone(),
            dir: state_dir.to_owned(),
        });
    }
    check_dir(state_dir)?;
    let no_record = || AllocationError::NoRecord {
        job: step.job,
        step: step.step.clone(),
        dir: state_dir.to_owned(),
    };
    let job_path = state_dir.join(format!("{}.{JOB_RECORD}.json", step.job));
    let job_record = read_record(&job_path)?.filter(|r| r.job == step.job);
    let job_ids = job_record
        .as_ref()
        .map(|r| to_ids(&job_path, r))
        .transpose()?;
    if step.step == "extern" {
        return job_ids
            .map(|ids| Grant {
                ids,
                task_pid: None,
                mps: job_record.as_ref().is_some_and(|r| r.mps),
                imex_channels: Vec::new(),
                nics: Vec::new(),
            })
            .ok_or_else(no_record);
    }
    // A stepd the process tree found is already a live, root-owned slurmstepd of this step;
    // only a cgroup identity needs the record's stepd checked.
    let fresh = |r: &Record| {
        r.job == step.job
            && r.step == step.step
            && match step.stepd_pid {
                Some(p) => p == r.stepd_pid,
                None => stepd_is_live(proc_root, r.stepd_pid, r.job, &r.step),
            }
    };
    let (path, record) = match task_record(state_dir, step, &fresh)? {
        Some(found) => found,
        None => {
            let path = state_dir.join(format!("{}.{}.json", step.job, step.step));
            let r = read_record(&path)?
                .filter(|r| fresh(r))
                .ok_or_else(no_record)?;
            (path, r)
        }
    };
    let mut ids = to_ids(&path, &record)?;
    if let Some(job) = &job_ids {
        ids.retain(|id| job.contains(id));
    }
    Ok(Grant {
        ids,
        task_pid: record.task_pid,
        mps: record.mps,
        imex_channels: record.imex_channels.clone(),
        nics: record.nics.clone(),
    })
}

/// The task's own record: by the task id of its cgroup, else by the task pid the process tree
/// found.
fn task_record(
    state_dir: &Path,
    step: &StepRef,
    fresh: &dyn Fn(&Record) -> bool,
) -> Result<Option<(PathBuf, Record)>, AllocationError> {
    if let Some(t) = step.task_id {
        let path = state_dir.join(format!("{}.{}.task{t}.json", step.job, step.step));
        return Ok(read_record(&path)?
            .filter(|r| fresh(r) && r.task_id == Some(t))
            .map(|r| (path, r)));
    }
    let Some(pid) = step.task_pid else {
        return Ok(None);
    };
    let prefix = format!("{}.{}.task", step.job, step.step);
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return Ok(None);
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let path = e.path();
        if let Some(r) = read_record(&path)?.filter(|r| fresh(r) && r.task_pid == Some(pid)) {
            return Ok(Some((path, r)));
        }
    }
    Ok(None)
}

fn to_ids(path: &Path, r: &Record) -> Result<Vec<PhysicalId>, AllocationError> {
    r.physical().map_err(|e| AllocationError::Format {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Creates the state directory root-only if it is missing, and checks it. The plugin does this
/// when slurmd loads it, so that the directory's presence says the plugin is deployed.
///
/// # Errors
/// It cannot be made, or it is unsafe.
pub fn ensure_state_dir(state_dir: &Path) -> Result<(), AllocationError> {
    use std::os::unix::fs::DirBuilderExt;
    if !state_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|source| AllocationError::Write {
                path: state_dir.to_owned(),
                source,
            })?;
    }
    check_dir(state_dir)
}

/// Writes `record` into `state_dir` atomically (temp file + rename, so the hook never reads
/// half a record), creating the directory root-only if needed.
///
/// # Errors
/// The directory cannot be made or is unsafe, or the write fails.
pub fn write_record(state_dir: &Path, record: &Record) -> Result<(), AllocationError> {
    ensure_state_dir(state_dir)?;
    let path = state_dir.join(record.file_name());
    // A failure here is a failed write, never a "malformed record".
    let bytes = serde_json::to_vec(record).map_err(|e| AllocationError::Write {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    crate::atomic::replace(&path, &bytes, 0o600, None)
        .map_err(|source| AllocationError::Write { path, source })
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

/// Removes the job record of `job` (the job's epilog).
pub fn remove_job(state_dir: &Path, job: u32) {
    let _ = std::fs::remove_file(state_dir.join(format!("{job}.{JOB_RECORD}.json")));
}

/// Removes the records of finished steps: those whose slurmstepd is gone or is another
/// process now. Job records are left to the epilog. Errors are ignored; a leftover never
/// grants anything anyway.
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
        if r.step == JOB_RECORD {
            continue;
        }
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

    fn by_tree(job: u32, step: &str, stepd: i32, task: i32) -> StepRef {
        StepRef {
            job,
            step: step.into(),
            stepd_pid: Some(stepd),
            task_pid: Some(task),
            task_id: None,
            devices_cgroup: None,
        }
    }

    #[test]
    fn step_from_the_process_tree() {
        let t = tree();
        assert_eq!(find_step(t.path(), 50), Some(by_tree(7, "0", 20, 30)));
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
            b"slurmstepd: [1.\xe2\x82\xac]",
            b"",
        ] {
            assert_eq!(parse_stepd_title(bad), None, "{bad:?}");
        }
    }

    fn cg(text: &str) -> Option<(u32, String, Option<u32>, Option<String>)> {
        step_from_cgroups(text)
            .unwrap()
            .map(|s| (s.job, s.step, s.task_id, s.devices_cgroup))
    }

    #[test]
    fn step_from_slurm_cgroup_layouts() {
        // cgroup v1 (hybrid), with runc's own cgroup nested under the task.
        let v1 = "12:devices:/slurm_n1/uid_0/job_7/step_0/task_1/ctr\n\
                  5:freezer:/slurm_n1/uid_0/job_7/step_0\n\
                  4:memory:/slurm_n1/uid_0/job_7/step_0/task_1/ctr\n\
                  0::/\n";
        assert_eq!(
            cg(v1),
            Some((
                7,
                "0".into(),
                Some(1),
                Some("/slurm_n1/uid_0/job_7/step_0/task_1".into())
            ))
        );
        // Batch and extern steps, plain `slurm`, no task level.
        assert_eq!(
            cg("9:freezer:/slurm/uid_1000/job_12/step_extern\n"),
            Some((12, "extern".into(), None, None))
        );
        assert_eq!(
            cg("3:devices:/slurm/uid_1000/job_12/step_batch/task_0\n"),
            Some((
                12,
                "batch".into(),
                Some(0),
                Some("/slurm/uid_1000/job_12/step_batch/task_0".into())
            ))
        );
        // cgroup v2, one or several slurmd on the host.
        assert_eq!(
            cg("0::/system.slice/slurmstepd.scope/job_5/step_2/user/task_3\n"),
            Some((5, "2".into(), Some(3), None))
        );
        assert_eq!(
            cg("0::/system.slice/n2_slurmstepd.scope/job_5/step_interactive/user/task_0/x\n"),
            Some((5, "interactive".into(), Some(0), None))
        );
        assert_eq!(
            cg("0::/system.slice/slurmstepd.scope/job_5/step_0/slurm\n"),
            Some((5, "0".into(), None, None))
        );
        // Not Slurm's: a container engine's cgroup, the host's, and look-alikes a user could
        // make below their own cgroup or name freely.
        for text in [
            "12:devices:/libpod_parent/libpod-abc\n0::/\n",
            "0::/user.slice/user-1000.slice/session-3.scope\n",
            "4:devices:/ctr/slurm/uid_0/job_9/step_0\n",
            "4:devices:/slurm/job_9/step_0\n",
            "4:devices:/slurm/uid_x/job_9/step_0\n",
            "4:devices:/slurm/uid_0/job_9x/step_0\n",
            "4:devices:/slurm/uid_0/job_9/step_0€\n",
            "garbage\n\n:::\n",
            "",
        ] {
            assert_eq!(cg(text), None, "{text:?}");
        }
        // A user's nested look-alike below their task names their own job, not job 9.
        assert_eq!(
            cg("4:devices:/slurm/uid_5/job_3/step_0/task_0/job_9/step_0/task_1\n").map(|c| c.0),
            Some(3)
        );
        // Controllers that disagree are refused.
        let e = step_from_cgroups(
            "4:devices:/slurm/uid_0/job_3/step_0/task_0\n5:freezer:/slurm/uid_0/job_4/step_0\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("job 3 step 0") && e.contains("job 4 step 0"),
            "{e}"
        );
    }

    #[test]
    fn identity_prefers_cgroups_and_keeps_the_tree_pids() {
        let t = tree();
        // Same step in both: cgroups give the task id, the tree the pids.
        std::fs::write(
            t.path().join("50/cgroup"),
            "4:devices:/slurm/uid_0/job_7/step_0/task_1/ctr\n",
        )
        .unwrap();
        let s = identify(t.path(), 50).unwrap().unwrap();
        assert_eq!(
            (s.job, s.step.as_str(), s.task_id, s.stepd_pid, s.task_pid),
            (7, "0", Some(1), Some(20), Some(30))
        );
        // Escaped the tree (setsid, a daemon): the cgroup still names the step.
        proc_entry(t.path(), 95, 1, "runc:[2:INIT]", 1000, "runc init");
        std::fs::write(
            t.path().join("95/cgroup"),
            "5:freezer:/slurm/uid_0/job_7/step_0\n",
        )
        .unwrap();
        let s = identify(t.path(), 95).unwrap().unwrap();
        assert_eq!((s.job, s.stepd_pid, s.task_id), (7, None, None));
        // No Slurm cgroup: the tree alone.
        assert_eq!(
            identify(t.path(), 40).unwrap(),
            Some(by_tree(7, "0", 20, 30))
        );
        proc_entry(t.path(), 96, 1, "ctr", 1000, "ctr");
        assert_eq!(identify(t.path(), 96).unwrap(), None);
    }

    #[test]
    fn task_list_from_environ() {
        let env =
            b"PATH=/bin\0GRES_OCI_GPUS=GPU-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a70,minor:3\0X=1\0";
        assert_eq!(task_gpus_from_environ(env).unwrap().len(), 2);
        assert_eq!(task_gpus_from_environ(b"PATH=/bin\0"), None);
        assert_eq!(task_gpus_from_environ(b"GRES_OCI_GPUS=bogus\0"), None);
        assert_eq!(task_gpus_from_environ(b"GRES_OCI_GPUS=\xff\0"), None);
        assert_eq!(task_gpus_from_environ(b"GRES_OCI_GPUS=\0"), Some(vec![]));
    }

    #[test]
    fn mig_listing_only_for_mig_grants_and_gpu_requests() {
        let req = |v: &str| {
            let env = vec![format!("NVIDIA_VISIBLE_DEVICES={v}")];
            crate::request::Request::from_env(
                &crate::request::env_map(&env).unwrap(),
                &crate::config::Config::default(),
            )
            .unwrap()
        };
        let mig = [PhysicalId::parse("mig:0/21/22").unwrap()];
        let whole = [PhysicalId::parse("minor:0").unwrap()];
        assert!(needs_mig_listing(&req("all").unwrap(), &mig));
        assert!(!needs_mig_listing(&req("all").unwrap(), &whole));
        // `none`: the driver files without any GPU.
        assert!(!needs_mig_listing(&req("none").unwrap(), &mig));
    }

    #[test]
    fn devices_list() {
        let task = "c 1:3 rwm\nc 195:255 rwm\nc 195:2 rwm\nc 195:0 r\nb 195:1 rwm\nc 10:200 rwm\n";
        let allowed: Vec<u32> = (0..4)
            .filter(|m| devices_list_allows(task, 195, *m))
            .collect();
        assert_eq!(allowed, vec![2]);
        assert!(devices_list_allows(task, 195, 255));
        assert!(!devices_list_allows(task, 196, 2));
        assert!(devices_list_allows("a *:* rwm\n", 195, 7));
        assert!(devices_list_allows("c 195:* rwm\n", 195, 7));
        assert!(!devices_list_allows("c *:* m\n", 195, 7));
        assert!(!devices_list_allows("", 195, 0));
        assert!(!devices_list_allows("c 195:€ rw\nx\n\u{0}", 195, 0));
    }

    #[test]
    fn narrowing_by_task_and_cgroup() {
        use crate::inventory::{Gpu, Inventory, Source};
        use crate::plan::{DevNum, HostDevices};
        let gpu = |minor: u32, uuid: &str| Gpu {
            index: minor,
            minor,
            uuid: Some(uuid.into()),
            pci_bus_id: format!("00000000:{:02x}:00.0", minor + 1),
            model: None,
            arch: None,
            brand: None,
            migs: vec![],
        };
        let inv = Inventory {
            source: Source::Procfs,
            driver_version: "1".into(),
            cuda_version: None,
            gpus: vec![gpu(0, "GPU-a"), gpu(1, "GPU-b"), gpu(2, "GPU-c")],
        };
        let mut devs = HostDevices::new();
        for m in 0..3 {
            devs.insert(
                format!("nvidia{m}"),
                DevNum {
                    major: 195,
                    minor: m,
                },
            );
        }
        let names = |v: Vec<PhysicalId>| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        let none = BTreeMap::new();
        let step = [PhysicalId::Minor(0), PhysicalId::Minor(2)];
        assert_eq!(
            names(narrow(&step, None, None, &inv, &devs, &none)),
            ["GPU-a", "GPU-c"]
        );
        let task = [PhysicalId::Uuid("GPU-c".into())];
        assert_eq!(
            names(narrow(&step, Some(&task), None, &inv, &devs, &none)),
            ["GPU-c"]
        );
        // The task list never widens: GPU-b is not the step's, so it is ignored.
        let forged = [PhysicalId::Uuid("GPU-b".into())];
        assert_eq!(
            names(narrow(&step, Some(&forged), None, &inv, &devs, &none)),
            ["GPU-a", "GPU-c"]
        );
        // The task cgroup has the last word.
        let list = "c 195:0 rwm\nc 195:255 rwm\n";
        assert_eq!(
            names(narrow(&step, None, Some(list), &inv, &devs, &none)),
            ["GPU-a"]
        );
        assert!(narrow(&step, Some(&task), Some(list), &inv, &devs, &none).is_empty());
    }

    #[test]
    fn mig_devices_narrow_by_their_own_ids_and_nodes() {
        use crate::inventory::{Gpu, Inventory, Mig, Source};
        use crate::plan::{DevNum, HostDevices};
        let mig = |index: u32, gi: u32| Mig {
            index,
            uuid: format!("MIG-{index}"),
            gi,
            ci: 0,
        };
        let inv = Inventory {
            source: Source::Nvml,
            driver_version: "1".into(),
            cuda_version: None,
            gpus: vec![Gpu {
                index: 0,
                minor: 0,
                uuid: Some("GPU-a".into()),
                pci_bus_id: "00000000:01:00.0".into(),
                model: None,
                arch: None,
                brand: None,
                migs: vec![mig(0, 1), mig(1, 2)],
            }],
        };
        let minors: BTreeMap<String, u32> = [
            ("gpu0/gi1/access", 21),
            ("gpu0/gi1/ci0/access", 22),
            ("gpu0/gi2/access", 30),
            ("gpu0/gi2/ci0/access", 31),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut devs = HostDevices::new();
        devs.insert(
            "nvidia0".into(),
            DevNum {
                major: 195,
                minor: 0,
            },
        );
        for c in [21, 22, 30, 31] {
            devs.insert(
                format!("nvidia-caps/nvidia-cap{c}"),
                DevNum {
                    major: 508,
                    minor: c,
                },
            );
        }
        let id = |s: &str| PhysicalId::parse(s).unwrap();
        let names = |v: Vec<PhysicalId>| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        // The step holds the first slice: not the parent, not the other slice.
        let step = [id("mig:0/22/21")];
        assert_eq!(
            names(narrow(&step, None, None, &inv, &devs, &minors)),
            ["mig:0/21/22"]
        );
        // A grant naming the parent GPU does not cover its slices.
        assert_eq!(
            names(narrow(&[id("minor:0")], None, None, &inv, &devs, &minors)),
            ["GPU-a"]
        );
        // Two slices, narrowed by the task's list, then by its cgroup (parent and both caps).
        let both = [id("mig:0/21/22"), id("mig:0/30/31")];
        let task = [id("mig:0/30/31")];
        assert_eq!(
            names(narrow(&both, Some(&task), None, &inv, &devs, &minors)),
            ["mig:0/30/31"]
        );
        let list = "c 195:0 rw\nc 508:21 rw\nc 508:22 rw\nc 508:30 rw\n";
        assert_eq!(
            names(narrow(&both, None, Some(list), &inv, &devs, &minors)),
            ["mig:0/21/22"]
        );
        // A slice's id with the wrong capability set names nothing.
        assert!(narrow(&[id("mig:0/21/31")], None, None, &inv, &devs, &minors).is_empty());
    }

    fn state_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    fn write(dir: &Path, r: &Record) {
        std::fs::write(dir.join(r.file_name()), serde_json::to_vec(r).unwrap()).unwrap();
    }

    fn rec(job: u32, step: &str, stepd: i32, task: Option<(u32, i32)>, gpus: &[&str]) -> Record {
        Record {
            job,
            step: step.into(),
            stepd_pid: stepd,
            task_id: task.map(|t| t.0),
            task_pid: task.map(|t| t.1),
            gpus: gpus.iter().map(|g| g.to_string()).collect(),
            mps: false,
            imex_channels: Vec::new(),
            nics: Vec::new(),
        }
    }

    fn ids(g: &Grant) -> Vec<String> {
        g.ids.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn records_fresh_stale_per_task_and_job() {
        let t = tree();
        let d = state_dir();
        let step = by_tree(7, "0", 20, 30);
        let e = allowed_gpus(d.path(), t.path(), &step)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("job 7 step 0") && e.contains("SPANK plugin"),
            "{e}"
        );
        // The step record.
        write(d.path(), &rec(7, "0", 20, None, &["minor:1", "minor:3"]));
        let g = allowed_gpus(d.path(), t.path(), &step).unwrap();
        assert_eq!(
            (ids(&g), g.task_pid),
            (vec!["minor:1".into(), "minor:3".into()], None)
        );
        // The task's own record, found by pid (process tree) and by id (cgroup).
        write(d.path(), &rec(7, "0", 20, Some((1, 30)), &["minor:3"]));
        let g = allowed_gpus(d.path(), t.path(), &step).unwrap();
        assert_eq!((ids(&g), g.task_pid), (vec!["minor:3".into()], Some(30)));
        let by_cg = StepRef {
            stepd_pid: None,
            task_pid: None,
            task_id: Some(1),
            ..step.clone()
        };
        assert_eq!(
            allowed_gpus(d.path(), t.path(), &by_cg).unwrap().task_pid,
            Some(30)
        );
        // The job record bounds every step.
        write(d.path(), &rec(7, JOB_RECORD, 0, None, &["minor:3"]));
        let step_only = StepRef {
            task_pid: None,
            ..step.clone()
        };
        assert_eq!(
            ids(&allowed_gpus(d.path(), t.path(), &step_only).unwrap()),
            vec!["minor:3"]
        );
        // The extern step gets the job's GPUs, and nothing without the job record.
        let ext = StepRef {
            step: "extern".into(),
            stepd_pid: None,
            task_pid: None,
            ..step.clone()
        };
        assert_eq!(
            ids(&allowed_gpus(d.path(), t.path(), &ext).unwrap()),
            vec!["minor:3"]
        );
        remove_job(d.path(), 7);
        assert!(allowed_gpus(d.path(), t.path(), &ext).is_err());
        // A record left by an earlier slurmstepd with the same ids grants nothing, nor does one
        // whose stepd is no longer alive.
        let other = by_tree(7, "0", 21, 30);
        assert!(allowed_gpus(d.path(), t.path(), &other).is_err());
        std::fs::remove_dir_all(t.path().join("20")).unwrap();
        assert!(allowed_gpus(d.path(), t.path(), &by_cg).is_err());
    }

    #[test]
    fn malformed_records_name_the_file() {
        let t = tree();
        let d = state_dir();
        std::fs::write(d.path().join("7.0.json"), b"{").unwrap();
        let e = allowed_gpus(d.path(), t.path(), &by_tree(7, "0", 20, 30))
            .unwrap_err()
            .to_string();
        assert!(e.contains("7.0.json"), "{e}");
    }

    #[test]
    fn missing_or_unsafe_state_dir_is_refused() {
        let t = tree();
        let step = by_tree(7, "0", 20, 30);
        let gone = t.path().join("no-such-dir");
        assert!(matches!(
            allowed_gpus(&gone, t.path(), &step),
            Err(AllocationError::NoStateDir { .. })
        ));
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            allowed_gpus(d.path(), t.path(), &step),
            Err(AllocationError::UnsafeDir { .. })
        ));
    }

    #[test]
    fn write_and_remove() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("state");
        ensure_state_dir(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap(),
            0o700
        );
        write_record(&dir, &rec(9, "batch", 20, Some((0, 31)), &["minor:2"])).unwrap();
        write_record(&dir, &rec(9, "batch", 20, None, &["minor:2"])).unwrap();
        remove_step(&dir, 9, "batch", 21);
        assert!(
            dir.join("9.batch.task0.json").exists(),
            "another stepd's records stay"
        );
        remove_step(&dir, 9, "batch", 20);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn sweep_removes_records_of_gone_steps() {
        let t = tree();
        let d = state_dir();
        write(d.path(), &rec(7, "0", 20, None, &[]));
        write(d.path(), &rec(6, "0", 20, None, &[]));
        write(d.path(), &rec(6, JOB_RECORD, 0, None, &[]));
        sweep_stale(d.path(), t.path());
        assert!(d.path().join("7.0.json").exists());
        assert!(!d.path().join("6.0.json").exists());
        assert!(
            d.path().join("6.job.json").exists(),
            "the epilog's to remove"
        );
    }
}
