//! gres-oci's SPANK plugin: tells each job step (and, with per-task GPU binding, each task)
//! which physical GPUs Slurm gave it, so the OCI hook injects exactly those into its containers.
//!
//! It is a thin adapter: callbacks gather Slurm's variables, options and this node's files,
//! the pure modules decide ([`resolve`], [`args`], [`spool`]), and the callbacks write the
//! job environment or patch the 22.05 spool config. No threads, no NVML (procfs only), no
//! panics across the FFI boundary (slurm-spank's wrapper catches them).
//!
//! | callback | context | work |
//! |---|---|---|
//! | `init` | all | parse plugstack.conf args, register `--gres-oci`, `--gres-oci-caps` |
//! | `init_post_opt` | srun/sbatch/salloc | reject bad option values before anything starts |
//! | `user_init` | slurmstepd, once per step | read the step's GPUs, set the step's variables |
//! | `task_init_privileged` | task, as root | record the task's GPUs for the hook (state dir) |
//! | `task_init` | task, before exec | per-task binding; patch the 22.05 `--container` config |
//! | `exit` | slurmstepd, step end | remove the step's records |
//!
//! Variables: `GRES_OCI_GPUS` (physical ids, preferred by the hook), `NVIDIA_VISIBLE_DEVICES`
//! (UUIDs), `NVIDIA_DRIVER_CAPABILITIES` (when `--gres-oci-caps`/`caps=` gives one), and for
//! container steps (`SLURM_CONTAINER`) `CUDA_VISIBLE_DEVICES` renumbered for the container plus
//! `CUDA_DEVICE_ORDER=PCI_BUS_ID`. Host steps keep Slurm's own `CUDA_VISIBLE_DEVICES`.

pub mod ffi;
mod node;
pub mod spool;

use std::error::Error;
use std::path::Path;

use gres_oci::allocation::{
    ensure_state_dir, remove_job, remove_step, sweep_stale, write_record, Record, JOB_RECORD,
};
use gres_oci::config::Config;
use gres_oci::gres::{GresConf, GresError};
use gres_oci::plan::DevNum;
use gres_oci::request::GPUS_VAR;
use slurm_spank::{spank_log, Context, LogLevel, Plugin, SpankHandle, SpankOption};

use gres_oci::plugin_args::{self as args, settings, Settings, SiteArgs, OPT_CAPS, OPT_ENABLE};
use gres_oci::slurm_step::{
    self as resolve, step_name, GpuEnv, NodeGpu, BATCH_STEP, INTERACTIVE_STEP, SPECIAL_STEPS,
};
use node::{devices_constrained, node_gpus, node_name, step_imex_channels, step_nics};

/// `SLURM_VERSION_NUMBER` of the headers found by build.rs (SLURM_INCLUDE_DIR).
pub const SLURM_VERSION_NUMBER: u32 = parse_hex(env!("GRES_OCI_SPANK_SLURM_VERSION"));

// slurm-spank's bindgen read `<slurm/spank.h>` on its own include path; if that was another
// Slurm than SLURM_INCLUDE_DIR, the bindings and our version would disagree.
const _: () = assert!(
    SLURM_VERSION_NUMBER == slurm_spank::SLURM_VERSION_NUMBER,
    "slurm-spank's bindings and SLURM_INCLUDE_DIR come from different Slurm releases: \
     set BINDGEN_EXTRA_CLANG_ARGS=-I$SLURM_INCLUDE_DIR as well"
);

const fn parse_hex(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 2; // after "0x"
    let mut v: u32 = 0;
    while i < b.len() {
        let d = match b[i] {
            c @ b'0'..=b'9' => c - b'0',
            c @ b'a'..=b'f' => c - b'a' + 10,
            c @ b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("bad SLURM_VERSION_NUMBER"),
        };
        v = v * 16 + d as u32;
        i += 1;
    }
    v
}

