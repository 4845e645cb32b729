//! The one TOML file that configures both the hook and the plugin: NVIDIA's `config.toml`
//! format read as is, plus our own `[gres-oci]` table. Parsing only; no path here is touched.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::nvidia_env::{parse_capability_list, Capabilities, Capability};

/// Where the hook looks when no `-config` is given.
pub const DEFAULT_CONFIG: &str = "/etc/gres-oci/config.toml";
/// NVIDIA's file, read when ours is missing, so a site can switch hooks without a new config.
pub const NVIDIA_CONFIG: &str = "/etc/nvidia-container-runtime/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// toml's message names the key, the line and the expected type.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// How the container's linker cache is rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Ldconfig {
    /// `@/sbin/ldconfig`: a binary on the host, never one from the image (CVE-2025-23266 class).
    Host(PathBuf),
    /// `ldconfig = ""`: do not touch the linker cache.
    Disabled,
}

impl OutsideSlurm {
    /// Why a container in no Slurm job gets no GPU under this policy, or `None` when it may
    /// have what it asks for. `deployed`: the plugin's `state_dir` exists on this node.
    pub fn refusal(self, state_dir: &Path, deployed: bool) -> Option<String> {
        match self {
            OutsideSlurm::Allow => None,
            OutsideSlurm::Auto if !deployed => None,
            OutsideSlurm::Auto => Some(format!(
                "this node runs gres-oci's Slurm plugin ({} exists)",
                state_dir.display()
            )),
            OutsideSlurm::Deny => Some("the node's policy (outside-slurm = \"deny\")".into()),
        }
    }
}

/// The host binary to run for the configured ldconfig `path`: Ubuntu's `/sbin/ldconfig` is a
/// shell wrapper around `ldconfig.real`, which is taken instead where `exists` says it is there.
pub fn host_ldconfig_binary(path: &Path, exists: impl Fn(&Path) -> bool) -> PathBuf {
    let real = PathBuf::from(format!("{}.real", path.display()));
    if path == Path::new("/sbin/ldconfig") && exists(&real) {
        real
    } else {
        path.to_owned()
    }
}

/// The policy for containers that are not in a Slurm step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutsideSlurm {
    /// `deny` where the SPANK plugin is deployed (its state dir exists: the plugin makes it
    /// when slurmd loads it), `allow` elsewhere.
    Auto,
    /// Whatever the container asks for (a plain podman or runc host, root-run health checks).
    Allow,
    /// No GPU at all: on a Slurm-only node, a container outside a step is an escape attempt.
    Deny,
}

/// The validated configuration, with every default filled in.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Config {
    /// The file this came from; `None` when no file existed and defaults apply.
    pub source: Option<PathBuf>,
    pub disable_require: bool,
    pub supported_capabilities: Capabilities,
    /// `[nvidia-container-cli] root`: where the driver's files live on the host.
    pub driver_root: PathBuf,
    pub ldconfig: Ldconfig,
    pub no_cgroups: bool,
    pub dev_root: PathBuf,
    pub proc_root: PathBuf,
    pub nvml_library: Option<PathBuf>,
    pub gres_conf: PathBuf,
    pub log_file: Option<PathBuf>,
    pub log_level: String,
    /// Directories (inside the driver root) searched for driver libraries the cache lacks.
    pub library_search_dirs: Vec<PathBuf>,
    /// Directories (inside the driver root) searched for the driver's binaries.
    pub binary_search_dirs: Vec<PathBuf>,
    /// Where the SPANK plugin records each step's GPUs (root-only).
    pub state_dir: PathBuf,
    /// What a container outside any Slurm step may have.
    pub outside_slurm: OutsideSlurm,
    /// Fabric devices every GPU container gets, as if it set `NVIDIA_<NAME>=enabled`.
    pub fabric_devices: Vec<crate::fabric::Fabric>,
    /// In a Slurm step, MOFED gives only the step's gres/nic adapters (`mofed-step-nics`).
    pub mofed_step_nics: bool,
    /// Whether an image's CUDA forward-compat libraries come first when NVIDIA's rule says so.
    pub cuda_compat: CudaCompatMode,
    /// Show the container only its own GPUs under `/proc/driver/nvidia`, with
    /// `ModifyDeviceFiles: 0` (`mask-proc-driver`, default on).
    pub mask_proc_driver: bool,
    /// Keys of NVIDIA's format that are accepted and have no effect here.
    pub ignored_keys: Vec<String>,
}