/// The first release whose `--container` receives the final step environment.
const FIRST_UNPATCHED: (u32, u32) = (23, 2);

/// Everything that can stop the plugin, each with a message naming the file or value.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(transparent)]
    Args(#[from] args::ArgError),
    #[error(transparent)]
    Config(#[from] gres_oci::config::ConfigError),
    #[error("gres.conf")]
    Gres(#[from] GresError),
    #[error(transparent)]
    Resolve(#[from] resolve::ResolveError),
    #[error("{what}")]
    Inventory {
        what: String,
        #[source]
        source: gres_oci::inventory::InventoryError,
    },
    #[error(
        "gres.conf {conf} relies on AutoDetect for node {node:?}, and /dev/nvidia{minor} has MIG \
         devices, which only NVML lists: name them in gres.conf with MultipleFiles="
    )]
    MigWithoutFiles {
        conf: std::path::PathBuf,
        node: String,
        minor: u32,
    },
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error(transparent)]
    Record(Box<gres_oci::allocation::AllocationError>),
    #[error("{0}")]
    Spank(String),
}

/// What `user_init` learned about the step, kept for the task callbacks (slurmstepd forks the
/// tasks from the process that ran `user_init`, so they inherit it).
#[derive(Debug, Clone)]
struct Step {
    settings: Settings,
    node: String,
    table: Vec<NodeGpu>,
    /// The step's Slurm indices on this node, ascending.
    list: Vec<usize>,
    container: bool,
    batch: bool,
    job_id: u32,
    /// The step as slurmstepd names itself (`0`, `batch`), for the allocation records.
    step_name: String,
    /// Where the allocation records go (root-only), from the config.
    state_dir: std::path::PathBuf,
    /// The step's MPS share in percent, as Slurm's gres/mps set it.
    mps: Option<u32>,
    /// The IMEX channels in the step's own `/dev` (Slurm's switch/nvidia_imex makes them).
    imex_channels: Vec<u32>,
    /// The step's gres/nic adapters, as device numbers (with `mofed-step-nics`).
    nics: Vec<DevNum>,
}

impl Step {
    fn kind(&self) -> resolve::StepKind<'_> {
        resolve::StepKind {
            container: self.container,
            caps: self.settings.caps.as_deref(),
            mps: self.mps,
        }
    }
}

/// The plugin's state across callbacks.
#[derive(Default)]
pub struct GresOci {
    site: Option<SiteArgs>,
    step: Option<Step>,
    /// An error from `user_init`, reported by each task. A failing `user_init` makes Slurm
    /// 22.05 print "Slurmd could not execve job" yet srun exits 0; a failing `task_init`
    /// makes the task exit 1, so the step visibly fails.
    deferred: Option<PluginError>,
}

fn log(level: LogLevel, msg: &str) {
    spank_log(level, &format!("gres-oci: {msg}"));
}

/// Logs `e` with its causes at error level, after `what` (the callback).
fn log_error(what: &str, e: &PluginError) {
    log(
        LogLevel::Error,
        &format!("{what}: {}", gres_oci::error_chain(e)),
    );
}

/// Reports `e` as the contract says: under `required` one line the user sees on stderr
/// (slurmstepd copies error-level lines to the step's stderr), under `optional` only an
/// info line in slurmd's log; either way the callback fails, which Slurm ignores for
/// optional plugins.
fn report(e: PluginError) -> Box<dyn Error> {
    let msg = format!("gres-oci: {}", gres_oci::error_chain(&e));
    if ffi::required() == Some(false) {
        spank_log(
            LogLevel::Info,
            &format!("{msg} (optional plugin, step continues)"),
        );
    } else {
        slurm_spank::slurm_spank_log(&msg);
    }
    Box::new(e)
}

fn spank_err(what: &str, e: impl std::fmt::Display) -> PluginError {
    PluginError::Spank(format!("{what}: {e}"))
}

fn getenv(h: &SpankHandle, name: &str) -> Result<Option<String>, PluginError> {
    h.getenv(name)
        .map_err(|e| spank_err(&format!("reading {name}"), e))
}

fn setenv(h: &SpankHandle, name: &str, value: &str) -> Result<(), PluginError> {
    h.setenv(name, value, true)
        .map_err(|e| spank_err(&format!("setting {name}"), e))
}

impl GresOci {
    fn site(&self) -> SiteArgs {
        self.site.clone().unwrap_or_default()
    }

    fn options(&self, h: &SpankHandle) -> Result<Settings, PluginError> {
        let enable = h
            .get_option_value(OPT_ENABLE)
            .map_err(|e| spank_err("--gres-oci", e))?;
        let caps = h
            .get_option_value(OPT_CAPS)
            .map_err(|e| spank_err("--gres-oci-caps", e))?;
        Ok(settings(&self.site(), enable.as_deref(), caps.as_deref())?)
    }

    fn init_inner(&mut self, h: &mut SpankHandle) -> Result<(), PluginError> {
        let ctx = h.context().map_err(|e| spank_err("spank_context", e))?;
        if matches!(ctx, Context::Local | Context::Remote | Context::Allocator) {
            for opt in [
                SpankOption::new(OPT_ENABLE).takes_value("on|off").usage(
                    "gres-oci: give this job's containers its GPUs (on) or leave them alone (off)",
                ),
                SpankOption::new(OPT_CAPS).takes_value("LIST").usage(
                    "gres-oci: NVIDIA driver capabilities for the containers, e.g. compute,utility",
                ),
            ] {
                h.register_option(opt)
                    .map_err(|e| spank_err("registering an option", e))?;
            }
        }
        let argv = h
            .plugin_argv()
            .map_err(|e| spank_err("plugstack.conf arguments", e))?;
        self.site = Some(SiteArgs::parse(argv)?);
        if matches!(ctx, Context::Slurmd) {
            // The state dir exists from slurmd's start on, so its presence says the plugin is
            // deployed here: the hook then refuses containers that no record vouches for,
            // even before the first step (and after a reboot emptied /run).
            let config = Config::load(self.site().config.as_deref())?;
            ensure_state_dir(&config.state_dir).map_err(|e| PluginError::Record(e.into()))?;
        }
        Ok(())
    }

    /// The plugstack.conf arguments, where `init` has not parsed them (the prolog and epilog).
    fn load_site(&mut self, h: &SpankHandle) -> Result<(), PluginError> {
        if self.site.is_none() {
            let argv = h
                .plugin_argv()
                .map_err(|e| spank_err("plugstack.conf arguments", e))?;
            self.site = Some(SiteArgs::parse(argv)?);
        }
        Ok(())
    }

    /// The job's record on this node, from the prolog's environment.
    fn job_record(&mut self, h: &SpankHandle) -> Result<(), PluginError> {
        self.load_site(h)?;
        let config = Config::load(self.site().config.as_deref())?;
        let job: u32 = std::env::var("SLURM_JOB_ID")
            .ok()
            .and_then(|j| j.parse().ok())
            .ok_or_else(|| PluginError::Spank("SLURM_JOB_ID: not set in the prolog".into()))?;
        let value = std::env::var("SLURM_JOB_GPUS").unwrap_or_default();
        let list = resolve::parse_list("SLURM_JOB_GPUS", &value)?;
        let node = node_name();
        let table = if list.is_empty() {
            Vec::new()
        } else {
            node_gpus(&config, &GresConf::read(&config.gres_conf)?, &node)?
        };
        let gpus = resolve::select(&table, &list, &node)?;
        let mps = std::env::var("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE").ok();
        let record = Record {
            job,
            step: JOB_RECORD.into(),
            stepd_pid: 0,
            task_pid: None,
            task_id: None,
            gpus: gpus.iter().map(|g| g.physical_id()).collect(),
            mps: resolve::mps_percentage(mps.as_deref())?.is_some(),
            imex_channels: Vec::new(),
            nics: Vec::new(),
        };
        write_record(&config.state_dir, &record).map_err(|e| PluginError::Record(e.into()))
    }