/// `cuda-compat-mode`: NVIDIA's default, `ldconfig` (the image's compat libraries first in the
/// linker cache when the rule says so), or `disabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CudaCompatMode {
    Ldconfig,
    Disabled,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: None,
            disable_require: false,
            supported_capabilities: Capability::ALL.into_iter().collect(),
            driver_root: PathBuf::from("/"),
            ldconfig: Ldconfig::Host(PathBuf::from("/sbin/ldconfig")),
            no_cgroups: false,
            dev_root: PathBuf::from("/dev"),
            proc_root: PathBuf::from("/proc"),
            nvml_library: None,
            gres_conf: PathBuf::from("/etc/slurm/gres.conf"),
            log_file: None,
            log_level: "info".into(),
            library_search_dirs: Vec::new(),
            binary_search_dirs: ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"]
                .iter()
                .map(PathBuf::from)
                .collect(),
            state_dir: PathBuf::from("/run/gres-oci"),
            outside_slurm: OutsideSlurm::Auto,
            fabric_devices: Vec::new(),
            mofed_step_nics: false,
            cuda_compat: CudaCompatMode::Ldconfig,
            mask_proc_driver: true,
            ignored_keys: Vec::new(),
        }
    }
}

// The raw shapes. NVIDIA's tables tolerate unknown keys (their format grows every release and
// a site's existing file must load); our own table does not, so typos are caught.
#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct RawFile {
    disable_require: Option<bool>,
    supported_driver_capabilities: Option<String>,
    nvidia_container_cli: Option<RawCli>,
    gres_oci: Option<RawOurs>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct RawCli {
    root: Option<PathBuf>,
    ldconfig: Option<String>,
    no_cgroups: Option<bool>,
    debug: Option<PathBuf>,
    environment: Option<Vec<String>>,
    load_kmods: Option<bool>,
    path: Option<PathBuf>,
    user: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawOurs {
    dev_root: Option<PathBuf>,
    proc_root: Option<PathBuf>,
    nvml_library: Option<PathBuf>,
    gres_conf: Option<PathBuf>,
    log_file: Option<PathBuf>,
    log_level: Option<String>,
    library_search_dirs: Option<Vec<PathBuf>>,
    binary_search_dirs: Option<Vec<PathBuf>>,
    state_dir: Option<PathBuf>,
    outside_slurm: Option<OutsideSlurm>,
    fabric_devices: Option<Vec<crate::fabric::Fabric>>,
    mofed_step_nics: Option<bool>,
    cuda_compat_mode: Option<CudaCompatMode>,
    mask_proc_driver: Option<bool>,
}

impl Config {
    /// Parses `text`; `path` names the file in messages.
    ///
    /// # Errors
    /// Syntax errors, wrong types, unknown keys in `[gres-oci]`, or invalid values, each naming
    /// the key and the file.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            // toml's Display spans several lines (a source excerpt); keep the first and the
            // message proper so errors stay on one line.
            message: one_line(&e),
        })?;
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        let mut c = Config {
            source: Some(path.to_owned()),
            ..Config::default()
        };
        if let Some(v) = raw.disable_require {
            c.disable_require = v;
        }
        if let Some(v) = raw.supported_driver_capabilities {
            c.supported_capabilities = parse_capability_list(&v)
                .map_err(|e| invalid("supported-driver-capabilities", e.to_string()))?;
        }
        let cli = raw.nvidia_container_cli.unwrap_or_default();
        if let Some(root) = cli.root {
            c.driver_root = absolute(root).map_err(|m| invalid("nvidia-container-cli.root", m))?;
        }
        if let Some(l) = cli.ldconfig {
            c.ldconfig =
                parse_ldconfig(&l).map_err(|m| invalid("nvidia-container-cli.ldconfig", m))?;
        }
        if let Some(v) = cli.no_cgroups {
            c.no_cgroups = v;
        }
        if let Some(d) = cli.debug {
            c.log_file = Some(d);
        }
        // NVIDIA hands `environment` to its CLI process; gres-oci starts no such process and
        // gives its helpers an empty environment, so the entries are only checked.
        if let Some(env) = &cli.environment {
            if let Some(e) = env.iter().find(|e| !e.contains('=')) {
                return Err(invalid(
                    "nvidia-container-cli.environment",
                    format!("entry {e:?} has no '='"),
                ));
            }
        }
        for (key, set) in [
            ("environment", cli.environment.is_some()),
            ("load-kmods", cli.load_kmods.is_some()),
            ("path", cli.path.is_some()),
            ("user", cli.user.is_some()),
        ] {
            if set {
                c.ignored_keys.push(format!("nvidia-container-cli.{key}"));
            }
        }
        let ours = raw.gres_oci.unwrap_or_default();
        macro_rules! abs {
            ($field:ident, $key:literal) => {
                if let Some(p) = ours.$field {
                    c.$field = absolute(p).map_err(|m| invalid($key, m))?;
                }
            };
        }
        abs!(dev_root, "gres-oci.dev-root");
        abs!(proc_root, "gres-oci.proc-root");
        abs!(gres_conf, "gres-oci.gres-conf");
        abs!(state_dir, "gres-oci.state-dir");
        if let Some(p) = ours.outside_slurm {
            c.outside_slurm = p;
        }
        if let Some(f) = ours.fabric_devices {
            c.fabric_devices = f;
        }
        if let Some(m) = ours.mofed_step_nics {
            c.mofed_step_nics = m;
        }
        if let Some(m) = ours.cuda_compat_mode {
            c.cuda_compat = m;
        }
        if let Some(m) = ours.mask_proc_driver {
            c.mask_proc_driver = m;
        }
        if let Some(p) = ours.nvml_library {
            c.nvml_library = Some(absolute(p).map_err(|m| invalid("gres-oci.nvml-library", m))?);
        }
        if let Some(p) = ours.log_file {
            c.log_file = Some(p);
        }
        if let Some(l) = ours.log_level {
            if !matches!(l.as_str(), "error" | "warn" | "info" | "debug" | "trace") {
                return Err(invalid(
                    "gres-oci.log-level",
                    format!("{l:?} is not one of error, warn, info, debug, trace"),
                ));
            }
            c.log_level = l;
        }
        if let Some(d) = ours.library_search_dirs {
            c.library_search_dirs = d;
        }
        if let Some(d) = ours.binary_search_dirs {
            c.binary_search_dirs = d;
        }
        Ok(c)
    }

    /// Reads the config: `explicit` if given (it must exist), else [`DEFAULT_CONFIG`], else
    /// [`NVIDIA_CONFIG`], else the defaults.
    ///
    /// # Errors
    /// An unreadable or invalid file; a missing explicit file.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        if let Some(p) = explicit {
            return Self::read(p);
        }
        for candidate in [DEFAULT_CONFIG, NVIDIA_CONFIG] {
            let p = Path::new(candidate);
            match std::fs::read_to_string(p) {
                Ok(text) => return Self::parse(&text, p),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(ConfigError::Read {
                        path: p.to_owned(),
                        source,
                    })
                }
            }
        }
        Ok(Config::default())
    }

    /// Reads and parses one file.
    ///
    /// # Errors
    /// As [`Config::parse`], or the file cannot be read.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }
}

fn one_line(e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(_) => {
            // The first line of Display is "TOML parse error at line L, column C".
            let first = e.to_string();
            let loc = first
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("TOML parse error at ");
            format!("{loc}: {msg}")
        }
        None => msg,
    }
}

fn absolute(p: PathBuf) -> Result<PathBuf, String> {
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(format!("{} is not an absolute path", p.display()))
    }
}

fn parse_ldconfig(v: &str) -> Result<Ldconfig, String> {
    if v.is_empty() {
        return Ok(Ldconfig::Disabled);
    }
    match v.strip_prefix('@') {
        Some(host) if host.starts_with('/') => Ok(Ldconfig::Host(PathBuf::from(host))),
        Some(host) => Err(format!("@{host}: the host path must be absolute")),
        // A path without '@' names a binary inside the image: running it as root on the host's
        // behalf is what NVIDIA's 1.17.4 security fix forbade, so it is refused outright.
        None => Err(format!(
            "{v:?} names a binary in the container; only a host binary (\"@/sbin/ldconfig\") is allowed"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_slurm_policy() {
        let d = Path::new("/run/gres-oci");
        assert_eq!(OutsideSlurm::Allow.refusal(d, true), None);
        assert_eq!(OutsideSlurm::Auto.refusal(d, false), None);
        assert_eq!(
            OutsideSlurm::Auto.refusal(d, true).unwrap(),
            "this node runs gres-oci's Slurm plugin (/run/gres-oci exists)"
        );
        assert_eq!(
            OutsideSlurm::Deny.refusal(d, false).unwrap(),
            "the node's policy (outside-slurm = \"deny\")"
        );
    }

    #[test]
    fn ldconfig_real_only_behind_the_sbin_wrapper() {
        let yes = |_: &Path| true;
        let no = |_: &Path| false;
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            host_ldconfig_binary(&p("/sbin/ldconfig"), yes),
            p("/sbin/ldconfig.real")
        );
        assert_eq!(
            host_ldconfig_binary(&p("/sbin/ldconfig"), no),
            p("/sbin/ldconfig")
        );
        assert_eq!(
            host_ldconfig_binary(&p("/usr/sbin/ldconfig"), yes),
            p("/usr/sbin/ldconfig")
        );
    }

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("/etc/gres-oci/config.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(
            Config {
                source: c.source.clone(),
                ..Config::default()
            },
            c
        );
        assert_eq!(c.supported_capabilities.len(), 7);
        assert_eq!(c.ldconfig, Ldconfig::Host("/sbin/ldconfig".into()));
    }

    #[test]
    fn nvidia_file_as_shipped_loads() {
        // NVIDIA's current default file, abridged but with every table it ships.
        let text = r#"
disable-require = false
supported-driver-capabilities = "compat32,compute,display,graphics,ngx,utility,video"
#swarm-resource = "DOCKER_RESOURCE_GPU"
accept-nvidia-visible-devices-envvar-when-unprivileged = true

[nvidia-container-cli]
root = "/run/nvidia/driver"
path = "/usr/bin/nvidia-container-cli"
environment = ["A=b=c"]
debug = "/var/log/nvidia-container-toolkit.log"
load-kmods = true
no-cgroups = true
user = "root:video"
ldconfig = "@/sbin/ldconfig.real"

[nvidia-container-runtime]
log-level = "info"
mode = "auto"
runtimes = ["docker-runc", "runc", "crun"]
[nvidia-container-runtime.modes.cdi]
default-kind = "nvidia.com/gpu"

[nvidia-container-runtime-hook]
path = "nvidia-container-runtime-hook"
skip-mode-detection = false

[nvidia-ctk]
path = "nvidia-ctk"
"#;
        let c = parse(text).unwrap();
        assert_eq!(c.driver_root, PathBuf::from("/run/nvidia/driver"));
        assert_eq!(c.ldconfig, Ldconfig::Host("/sbin/ldconfig.real".into()));
        assert!(c.no_cgroups);
        assert_eq!(
            c.log_file,
            Some(PathBuf::from("/var/log/nvidia-container-toolkit.log"))
        );
        assert_eq!(
            c.ignored_keys,
            vec![
                "nvidia-container-cli.environment",
                "nvidia-container-cli.load-kmods",
                "nvidia-container-cli.path",
                "nvidia-container-cli.user"
            ]
        );
    }

    #[test]
    fn our_table() {
        let c = parse(
            r#"
[gres-oci]
dev-root = "/tmp/x/dev"
proc-root = "/tmp/x/proc"
nvml-library = "/tmp/x/libnvidia-ml.so.1"
gres-conf = "/tmp/x/gres.conf"
log-file = "/tmp/x/hook.log"
log-level = "debug"
library-search-dirs = ["/opt/nvidia/lib"]
state-dir = "/tmp/x/state"
outside-slurm = "deny"
fabric-devices = ["mofed", "gdrcopy"]
mofed-step-nics = true
cuda-compat-mode = "disabled"
mask-proc-driver = false
"#,
        )
        .unwrap();
        assert!(!c.mask_proc_driver);
        assert_eq!(
            c.fabric_devices,
            [crate::fabric::Fabric::Mofed, crate::fabric::Fabric::Gdrcopy]
        );
        assert_eq!(c.cuda_compat, CudaCompatMode::Disabled);
        assert!(c.mofed_step_nics);
        assert_eq!(c.dev_root, PathBuf::from("/tmp/x/dev"));
        assert_eq!(c.proc_root, PathBuf::from("/tmp/x/proc"));
        assert_eq!(c.gres_conf, PathBuf::from("/tmp/x/gres.conf"));
        assert_eq!(c.log_level, "debug");
        assert_eq!(
            c.library_search_dirs,
            vec![PathBuf::from("/opt/nvidia/lib")]
        );
    }

    #[test]
    fn errors_name_key_and_file() {
        for (text, needles) in [
            (
                "[gres-oci]\ndev-rot = \"/dev\"\n",
                &["config.toml", "dev-rot"][..],
            ),
            ("[gres-oci]\ndev-root = 3\n", &["config.toml", "line 2"][..]),
            (
                "disable-require = \"yes\"\n",
                &["config.toml", "line 1"][..],
            ),
            (
                "[nvidia-container-cli]\nno-cgroups = 1\n",
                &["config.toml", "line 2"][..],
            ),
            (
                "[nvidia-container-cli]\nldconfig = \"/sbin/ldconfig\"\n",
                &["config.toml", "nvidia-container-cli.ldconfig", "container"][..],
            ),
            (
                "supported-driver-capabilities = \"compute,bogus\"\n",
                &["supported-driver-capabilities", "bogus"][..],
            ),
            (
                "[gres-oci]\ndev-root = \"dev\"\n",
                &["gres-oci.dev-root", "absolute"][..],
            ),
            (
                "[gres-oci]\nlog-level = \"loud\"\n",
                &["gres-oci.log-level", "loud"][..],
            ),
            (
                "[gres-oci]\noutside-slurm = \"maybe\"\n",
                &["config.toml", "maybe"][..],
            ),
            (
                "[gres-oci]\nfabric-devices = [\"myrinet\"]\n",
                &["config.toml", "myrinet"][..],
            ),
            (
                "[nvidia-container-cli]\nenvironment = [\"X\"]\n",
                &["environment", "\"X\""][..],
            ),
            ("not toml at all [", &["config.toml"][..]),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(!e.contains('\n'), "multi-line error: {e}");
            for n in needles {
                assert!(e.contains(n), "{text:?}: {e:?} lacks {n:?}");
            }
        }
    }

    #[test]
    fn shipped_example_parses_to_defaults() {
        let c = Config::parse(
            include_str!("../slurm-conf/config.toml"),
            Path::new("config.toml"),
        )
        .unwrap();
        assert_eq!(Config { source: None, ..c }, Config::default());
    }

    #[test]
    fn empty_ldconfig_disables() {
        let c = parse("[nvidia-container-cli]\nldconfig = \"\"\n").unwrap();
        assert_eq!(c.ldconfig, Ldconfig::Disabled);
    }
}