    fn user_init_inner(&mut self, h: &mut SpankHandle) -> Result<(), PluginError> {
        let settings = self.options(h)?;
        let step_id = h.job_stepid().map_err(|e| spank_err("S_JOB_STEPID", e))?;
        let batch = step_id == BATCH_STEP;
        // The batch and interactive steps carry the job's list: Slurm sets SLURM_JOB_GPUS there
        // (gres_g_job_set_env) and never SLURM_STEP_GPUS, which is then whatever the submitter
        // exported. srun steps get SLURM_STEP_GPUS set or unset by Slurm (gres_g_step_set_env)
        // before this callback. Each step type reads only the variable Slurm sets for it.
        let job_level = batch || step_id == INTERACTIVE_STEP;
        if step_id > SPECIAL_STEPS && !job_level {
            return Ok(());
        }
        let job_id = h.job_id().map_err(|e| spank_err("S_JOB_ID", e))?;
        let container = getenv(h, "SLURM_CONTAINER")?.is_some_and(|c| !c.is_empty());
        let site = self.site();
        let var = if job_level {
            "SLURM_JOB_GPUS"
        } else {
            "SLURM_STEP_GPUS"
        };
        let value = getenv(h, var)?;
        // Set or unset by Slurm's gres/mps for every job and step, like the GPU lists.
        let mps_value = getenv(h, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")?;
        // Set or unset by Slurm's gres/nic like the GPU lists, where GresTypes has nic.
        let nic_var = if job_level {
            "SLURM_JOB_NICS"
        } else {
            "SLURM_STEP_NICS"
        };
        let nic_value = getenv(h, nic_var)?;
        let node = node_name();
        // The step's GPUs are resolved even when the user opts out: the record that bounds the
        // step's containers is not the user's to switch off.
        let resolved = (|| -> Result<(Step, GpuEnv), PluginError> {
            let config = Config::load(site.config.as_deref())?;
            let list = resolve::parse_list(var, value.as_deref().unwrap_or(""))?;
            let nic_list = nic_value.as_deref().unwrap_or("").trim();
            let nic_list = if config.mofed_step_nics { nic_list } else { "" };
            // Read once, and only by a step with GPUs or NICs to look up.
            let conf = if list.is_empty() && nic_list.is_empty() {
                None
            } else {
                Some(GresConf::read(&config.gres_conf)?)
            };
            let table = match &conf {
                Some(c) if !list.is_empty() => node_gpus(&config, c, &node)?,
                _ => Vec::new(),
            };
            let gpus = resolve::select(&table, &list, &node)?;
            let env = resolve::gpu_env(&gpus);
            let mut list: Vec<usize> = gpus.iter().map(|g| g.index).collect();
            list.sort_unstable();
            let nics = match &conf {
                Some(c) if !nic_list.is_empty() => step_nics(c, &node, nic_var, nic_list)?,
                _ => Vec::new(),
            };
            let step = Step {
                settings: settings.clone(),
                node: node.clone(),
                table,
                list,
                container,
                batch,
                job_id,
                step_name: step_name(step_id),
                state_dir: config.state_dir.clone(),
                mps: resolve::mps_percentage(mps_value.as_deref())?,
                imex_channels: step_imex_channels(&config),
                nics,
            };
            Ok((step, env))
        })();
        if !settings.enabled {
            // srun carries the batch script's environment into its steps; a list inherited
            // from a gres-oci step would name GPUs this step may not have.
            if getenv(h, GPUS_VAR)?.is_some() {
                for var in [GPUS_VAR, "NVIDIA_VISIBLE_DEVICES"] {
                    h.unsetenv(var)
                        .map_err(|e| spank_err(&format!("unsetting {var}"), e))?;
                }
            }
            let step = match resolved {
                Ok((step, _)) => step,
                Err(e) => {
                    log(
                        LogLevel::Verbose,
                        &format!(
                            "{}; no allocation record for this opted-out step",
                            gres_oci::error_chain(&e)
                        ),
                    );
                    // No state dir: no record is written.
                    Step {
                        settings,
                        node: String::new(),
                        table: Vec::new(),
                        list: Vec::new(),
                        container,
                        batch,
                        job_id,
                        step_name: step_name(step_id),
                        state_dir: Default::default(),
                        mps: None,
                        imex_channels: Vec::new(),
                        nics: Vec::new(),
                    }
                }
            };
            self.step = Some(step);
            return Ok(());
        }
        let (step, env) = resolved?;
        set_env(h, &step, &env)?;
        self.step = Some(step);
        Ok(())
    }

    fn task_init_inner(&mut self, h: &mut SpankHandle) -> Result<(), PluginError> {
        let Some(step) = self.step.clone() else {
            return Ok(());
        };
        if !step.settings.enabled {
            if step.container && needs_spool_patch(h) && devices_constrained() == Some(true) {
                let patch = spool::Patch {
                    inherit_devices: true,
                    ..spool::Patch::default()
                };
                self.patch_spool(&step, &patch)?;
            }
            return Ok(());
        }
        // The task's own GPUs, decided once for its variables and the spool patch.
        let mine = if step.batch {
            step.list.clone()
        } else {
            let bind_text = getenv(h, "SLURMD_TRES_BIND")?.unwrap_or_default();
            let task_value = getenv(h, "SLURM_STEP_GPUS")?.unwrap_or_default();
            let local_id = h.task_id().map_err(|e| spank_err("S_TASK_ID", e))?;
            resolve::task_list(
                &step.list,
                step.table.len(),
                &bind_text,
                &task_value,
                u32::try_from(local_id).unwrap_or(0),
                devices_constrained(),
            )?
        };
        let narrowed = mine != step.list;
        let patch = step.container && needs_spool_patch(h);
        if narrowed || patch {
            let chosen = resolve::choose(&step.table, &mine, &step.node)?;
            if narrowed {
                set_env(h, &step, &chosen.env)?;
            }
            if patch {
                let patch = self.spool_patch(&step, &chosen.env);
                self.patch_spool(&step, &patch)?;
            }
        }
        Ok(())
    }

    fn spool_patch(&self, step: &Step, env: &GpuEnv) -> spool::Patch {
        let site = self.site();
        spool::Patch {
            set_env: resolve::step_vars(env, &step.kind()),
            unset_env: if env.container_cvd.is_none() {
                vec!["CUDA_VISIBLE_DEVICES".into()]
            } else {
                Vec::new()
            },
            annotation: Some(env.gres_oci_gpus.clone()),
            hook: site.hook.map(|path| spool::Hook {
                path,
                config: site.config.clone(),
            }),
            inherit_devices: devices_constrained() == Some(true),
        }
    }

    fn patch_spool(&self, step: &Step, patch: &spool::Patch) -> Result<(), PluginError> {
        let cwd =
            std::env::current_dir().map_err(|e| spank_err("the task's working directory", e))?;
        match spool::patch_dir(&cwd, step.job_id, patch)? {
            Some(c) => log(
                LogLevel::Verbose,
                &format!(
                    "patched {}/config.json: {} env entries, hook added: {}, devices inherited: {}",
                    cwd.display(),
                    c.env,
                    c.hook_added,
                    c.devices_inherited
                ),
            ),
            None => log(
                LogLevel::Verbose,
                &format!(
                    "no Slurm container config in {}; nothing patched",
                    cwd.display()
                ),
            ),
        }
        Ok(())
    }
}

/// The allocation records of this task and its step: the step's GPUs, with the task's local
/// id and pid and its slurmstepd's pid. Written as root in `task_init_privileged`, before
/// slurmstepd has put the task's binding (`SLURMD_TRES_BIND`) into its environment; the hook
/// narrows to the task's own GPUs from the task's environment and its device cgroup. The step
/// record is the same for every task, so only local task 0 (every step has one on each of its
/// nodes) writes it.
fn task_records(step: &Step, h: &SpankHandle) -> Result<Vec<Record>, PluginError> {
    let ids = resolve::choose(&step.table, &step.list, &step.node)?.ids;
    let task_id = u32::try_from(h.task_id().map_err(|e| spank_err("S_TASK_ID", e))?)
        .map_err(|e| spank_err("S_TASK_ID", e))?;
    let step_record = Record {
        job: step.job_id,
        step: step.step_name.clone(),
        // SAFETY: getppid has no preconditions. The task is a child of slurmstepd.
        stepd_pid: unsafe { libc::getppid() },
        task_pid: None,
        task_id: None,
        gpus: ids,
        mps: step.mps.is_some(),
        imex_channels: step.imex_channels.clone(),
        nics: step.nics.clone(),
    };
    let task_record = Record {
        task_pid: Some(std::process::id() as i32),
        task_id: Some(task_id),
        ..step_record.clone()
    };
    Ok(if task_id == 0 {
        vec![task_record, step_record]
    } else {
        vec![task_record]
    })
}

fn set_env(h: &SpankHandle, step: &Step, env: &GpuEnv) -> Result<(), PluginError> {
    for (k, v) in resolve::step_vars(env, &step.kind()) {
        setenv(h, &k, &v)?;
    }
    Ok(())
}

/// Whether this Slurm writes the container config before the GPU variables exist (22.05).
fn needs_spool_patch(h: &SpankHandle) -> bool {
    let major = h.slurm_version_major().ok().map(str::to_owned);
    let minor = h.slurm_version_minor().ok().map(str::to_owned);
    spool_patch_needed(major.as_deref(), minor.as_deref())
}

/// [`needs_spool_patch`] on the `S_SLURM_VERSION_MAJOR`/`_MINOR` items; the build's headers
/// stand in when Slurm does not answer.
fn spool_patch_needed(major: Option<&str>, minor: Option<&str>) -> bool {
    let running = major
        .and_then(|m| m.trim().parse::<u32>().ok())
        .zip(minor.and_then(|m| m.trim().parse::<u32>().ok()));
    let built = (
        SLURM_VERSION_NUMBER >> 16,
        (SLURM_VERSION_NUMBER >> 8) & 0xff,
    );
    running.unwrap_or(built) < FIRST_UNPATCHED
}

// SAFETY: no callback starts a thread (the task callbacks run in forked children of
// slurmstepd) and all state is plain data.
unsafe impl Plugin for GresOci {
    fn init(&mut self, h: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        match self.init_inner(h) {
            Ok(()) => Ok(()),
            // In slurmd itself (and prolog/epilog) a bad plugstack.conf argument must not take
            // the node down: log it; every step will fail on it with the message instead.
            Err(e)
                if !matches!(
                    h.context(),
                    Ok(Context::Local | Context::Remote | Context::Allocator)
                ) =>
            {
                log(LogLevel::Error, &e.to_string());
                Ok(())
            }
            Err(e) => Err(report(e)),
        }
    }

    fn init_post_opt(&mut self, h: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        // In srun/sbatch/salloc, reject a bad option before the job is even submitted.
        match h.context() {
            Ok(Context::Local | Context::Allocator) => self.options(h).map(|_| ()).map_err(report),
            _ => Ok(()),
        }
    }

    fn user_init(&mut self, h: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        if let Err(e) = self.user_init_inner(h) {
            log(
                LogLevel::Verbose,
                &format!("{} (reported by the tasks)", gres_oci::error_chain(&e)),
            );
            self.deferred = Some(e);
        }
        Ok(())
    }

    fn task_init(&mut self, h: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        match self.deferred.take() {
            Some(e) => {
                // One line per node, not per task: the other tasks fail quietly.
                if h.task_id().unwrap_or(0) == 0 {
                    Err(report(e))
                } else {
                    Err(Box::new(e))
                }
            }
            None => self.task_init_inner(h).map_err(report),
        }
    }

    fn task_init_privileged(&mut self, h: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        // Nothing to record for a step we do not serve, or one whose GPUs were not resolved;
        // an error from user_init is reported by task_init.
        let Some(step) = self
            .step
            .clone()
            .filter(|s| !s.state_dir.as_os_str().is_empty())
        else {
            return Ok(());
        };
        if self.deferred.is_some() {
            return Ok(());
        }
        let result = task_records(&step, h).and_then(|records| {
            records.iter().try_for_each(|r| {
                write_record(&step.state_dir, r).map_err(|e| PluginError::Record(e.into()))
            })
        });
        match result {
            Ok(()) => {}
            Err(e) if step.settings.enabled => self.deferred = Some(e),
            Err(e) => log(LogLevel::Error, &gres_oci::error_chain(&e)),
        }
        Ok(())
    }

    fn job_prolog(&mut self, h: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        // In slurmd's prolog, as root: the job's GPUs on this node, from the SLURM_JOB_GPUS
        // slurmd put into the prolog's environment (the user's environment never reaches it).
        // A failing prolog drains the node, so errors are logged, not returned: the hook then
        // simply has no job record (steps keep their own; the extern step gets nothing).
        if let Err(e) = self.job_record(h) {
            log_error("job prolog", &e);
        }
        Ok(())
    }

    fn job_epilog(&mut self, h: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        if let Err(e) = self.load_site(h) {
            log_error("job epilog", &e);
            return Ok(());
        }
        let site = self.site();
        if let (Ok(config), Some(job)) = (
            Config::load(site.config.as_deref()),
            std::env::var("SLURM_JOB_ID")
                .ok()
                .and_then(|j| j.parse().ok()),
        ) {
            remove_job(&config.state_dir, job);
        }
        Ok(())
    }

    fn exit(&mut self, h: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        // In slurmstepd at the end of the step: drop this step's records, and any a crashed
        // slurmstepd left (the hook ignores those anyway).
        if !matches!(h.context(), Ok(Context::Remote)) {
            return Ok(());
        }
        if let Some(step) = self
            .step
            .as_ref()
            .filter(|s| !s.state_dir.as_os_str().is_empty())
        {
            remove_step(
                &step.state_dir,
                step.job_id,
                &step.step_name,
                std::process::id() as i32,
            );
            sweep_stale(&step.state_dir, Path::new("/proc"));
        }
        Ok(())
    }

    fn setup(&mut self, _h: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        // No tracing subscriber: messages go straight to Slurm's log functions.
        Ok(())
    }

    fn report_error(&self, _h: &mut SpankHandle, _e: &dyn Error) {
        // Already reported by `report`.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_patch_only_before_23_02() {
        assert!(spool_patch_needed(Some("22"), Some("05")));
        assert!(spool_patch_needed(Some("21"), Some("08")));
        assert!(!spool_patch_needed(Some("23"), Some("02")));
        assert!(!spool_patch_needed(Some("24"), Some("11")));
        // Unknown: the headers we were built against (22.05 here) decide.
        let built = (
            SLURM_VERSION_NUMBER >> 16,
            (SLURM_VERSION_NUMBER >> 8) & 0xff,
        );
        assert_eq!(spool_patch_needed(None, Some("x")), built < FIRST_UNPATCHED);
    }

    #[test]
    fn version_constant_matches_headers() {
        assert_eq!(parse_hex("0x160508"), 0x0016_0508);
        assert_eq!(SLURM_VERSION_NUMBER, slurm_spank::SLURM_VERSION_NUMBER);
    }
}
