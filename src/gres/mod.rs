//! Owns Slurm's gres.conf: parsing its GPU records (hostlists, `Include`, `AutoDetect`) and
//! turning Slurm's GPU index lists (`SLURM_STEP_GPUS`, `SLURM_JOB_GPUS`, `CUDA_VISIBLE_DEVICES`
//! without cgroup constraint) into the device files they stand for on this node.
//!
//! # Why indices need gres.conf
//!
//! Slurm's GPU indices are 0-based positions in this node's gres.conf GPU list, in file order,
//! not device minors: `File=/dev/nvidia[5,7],/dev/nvidia1` gives 0 = nvidia5, 1 = nvidia7,
//! 2 = nvidia1, and several `Name=gpu` lines for the node concatenate in file order. Lines whose
//! `NodeName=` does not name the node are skipped; lines without `NodeName=` apply to every node.
//! Other GRES names (`mps`, `shard`, `nic`, ...) are validated but never enter the GPU list.
//!
//! # AutoDetect
//!
//! With `AutoDetect=nvml` (or any mode other than `off`) Slurm asks NVML for the devices. This
//! module never calls NVML: it runs inside slurmstepd callbacks where loading NVML is not
//! acceptable, and the order NVML would produce is not ours to guess. So:
//!
//! * AutoDetect on and the node's GPU lines all have `File=`: the list comes back in `File=`
//!   order. Slurm 22.05 then re-sorts the node's GPUs into NVML (PCI bus) order
//!   (`_merge_system_gres_conf`), so callers that know the bus ids must sort by them; the SPANK
//!   plugin does (`resolve::node_table`).
//! * AutoDetect on and the node has no GPU line, or a GPU line without `File=`:
//!   [`GresError::AutoDetectWithoutFiles`], so the caller can fall back (e.g. to an inventory
//!   built elsewhere) instead of mapping indices to the wrong devices.
//!
//! A node-specific `AutoDetect` (a line with `NodeName=`) beats the global one (a line without);
//! an unset mode is treated as `off`. Conflicting values for the same scope are an error.
//!
//! Without AutoDetect, a GPU line with `Count=` but no `File=` is reported as
//! [`GresError::FilelessGpu`]: such GPUs cannot be tied to a device, and guessing would shift
//! every later index onto the wrong device. A device file listed twice for one node is an error
//! too, since two indices on one device would let two jobs share a GPU.
//!
//! # Limits
//!
//! The input may be hostile, so nothing here panics: a hostlist may expand to at most
//! [`MAX_EXPANSION`] names (`NodeName=` is matched without expanding, so large clusters work),
//! `Include` nests at most [`MAX_INCLUDE_DEPTH`] deep, and GPU indices are at most
//! [`MAX_GPU_INDEX`].

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

mod hostlist;
mod index;

use hostlist::Hostlist;
pub use hostlist::{expand_hostlist, hostlist_contains};
pub use index::{parse_index_list, resolve_indices};

/// Most names one hostlist expression (one `File=` value, one line) may expand to.
pub const MAX_EXPANSION: usize = 1024;
/// Deepest `Include` nesting accepted; deeper is almost surely a loop.
pub const MAX_INCLUDE_DEPTH: usize = 8;
/// Most `Include` directives followed in total, so a file that includes itself many times per
/// level cannot make the parser do exponential work.
const MAX_INCLUDES: usize = 128;
/// Largest GPU index accepted in an index list.
pub const MAX_GPU_INDEX: usize = 65535;
/// Longest digit string in a hostlist range; 19 digits always fit a `u64`.
const MAX_DIGITS: usize = 19;

/// Errors from reading gres.conf and resolving GPU indices. Messages name the file and line
/// (through [`GresError::At`]) or quote the offending value.
#[derive(Debug, thiserror::Error)]
pub enum GresError {
    /// An error located in a gres.conf file; `error` says what is wrong there.
    #[error("{}:{line}: {error}", file.display())]
    At {
        file: PathBuf,
        line: usize,
        error: Box<GresError>,
    },
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        err: io::Error,
    },
    #[error("cannot read included file {}", path.display())]
    Include {
        path: PathBuf,
        #[source]
        err: io::Error,
    },
    #[error("Include of {} nests deeper than {limit} levels (loop?)", path.display())]
    IncludeDepth { path: PathBuf, limit: usize },
    #[error("more than {limit} Include directives in total")]
    TooManyIncludes { limit: usize },
    #[error("bad Include directive {text:?}: expected `Include PATH`")]
    BadInclude { text: String },
    #[error("unknown key {key:?}")]
    UnknownKey { key: String },
    #[error("expected Key=Value, got {token:?}")]
    BadToken { token: String },
    #[error("empty value for {key}")]
    EmptyValue { key: String },
    #[error("key {key} given twice")]
    DuplicateKey { key: String },
    #[error("unterminated quote")]
    UnterminatedQuote,
    #[error("record has no Name= (only `AutoDetect=` may stand without it)")]
    MissingName,
    #[error("bad Name {name:?}")]
    BadName { name: String },
    #[error("File= and MultipleFiles= cannot both be given")]
    FileAndMultipleFiles,
    #[error("bad Count {value:?}")]
    BadCount { value: String },
    #[error("Count={count} but File= lists {files} device(s)")]
    CountMismatch { count: u64, files: usize },
    #[error("conflicting AutoDetect values {first:?} and {second:?}")]
    ConflictingAutoDetect { first: String, second: String },
    #[error("unclosed '[' in {expr:?}")]
    UnclosedBracket { expr: String },
    #[error("bad range {expr:?}: {reason}")]
    BadRange { expr: String, reason: String },
    #[error("bad hostlist {expr:?}: {reason}")]
    BadHostlist { expr: String, reason: String },
    #[error("{expr:?} expands to more than {limit} names")]
    TooManyNames { expr: String, limit: usize },
    /// AutoDetect is on for the node and gres.conf does not list its GPUs' files; the order is
    /// only known to NVML (or the vendor library), so the caller has to fall back.
    #[error(
        "AutoDetect is on for node {node:?} but gres.conf does not give File= for all its GPUs; \
         their order is only known to the detection library"
    )]
    AutoDetectWithoutFiles { node: String },
    #[error(
        "{}:{line}: GPU line for node {node:?} has no File=, so its GPUs cannot be mapped \
         to devices",
        file.display()
    )]
    FilelessGpu {
        node: String,
        file: PathBuf,
        line: usize,
    },
    #[error("{}:{line}: device {} is listed twice for node {node:?}", file.display(), device.display())]
    DuplicateDevice {
        node: String,
        file: PathBuf,
        line: usize,
        device: PathBuf,
    },
    #[error("bad GPU index list {list:?}: {reason}")]
    BadIndexList { list: String, reason: String },
    /// A malformed line for this node, kept from parsing: it only fails the nodes it names.
    #[error("{message}")]
    BrokenLine { message: String },
    #[error("GPU index {index} is out of range: node {node:?} has {count} GPU(s) in gres.conf")]
    IndexOutOfRange {
        index: usize,
        node: String,
        count: usize,
    },
}

impl GresError {
    /// The error without its file/line wrapper, for matching on what went wrong.
    pub fn kind(&self) -> &GresError {
        match self {
            GresError::At { error, .. } => error.kind(),
            other => other,
        }
    }

    fn at(self, file: &Path, line: usize) -> GresError {
        GresError::At {
            file: file.to_path_buf(),
            line,
            error: Box::new(self),
        }
    }
}

/// One GPU of this node as gres.conf describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GresDevice {
    /// Position in this node's GPU list: what Slurm's index lists refer to.
    pub index: usize,
    /// The device node (for `MultipleFiles=`, the first file).
    pub file: PathBuf,
    /// The other files of a `MultipleFiles=` GPU, in the order given.
    pub extra_files: Vec<PathBuf>,
    /// `Type=` of its line, e.g. `a100`.
    pub gpu_type: Option<String>,
    /// `UniqueId=` of its line.
    pub unique_id: Option<String>,
    /// Line of the record in the file that declared it (1-based).
    pub line: usize,
}

/// A gres.conf `AutoDetect=` mode.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum AutoDetect {
    Off,
    Nvml,
    Rsmi,
    Oneapi,
    Nrt,
    /// A mode this module does not know; treated as "on" since Slurm may detect with it.
    Other(String),
}

impl AutoDetect {
    fn parse(value: &str) -> AutoDetect {
        match value.to_ascii_lowercase().as_str() {
            "off" => AutoDetect::Off,
            "nvml" => AutoDetect::Nvml,
            "rsmi" => AutoDetect::Rsmi,
            "oneapi" => AutoDetect::Oneapi,
            "nrt" => AutoDetect::Nrt,
            _ => AutoDetect::Other(value.to_string()),
        }
    }

    /// Whether Slurm detects devices itself in this mode.
    pub fn is_on(&self) -> bool {
        !matches!(self, AutoDetect::Off)
    }

    /// The mode as gres.conf spells it.
    pub fn as_str(&self) -> &str {
        match self {
            AutoDetect::Off => "off",
            AutoDetect::Nvml => "nvml",
            AutoDetect::Rsmi => "rsmi",
            AutoDetect::Oneapi => "oneapi",
            AutoDetect::Nrt => "nrt",
            AutoDetect::Other(s) => s,
        }
    }
}

/// A parsed gres.conf (with its includes), queried per node.
#[derive(Debug, Clone)]
pub struct GresConf {
    records: Vec<Record>,
    /// Malformed lines whose `NodeName=` parses: strict for the nodes they name (as slurmd
    /// is strict about its own lines), a warning for every other node, so that one node's
    /// typo in a shared gres.conf does not take the whole cluster down.
    broken: Vec<(Hostlist, String)>,
}

#[derive(Debug, Clone)]
struct Record {
    file: PathBuf,
    line: usize,
    nodes: Option<Hostlist>,
    /// `None` only for a bare `AutoDetect=` line.
    name: Option<String>,
    /// `None` when the line has neither `File=` nor `MultipleFiles=`.
    devices: Option<Vec<(PathBuf, Vec<PathBuf>)>>,
    gpu_type: Option<String>,
    unique_id: Option<String>,
    autodetect: Option<AutoDetect>,
}

impl Record {
    fn applies_to(&self, node: &str) -> bool {
        match &self.nodes {
            Some(hostlist) => hostlist.contains(node),
            None => true,
        }
    }

    fn is_gpu(&self) -> bool {
        self.name
            .as_deref()
            .is_some_and(|n| n.eq_ignore_ascii_case("gpu"))
    }
}

type IncludeReader<'a> = &'a mut dyn FnMut(&Path) -> io::Result<String>;

impl GresConf {
    /// Parses gres.conf text. `source` names the file in messages and anchors relative
    /// `Include` paths; `include` reads an included path (tests pass a closure over a map).
    pub fn parse_with(
        text: &str,
        source: &Path,
        include: &mut dyn FnMut(&Path) -> io::Result<String>,
    ) -> Result<GresConf, GresError> {
        let mut parser = Parser {
            include,
            includes: 0,
            records: Vec::new(),
            broken: Vec::new(),
        };
        parser.parse_text(text, source, 0)?;
        // Conflicting global modes are wrong for every node, so say so now rather than on
        // first use; node-specific conflicts surface in `gpus_for_node`.
        pick_autodetect(parser.records.iter().filter(|r| r.nodes.is_none()))?;
        Ok(GresConf {
            records: parser.records,
            broken: parser.broken,
        })
    }

    /// Parses gres.conf text, reading `Include`d files from disk.
    pub fn parse(text: &str, source: &Path) -> Result<GresConf, GresError> {
        GresConf::parse_with(text, source, &mut |p: &Path| std::fs::read_to_string(p))
    }

    /// Reads and parses the gres.conf at `path`.
    pub fn read(path: &Path) -> Result<GresConf, GresError> {
        let text = std::fs::read_to_string(path).map_err(|err| GresError::Io {
            path: path.to_path_buf(),
            err,
        })?;
        GresConf::parse(&text, path)
    }

    /// The malformed lines that name other nodes than `node`, as one-line messages for a
    /// warning.
    pub fn skipped_for_node(&self, node: &str) -> Vec<&str> {
        self.broken
            .iter()
            .filter(|(h, _)| !h.contains(node))
            .map(|(_, m)| m.as_str())
            .collect()
    }

    /// The node's GPU devices, in index order. See the module doc for AutoDetect.
    ///
    /// # Errors
    /// A malformed line for this node, or lines that do not describe its GPUs consistently.
    pub fn gpus_for_node(&self, node: &str) -> Result<Vec<GresDevice>, GresError> {
        if let Some((_, message)) = self.broken.iter().find(|(h, _)| h.contains(node)) {
            return Err(GresError::BrokenLine {
                message: message.clone(),
            });
        }
        let auto_on = self.resolve_autodetect(node)?.is_some_and(|ad| ad.is_on());
        let mut out: Vec<GresDevice> = Vec::new();
        let mut seen: HashSet<(&Path, &[PathBuf])> = HashSet::new();
        let mut saw_gpu_line = false;
        for rec in self
            .records
            .iter()
            .filter(|r| r.is_gpu() && r.applies_to(node))
        {
            saw_gpu_line = true;
            let Some(devices) = &rec.devices else {
                if auto_on {
                    return Err(GresError::AutoDetectWithoutFiles {
                        node: node.to_string(),
                    });
                }
                return Err(GresError::FilelessGpu {
                    node: node.to_string(),
                    file: rec.file.clone(),
                    line: rec.line,
                });
            };
            for (file, extra) in devices {
                // MIG devices share their parent's node (`MultipleFiles=/dev/nvidia0,<caps>`):
                // what must not repeat is the whole set of files.
                if !seen.insert((file.as_path(), extra.as_slice())) {
                    return Err(GresError::DuplicateDevice {
                        node: node.to_string(),
                        file: rec.file.clone(),
                        line: rec.line,
                        device: file.clone(),
                    });
                }
                out.push(GresDevice {
                    index: out.len(),
                    file: file.clone(),
                    extra_files: extra.clone(),
                    gpu_type: rec.gpu_type.clone(),
                    unique_id: rec.unique_id.clone(),
                    line: rec.line,
                });
            }
        }
        if auto_on && !saw_gpu_line {
            return Err(GresError::AutoDetectWithoutFiles {
                node: node.to_string(),
            });
        }
        Ok(out)
    }

    /// The node's network adapters as Slurm's gres/nic numbers them (`Name=nic` lines, all
    /// files in file order): each file's number is its trailing digits, as slurmd's
    /// `_init_gres_device` reads it (`/dev/infiniband/uverbs1` is 1); files without them are
    /// then numbered on from the highest. `SLURM_STEP_NICS` lists these numbers.
    ///
    /// # Errors
    /// A malformed line for this node.
    pub fn nics_for_node(&self, node: &str) -> Result<Vec<(usize, PathBuf)>, GresError> {
        if let Some((_, message)) = self.broken.iter().find(|(h, _)| h.contains(node)) {
            return Err(GresError::BrokenLine {
                message: message.clone(),
            });
        }
        let is_nic = |r: &&Record| {
            r.name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case("nic"))
                && r.applies_to(node)
        };
        let numbered: Vec<(Option<usize>, PathBuf)> = self
            .records
            .iter()
            .filter(is_nic)
            .flat_map(|r| r.devices.iter().flatten())
            .map(|(file, _)| {
                let name = file.to_string_lossy();
                let head = name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
                (name[head..].parse::<usize>().ok(), file.clone())
            })
            .collect();
        let mut next = numbered
            .iter()
            .filter_map(|(n, _)| *n)
            .max()
            .map_or(0, |m| m + 1);
        Ok(numbered
            .into_iter()
            .map(|(n, file)| {
                let n = n.unwrap_or_else(|| {
                    next += 1;
                    next - 1
                });
                (n, file)
            })
            .collect())
    }

    /// The node's AutoDetect mode: the node-specific one, else the global one, else `None`
    /// (unset). Should node-specific lines conflict, the first wins here; `gpus_for_node`
    /// reports the conflict as an error.
    pub fn autodetect_for_node(&self, node: &str) -> Option<AutoDetect> {
        let with_mode = || self.records.iter().filter(|r| r.autodetect.is_some());
        with_mode()
            .find(|r| r.nodes.as_ref().is_some_and(|h| h.contains(node)))
            .or_else(|| with_mode().find(|r| r.nodes.is_none()))
            .and_then(|r| r.autodetect.clone())
    }

    fn resolve_autodetect(&self, node: &str) -> Result<Option<AutoDetect>, GresError> {
        let specific = pick_autodetect(
            self.records
                .iter()
                .filter(|r| r.nodes.as_ref().is_some_and(|h| h.contains(node))),
        )?;
        let global = pick_autodetect(self.records.iter().filter(|r| r.nodes.is_none()))?;
        Ok(specific.or(global))
    }
}

/// The one AutoDetect mode set by `records`, or a conflict located at the line that differs.
fn pick_autodetect<'a>(
    records: impl Iterator<Item = &'a Record>,
) -> Result<Option<AutoDetect>, GresError> {
    let mut chosen: Option<&AutoDetect> = None;
    for rec in records {
        let Some(ad) = &rec.autodetect else { continue };
        match chosen {
            None => chosen = Some(ad),
            Some(prev) if prev != ad => {
                return Err(GresError::ConflictingAutoDetect {
                    first: prev.as_str().to_string(),
                    second: ad.as_str().to_string(),
                }
                .at(&rec.file, rec.line))
            }
            Some(_) => {}
        }
    }
    Ok(chosen.cloned())
}

struct Parser<'a> {
    include: IncludeReader<'a>,
    includes: usize,
    records: Vec<Record>,
    broken: Vec<(Hostlist, String)>,
}

impl Parser<'_> {
    fn parse_text(&mut self, text: &str, file: &Path, depth: usize) -> Result<(), GresError> {
        for (line, content) in logical_lines(text) {
            let tokens = tokenize(&content).map_err(|e| e.at(file, line))?;
            let Some(first) = tokens.first() else {
                continue;
            };
            if first.eq_ignore_ascii_case("include") {
                self.include_file(&tokens, file, line, depth)?;
                continue;
            }
            match parse_record(&tokens, file, line) {
                Ok(rec) => self.records.push(rec),
                Err(e) => {
                    let e = e.at(file, line);
                    // A line that names its nodes only fails those nodes; one without a
                    // readable NodeName= applies to every node, so it fails them all.
                    match node_name_of(&tokens).map(Hostlist::parse) {
                        Some(Ok(nodes)) => self.broken.push((nodes, e.to_string())),
                        _ => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    fn include_file(
        &mut self,
        tokens: &[String],
        file: &Path,
        line: usize,
        depth: usize,
    ) -> Result<(), GresError> {
        let [_, target] = tokens else {
            return Err(GresError::BadInclude {
                text: tokens.join(" "),
            }
            .at(file, line));
        };
        // Relative includes are taken from the including file's directory, not the cwd, so
        // the result does not depend on where slurmstepd happens to run.
        let path = match file.parent() {
            Some(dir) if Path::new(target).is_relative() => dir.join(target),
            _ => PathBuf::from(target),
        };
        if depth >= MAX_INCLUDE_DEPTH {
            return Err(GresError::IncludeDepth {
                path,
                limit: MAX_INCLUDE_DEPTH,
            }
            .at(file, line));
        }
        self.includes += 1;
        if self.includes > MAX_INCLUDES {
            return Err(GresError::TooManyIncludes {
                limit: MAX_INCLUDES,
            }
            .at(file, line));
        }
        let text = (self.include)(&path).map_err(|err| {
            GresError::Include {
                path: path.clone(),
                err,
            }
            .at(file, line)
        })?;
        self.parse_text(&text, &path, depth + 1)
    }
}

/// Joins continued lines and strips comments the way Slurm's config reader does: comments go
/// first (a `#` preceded by an odd number of backslashes is literal), then an odd run of
/// trailing backslashes (after trailing blanks) continues the line. Each logical line carries
/// the number of its first physical line.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start: Option<usize> = None;
    for (n, raw) in text.lines().enumerate() {
        let lineno = n + 1;
        let first = *start.get_or_insert(lineno);
        let line = strip_comment(raw);
        match strip_continuation(line) {
            Some(kept) => current.push_str(kept),
            None => {
                current.push_str(line);
                out.push((first, std::mem::take(&mut current)));
                start = None;
            }
        }
    }
    if let Some(first) = start {
        out.push((first, current));
    }
    out
}

fn trailing_backslashes(s: &str) -> usize {
    s.bytes().rev().take_while(|&b| b == b'\\').count()
}

fn strip_comment(line: &str) -> &str {
    for (i, b) in line.bytes().enumerate() {
        if b == b'#' && trailing_backslashes(&line[..i]) % 2 == 0 {
            return &line[..i];
        }
    }
    line
}

fn strip_continuation(line: &str) -> Option<&str> {
    let trimmed = line.trim_end_matches(|c: char| c.is_ascii_whitespace());
    if trailing_backslashes(trimmed) % 2 == 1 {
        Some(&trimmed[..trimmed.len() - 1])
    } else {
        None
    }
}

/// Splits a logical line on blanks; double quotes group blanks into a value and are removed,
/// and `\#` stands for a literal `#`.
fn tokenize(line: &str) -> Result<Vec<String>, GresError> {
    let line = line.replace("\\#", "#");
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut in_token = false;
    let mut quoted = false;
    for c in line.chars() {
        if c == '"' {
            quoted = !quoted;
            in_token = true;
        } else if c.is_ascii_whitespace() && !quoted {
            if in_token {
                tokens.push(std::mem::take(&mut current));
                in_token = false;
            }
        } else {
            current.push(c);
            in_token = true;
        }
    }
    if quoted {
        return Err(GresError::UnterminatedQuote);
    }
    if in_token {
        tokens.push(current);
    }
    Ok(tokens)
}

/// The raw `NodeName=` value of a line's tokens, if it has one.
fn node_name_of(tokens: &[String]) -> Option<&str> {
    tokens.iter().find_map(|t| {
        t.split_once('=')
            .filter(|(k, _)| k.eq_ignore_ascii_case("nodename"))
            .map(|(_, v)| v)
    })
}

fn parse_record(tokens: &[String], file: &Path, line: usize) -> Result<Record, GresError> {
    let mut rec = Record {
        file: file.to_path_buf(),
        line,
        nodes: None,
        name: None,
        devices: None,
        gpu_type: None,
        unique_id: None,
        autodetect: None,
    };
    let mut seen: Vec<&'static str> = Vec::new();
    let mut count: Option<u64> = None;
    for token in tokens {
        let Some((key, value)) = token.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(GresError::BadToken {
                token: token.clone(),
            });
        };
        let canonical = match key.to_ascii_lowercase().as_str() {
            "name" => "Name",
            "file" | "files" => "File",
            "multiplefiles" => "MultipleFiles",
            "nodename" => "NodeName",
            "type" => "Type",
            "count" => "Count",
            "cores" => "Cores",
            "cpus" => "CPUs",
            "links" => "Links",
            "flags" => "Flags",
            "autodetect" => "AutoDetect",
            "uniqueid" => "UniqueId",
            _ => {
                return Err(GresError::UnknownKey {
                    key: key.to_string(),
                })
            }
        };
        if seen.contains(&canonical) {
            return Err(GresError::DuplicateKey {
                key: key.to_string(),
            });
        }
        seen.push(canonical);
        if value.is_empty() {
            return Err(GresError::EmptyValue {
                key: key.to_string(),
            });
        }
        match canonical {
            "Name" => {
                // `gpu:a100` belongs in Type=; silently treating it as a non-GPU name would
                // drop GPUs from the list and shift every index after them.
                if value.contains([':', ',', '[', ']']) {
                    return Err(GresError::BadName {
                        name: value.to_string(),
                    });
                }
                rec.name = Some(value.to_string());
            }
            "File" => {
                let files = expand_hostlist(value)?;
                rec.devices = Some(
                    files
                        .into_iter()
                        .map(|f| (PathBuf::from(f), Vec::new()))
                        .collect(),
                );
            }
            "MultipleFiles" => {
                // One GPU behind several files: the first is the device, the rest travel with it.
                let mut files = expand_hostlist(value)?.into_iter().map(PathBuf::from);
                if let Some(first) = files.next() {
                    rec.devices = Some(vec![(first, files.collect())]);
                }
            }
            "NodeName" => rec.nodes = Some(Hostlist::parse(value)?),
            "Type" => rec.gpu_type = Some(value.to_string()),
            "UniqueId" => rec.unique_id = Some(value.to_string()),
            "AutoDetect" => rec.autodetect = Some(AutoDetect::parse(value)),
            "Count" => count = Some(parse_count(value)?),
            // Cores, CPUs, Links, Flags: valid, but they do not affect which device is which.
            _ => {}
        }
    }
    if seen.contains(&"File") && seen.contains(&"MultipleFiles") {
        return Err(GresError::FileAndMultipleFiles);
    }
    if rec.name.is_none() {
        let only_autodetect = rec.autodetect.is_some()
            && seen.iter().all(|k| matches!(*k, "AutoDetect" | "NodeName"));
        if !only_autodetect {
            return Err(GresError::MissingName);
        }
    }
    // For gpu, Count counts devices and must agree with File=; for mps/shard it counts shares.
    if rec.is_gpu() && seen.contains(&"File") {
        if let (Some(count), Some(devices)) = (count, &rec.devices) {
            if usize::try_from(count).ok() != Some(devices.len()) {
                return Err(GresError::CountMismatch {
                    count,
                    files: devices.len(),
                });
            }
        }
    }
    Ok(rec)
}

/// `Count=` value: a number with an optional k/m/g/t/p suffix (powers of 1024, as in Slurm).
fn parse_count(value: &str) -> Result<u64, GresError> {
    let bad = || GresError::BadCount {
        value: value.to_string(),
    };
    let (digits, shift) = match value.as_bytes().last().map(u8::to_ascii_lowercase) {
        Some(b'k') => (&value[..value.len() - 1], 10),
        Some(b'm') => (&value[..value.len() - 1], 20),
        Some(b'g') => (&value[..value.len() - 1], 30),
        Some(b't') => (&value[..value.len() - 1], 40),
        Some(b'p') => (&value[..value.len() - 1], 50),
        _ => (value, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    #[test]
    fn nics_numbered_as_slurm_numbers_them() {
        let c = GresConf::parse(
            "Name=gpu File=/dev/nvidia0\n\
             NodeName=n1 Name=nic File=/dev/infiniband/uverbs[2-3]\n\
             NodeName=n2 Name=nic File=/dev/infiniband/uverbs9\n\
             Name=nic File=/dev/hfi1_0,/dev/ib\n",
            Path::new("gres.conf"),
        )
        .unwrap();
        let nics: Vec<(usize, String)> = c
            .nics_for_node("n1")
            .unwrap()
            .into_iter()
            .map(|(n, f)| (n, f.display().to_string()))
            .collect();
        assert_eq!(
            nics,
            [
                (2, "/dev/infiniband/uverbs2".to_string()),
                (3, "/dev/infiniband/uverbs3".to_string()),
                (0, "/dev/hfi1_0".to_string()),
                (4, "/dev/ib".to_string()),
            ]
        );
        assert!(
            GresConf::parse("Name=gpu File=/dev/nvidia0\n", Path::new("g"))
                .unwrap()
                .nics_for_node("n1")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn shipped_examples_parse() {
        // slurm-conf/: the AutoDetect example (the others are rendered by the Slurm tests).
        let c = GresConf::parse(
            include_str!("../../slurm-conf/gres.conf.autodetect"),
            Path::new("gres.conf.autodetect"),
        )
        .unwrap();
        assert_eq!(c.autodetect_for_node("node07"), Some(AutoDetect::Nvml));
        let gpus = c.gpus_for_node("node07").unwrap();
        assert_eq!(gpus.len(), 4);
        assert_eq!(gpus[3].file, PathBuf::from("/dev/nvidia3"));
        assert_eq!(gpus[0].gpu_type.as_deref(), Some("h100"));
        // A node the file gives no GPU line: AutoDetect without files, left to the caller.
        assert!(matches!(
            c.gpus_for_node("login1"),
            Err(GresError::AutoDetectWithoutFiles { .. })
        ));
    }

    use super::*;
    use std::collections::HashMap;

    const SRC: &str = "/etc/slurm/gres.conf";

    fn no_include(p: &Path) -> io::Result<String> {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no include {} in test", p.display()),
        ))
    }

    fn parse(text: &str) -> Result<GresConf, GresError> {
        GresConf::parse_with(text, Path::new(SRC), &mut no_include)
    }

    fn files(devs: &[GresDevice]) -> Vec<String> {
        devs.iter().map(|d| d.file.display().to_string()).collect()
    }

    /// `Ok(files)` or `Err(substring of the message)`.
    fn gpus(text: &str, node: &str) -> Result<Vec<String>, String> {
        let conf = parse(text).map_err(|e| e.to_string())?;
        let devs = conf.gpus_for_node(node).map_err(|e| e.to_string())?;
        for (i, d) in devs.iter().enumerate() {
            assert_eq!(d.index, i, "indices must follow list order");
        }
        Ok(files(&devs))
    }

    #[test]
    fn gpu_lists_table() {
        let cases: &[(&str, &str, &str, &[&str])] = &[
            (
                "brackets then plain item",
                "Name=gpu File=/dev/nvidia[5,7],/dev/nvidia1\n",
                "n1",
                &["/dev/nvidia5", "/dev/nvidia7", "/dev/nvidia1"],
            ),
            (
                "multiple lines concatenate in file order",
                "Name=gpu File=/dev/nvidia3\nName=gpu File=/dev/nvidia[0-1]\n",
                "n1",
                &["/dev/nvidia3", "/dev/nvidia0", "/dev/nvidia1"],
            ),
            (
                "NodeName hostlist range includes node",
                "NodeName=node[01-04] Name=gpu File=/dev/nvidia[0-1]\n\
                 NodeName=gpu5 Name=gpu File=/dev/nvidia9\n",
                "node03",
                &["/dev/nvidia0", "/dev/nvidia1"],
            ),
            (
                "NodeName second item",
                "NodeName=node[01-04],gpu5 Name=gpu File=/dev/nvidia2\n",
                "gpu5",
                &["/dev/nvidia2"],
            ),
            (
                "line for another node is skipped, global line kept",
                "NodeName=other Name=gpu File=/dev/nvidia0\nName=gpu File=/dev/nvidia1\n",
                "node1",
                &["/dev/nvidia1"],
            ),
            (
                "padding must match: node3 is not node[01-04]",
                "NodeName=node[01-04] Name=gpu File=/dev/nvidia0\n",
                "node3",
                &[],
            ),
            (
                "zero-padded ranges keep width",
                "Name=gpu File=/dev/nvidia[00-02]\n",
                "n",
                &["/dev/nvidia00", "/dev/nvidia01", "/dev/nvidia02"],
            ),
            (
                "two bracket groups in one item",
                "Name=gpu File=/dev/dri/card[0-1]p[2-3]\n",
                "n",
                &[
                    "/dev/dri/card0p2",
                    "/dev/dri/card0p3",
                    "/dev/dri/card1p2",
                    "/dev/dri/card1p3",
                ],
            ),
            (
                "comments, blank lines, continuation",
                "# header\n\n  Name=gpu \\\n   File=/dev/nvidia[0-1] # trailing\nName=gpu File=/dev/nvidia\\\n4\n",
                "n",
                &["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia4"],
            ),
            (
                "non-gpu names ignored, keys case-insensitive, Files alias",
                "Name=mps Count=400 File=/dev/nvidia[0-3]\nname=GPU files=/dev/nvidia1\n\
                 Name=shard Count=8\nName=nic File=/dev/infiniband/uverbs0\n",
                "n",
                &["/dev/nvidia1"],
            ),
            ("no gpu lines, no autodetect", "Name=mps Count=100\n", "n", &[]),
            (
                "autodetect with files uses file order",
                "AutoDetect=nvml\nName=gpu File=/dev/nvidia[1,0]\n",
                "n",
                &["/dev/nvidia1", "/dev/nvidia0"],
            ),
            (
                "node AutoDetect=off beats global nvml",
                "AutoDetect=nvml\nNodeName=n AutoDetect=off Name=gpu File=/dev/nvidia0\n",
                "n",
                &["/dev/nvidia0"],
            ),
            (
                "Count agreeing with File",
                "Name=gpu Type=a100 Count=2 File=/dev/nvidia[0-1] Cores=0-15 Links=-1,0 Flags=nvidia_gpu_env\n",
                "n",
                &["/dev/nvidia0", "/dev/nvidia1"],
            ),
            (
                "quoted value",
                "Name=gpu File=\"/dev/nvidia0\"\n",
                "n",
                &["/dev/nvidia0"],
            ),
            (
                "CRLF line endings",
                "Name=gpu File=/dev/nvidia0\r\nName=gpu File=/dev/nvidia1\r\n",
                "n",
                &["/dev/nvidia0", "/dev/nvidia1"],
            ),
        ];
        for (name, text, node, want) in cases {
            let got = gpus(text, node).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got, *want, "{name}");
        }
    }

    #[test]
    fn errors_table() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "unclosed bracket",
                "Name=gpu File=/dev/nvidia[0-1\n",
                "n",
                "/etc/slurm/gres.conf:1: unclosed '[' in \"/dev/nvidia[0-1\"",
            ),
            (
                "reversed range",
                "\n\nName=gpu File=nvidia[3-1]\n",
                "n",
                "/etc/slurm/gres.conf:3: bad range \"nvidia[3-1]\"",
            ),
            (
                "huge range",
                "Name=gpu File=/dev/nvidia[0-4294967295]\n",
                "n",
                "expands to more than 1024 names",
            ),
            (
                "huge product of small ranges",
                "Name=gpu File=/dev/x[0-99][0-99]\n",
                "n",
                "expands to more than 1024 names",
            ),
            (
                "number too long",
                "Name=gpu File=/dev/x[0-99999999999999999999]\n",
                "n",
                "is not a number",
            ),
            (
                "empty brackets",
                "Name=gpu File=/dev/x[]\n",
                "n",
                "empty brackets",
            ),
            ("nested", "Name=gpu File=/dev/x[1[2]]\n", "n", "nested '['"),
            ("stray ]", "Name=gpu File=/dev/x]\n", "n", "']' without '['"),
            (
                "empty item",
                "Name=gpu File=/dev/x0,,/dev/x1\n",
                "n",
                "empty item",
            ),
            (
                "letters in range",
                "Name=gpu File=/dev/x[a-b]\n",
                "n",
                "\"a\" is not a number",
            ),
            (
                "sign in range",
                "Name=gpu File=/dev/x[+1]\n",
                "n",
                "\"+1\" is not a number",
            ),
            (
                "unknown key",
                "Name=gpu File=/dev/nvidia0\nName=gpu Fiel=/dev/nvidia1\n",
                "n",
                "/etc/slurm/gres.conf:2: unknown key \"Fiel\"",
            ),
            (
                "token without =",
                "Name=gpu /dev/nvidia0\n",
                "n",
                "expected Key=Value, got \"/dev/nvidia0\"",
            ),
            (
                "empty value",
                "Name=gpu File=\n",
                "n",
                "empty value for File",
            ),
            (
                "duplicate key via alias",
                "Name=gpu File=/a Files=/b\n",
                "n",
                "key Files given twice",
            ),
            (
                "missing name",
                "File=/dev/nvidia0\n",
                "n",
                ":1: record has no Name=",
            ),
            (
                "bad name",
                "Name=gpu:a100 File=/dev/nvidia0\n",
                "n",
                "bad Name \"gpu:a100\"",
            ),
            (
                "File and MultipleFiles",
                "Name=gpu File=/a MultipleFiles=/b,/c\n",
                "n",
                "cannot both be given",
            ),
            ("bad count", "Name=gpu Count=-1\n", "n", "bad Count \"-1\""),
            (
                "count overflow",
                "Name=gpu Count=99999999999P\n",
                "n",
                "bad Count",
            ),
            (
                "count mismatch",
                "Name=gpu Count=3 File=/dev/nvidia[0-1]\n",
                "n",
                "Count=3 but File= lists 2 device(s)",
            ),
            (
                "unterminated quote",
                "Name=gpu File=\"/dev/nvidia0\n",
                "n",
                "unterminated quote",
            ),
            (
                "file-less gpu",
                "Name=gpu File=/dev/nvidia0\nName=gpu Type=a100 Count=4\n",
                "n",
                "/etc/slurm/gres.conf:2: GPU line for node \"n\" has no File=",
            ),
            (
                "duplicate device",
                "Name=gpu File=/dev/nvidia0\nNodeName=n Name=gpu File=/dev/nvidia[1,0]\n",
                "n",
                "/etc/slurm/gres.conf:2: device /dev/nvidia0 is listed twice",
            ),
            (
                "the same MIG device twice",
                "Name=gpu MultipleFiles=/dev/nvidia0,/dev/nvidia-caps/nvidia-cap21\n\
                 Name=gpu MultipleFiles=/dev/nvidia0,/dev/nvidia-caps/nvidia-cap21\n",
                "n",
                "/etc/slurm/gres.conf:2: device /dev/nvidia0 is listed twice",
            ),
            (
                "conflicting global autodetect",
                "AutoDetect=nvml\nAutoDetect=off\n",
                "n",
                "/etc/slurm/gres.conf:2: conflicting AutoDetect values \"nvml\" and \"off\"",
            ),
            (
                "conflicting node autodetect",
                "NodeName=n1 AutoDetect=nvml\nNodeName=n[0-1] AutoDetect=off\n",
                "n1",
                ":2: conflicting AutoDetect",
            ),
            ("bare Include", "Include\n", "n", "bad Include directive"),
            (
                "missing include",
                "Include gres.d/a.conf\n",
                "n",
                "/etc/slurm/gres.conf:1: cannot read included file /etc/slurm/gres.d/a.conf",
            ),
        ];
        for (name, text, node, want) in cases {
            match gpus(text, node) {
                Ok(v) => panic!("{name}: expected error containing {want:?}, got {v:?}"),
                Err(e) => assert!(e.contains(want), "{name}: {e:?} lacks {want:?}"),
            }
        }
    }

    #[test]
    fn type_unique_id_multiple_files_and_lines() {
        let conf = parse(
            "Name=gpu Type=a100 File=/dev/nvidia[0-1]\n\
             # comment\n\
             Name=gpu Type=h100 UniqueId=GPU-abc MultipleFiles=/dev/nvidia2,/dev/nvidia-caps/x\n",
        )
        .unwrap();
        let devs = conf.gpus_for_node("n").unwrap();
        assert_eq!(
            devs[2],
            GresDevice {
                index: 2,
                file: "/dev/nvidia2".into(),
                extra_files: vec!["/dev/nvidia-caps/x".into()],
                gpu_type: Some("h100".into()),
                unique_id: Some("GPU-abc".into()),
                line: 3,
            }
        );
        assert_eq!(devs[0].gpu_type.as_deref(), Some("a100"));
        assert_eq!(devs[1].unique_id, None);
        assert_eq!(devs[1].line, 1);
        // MIG devices of one parent share its node, as AutoDetect lists them.
        let conf = parse(
            "Name=gpu MultipleFiles=/dev/nvidia0,/dev/nvidia-caps/nvidia-cap21,/dev/nvidia-caps/nvidia-cap22\n\
             Name=gpu MultipleFiles=/dev/nvidia0,/dev/nvidia-caps/nvidia-cap30,/dev/nvidia-caps/nvidia-cap31\n",
        )
        .unwrap();
        let devs = conf.gpus_for_node("n").unwrap();
        assert_eq!(devs.len(), 2);
        assert_eq!(
            devs[1].extra_files[0],
            PathBuf::from("/dev/nvidia-caps/nvidia-cap30")
        );
    }

    #[test]
    fn includes_with_map_reader() {
        let map: HashMap<PathBuf, String> = [
            (
                "/etc/slurm/gres.d/a.conf",
                "Name=gpu File=/dev/nvidia[2-3]\nInclude sub/b.conf\n",
            ),
            (
                "/etc/slurm/gres.d/sub/b.conf",
                "Name=gpu File=/dev/nvidia9\n",
            ),
            ("/abs/c.conf", "Name=gpu Fiel=x\n"),
        ]
        .into_iter()
        .map(|(k, v)| (PathBuf::from(k), v.to_string()))
        .collect();
        let mut reader = |p: &Path| {
            map.get(p)
                .cloned()
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        };
        let conf = GresConf::parse_with(
            "Name=gpu File=/dev/nvidia0\ninclude gres.d/a.conf\nName=gpu File=/dev/nvidia1\n",
            Path::new(SRC),
            &mut reader,
        )
        .unwrap();
        let devs = conf.gpus_for_node("n").unwrap();
        assert_eq!(
            files(&devs),
            [
                "/dev/nvidia0",
                "/dev/nvidia2",
                "/dev/nvidia3",
                "/dev/nvidia9",
                "/dev/nvidia1"
            ]
        );
        // Errors inside an included file name that file.
        let err = GresConf::parse_with("Include /abs/c.conf\n", Path::new(SRC), &mut reader)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "/abs/c.conf:1: unknown key \"Fiel\"");
    }

    #[test]
    fn include_loop_hits_depth_limit() {
        let mut reads = 0;
        let mut reader = |_: &Path| {
            reads += 1;
            Ok("Include loop.conf\n".to_string())
        };
        let err =
            GresConf::parse_with("Include loop.conf\n", Path::new(SRC), &mut reader).unwrap_err();
        assert!(matches!(
            err.kind(),
            GresError::IncludeDepth { limit: 8, .. }
        ));
        assert!(err
            .to_string()
            .starts_with("/etc/slurm/loop.conf:1: Include of"));
        assert_eq!(reads, MAX_INCLUDE_DEPTH);
    }

    #[test]
    fn include_fanout_is_bounded() {
        // Wide rather than deep: each file is fine alone, the total is what must stop.
        let mut reader = |p: &Path| {
            Ok(if p.ends_with("wide.conf") {
                "Include leaf.conf\n".repeat(200)
            } else {
                String::new()
            })
        };
        let err =
            GresConf::parse_with("Include wide.conf\n", Path::new(SRC), &mut reader).unwrap_err();
        assert!(
            matches!(err.kind(), GresError::TooManyIncludes { .. }),
            "{err}"
        );
    }

    #[test]
    fn autodetect_modes() {
        let text = "AutoDetect=nvml\n\
                    NodeName=tux3 AutoDetect=off Name=gpu File=/dev/nvidia[0-3]\n\
                    NodeName=amd[1-2] AutoDetect=RSMI\n\
                    NodeName=odd AutoDetect=magic\n";
        let conf = parse(text).unwrap();
        let cases = [
            ("tux3", Some(AutoDetect::Off)),
            ("tux4", Some(AutoDetect::Nvml)),
            ("amd2", Some(AutoDetect::Rsmi)),
            ("odd", Some(AutoDetect::Other("magic".into()))),
        ];
        for (node, want) in cases {
            assert_eq!(conf.autodetect_for_node(node), want, "{node}");
        }
        assert_eq!(
            parse("Name=gpu File=/x\n")
                .unwrap()
                .autodetect_for_node("n"),
            None
        );
        assert_eq!(conf.gpus_for_node("tux3").unwrap().len(), 4);
        for node in ["tux4", "amd1", "odd"] {
            let err = conf.gpus_for_node(node).unwrap_err();
            assert!(
                matches!(&err, GresError::AutoDetectWithoutFiles { node: n } if n == node),
                "{node}: {err}"
            );
        }
        // Count-only lines under autodetect: the NVML order is needed, so fall back.
        let conf = parse("AutoDetect=nvml\nName=gpu Type=a100 Count=4\n").unwrap();
        assert!(matches!(
            conf.gpus_for_node("n"),
            Err(GresError::AutoDetectWithoutFiles { .. })
        ));
        // Per-line AutoDetect without NodeName is global.
        let conf = parse("Name=gpu AutoDetect=nvml File=/dev/nvidia0\n").unwrap();
        assert_eq!(conf.autodetect_for_node("x"), Some(AutoDetect::Nvml));
        assert_eq!(files(&conf.gpus_for_node("x").unwrap()), ["/dev/nvidia0"]);
    }

    #[test]
    fn index_lists() {
        let ok: &[(&str, &[usize])] = &[
            ("", &[]),
            ("  ", &[]),
            ("0", &[0]),
            ("0,1,3", &[0, 1, 3]),
            ("0-2,5", &[0, 1, 2, 5]),
            ("3,1-2", &[3, 1, 2]),
            ("1,1,0-1", &[1, 0]),
            ("65535", &[65535]),
            (" 2 , 0 ", &[2, 0]),
        ];
        for (s, want) in ok {
            assert_eq!(parse_index_list(s).unwrap(), *want, "{s:?}");
        }
        let bad: &[(&str, &str)] = &[
            ("a", "\"a\" is not a number"),
            ("-1", "\"\" is not a number"),
            ("+1", "\"+1\" is not a number"),
            ("0,,1", "\"\" is not a number"),
            ("0,", "\"\" is not a number"),
            ("2-1", "range 2-1 is reversed"),
            ("1-2-3", "is not a number"),
            ("65536", "65536 is above 65535"),
            ("99999999999999999999999", "is above 65535"),
            ("NoDevFiles", "bad GPU index list \"NoDevFiles\""),
            ("0x1", "is not a number"),
        ];
        for (s, want) in bad {
            let e = parse_index_list(s).unwrap_err().to_string();
            assert!(e.contains(want), "{s:?}: {e:?} lacks {want:?}");
        }
    }

    #[test]
    fn resolve_indices_maps_and_reports() {
        let conf = parse("Name=gpu File=/dev/nvidia[5,7],/dev/nvidia1\n").unwrap();
        let devs = conf.gpus_for_node("node1").unwrap();
        let idx = parse_index_list("2,0").unwrap();
        let got: Vec<_> = resolve_indices(&devs, &idx, "node1")
            .unwrap()
            .iter()
            .map(|d| d.file.display().to_string())
            .collect();
        assert_eq!(got, ["/dev/nvidia1", "/dev/nvidia5"]);
        let err = resolve_indices(&devs, &[1, 3], "node1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "GPU index 3 is out of range: node \"node1\" has 3 GPU(s) in gres.conf"
        );
        // A filtered slice still maps by recorded index.
        let tail = &devs[1..];
        assert_eq!(
            resolve_indices(tail, &[2], "n").unwrap()[0].file,
            devs[2].file
        );
    }

    #[test]
    fn another_nodes_broken_line_is_skipped() {
        let text = "NodeName=n1 Name=gpu File=/dev/nvidia[0-1]\n\
                    NodeName=n2 Name=gpu File=/dev/nvidia[0-1\n";
        let c = GresConf::parse(text, Path::new("/etc/gres.conf")).unwrap();
        assert_eq!(c.gpus_for_node("n1").unwrap().len(), 2);
        let skipped = c.skipped_for_node("n1");
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].contains("gres.conf:2"), "{skipped:?}");
        let e = c.gpus_for_node("n2").unwrap_err().to_string();
        assert!(e.contains("gres.conf:2") && e.contains("unclosed"), "{e}");
        assert!(c.skipped_for_node("n2").is_empty());
        // Without a readable NodeName= the line is every node's: strict at once.
        for bad in [
            "Name=gpu File=/dev/nvidia[0-1\n",
            "NodeName=n[1- Name=gpu File=/dev/nvidia[0-1\n",
        ] {
            assert!(GresConf::parse(bad, Path::new("g")).is_err(), "{bad}");
        }
    }

    #[test]
    fn hostlists() {
        let ok: &[(&str, &[&str])] = &[
            ("a", &["a"]),
            ("node[01-03],gpu5", &["node01", "node02", "node03", "gpu5"]),
            ("n[8-10]", &["n8", "n9", "n10"]),
            ("n[098-101]", &["n098", "n099", "n100", "n101"]),
            ("x[1,3-4]y", &["x1y", "x3y", "x4y"]),
            ("[1-2]", &["1", "2"]),
        ];
        for (expr, want) in ok {
            assert_eq!(expand_hostlist(expr).unwrap(), *want, "{expr}");
        }
        assert_eq!(expand_hostlist("x[0-1023]").unwrap().len(), 1024);
        for bad in [
            "",
            ",",
            "a,",
            "x[0-1024]",
            "x[",
            "x]",
            "x[1-]",
            "x[-1]",
            "x[0-4294967295]",
        ] {
            assert!(expand_hostlist(bad).is_err(), "{bad:?}");
        }
        let contains: &[(&str, &str, bool)] = &[
            ("node[0001-9999]", "node0420", true),
            ("node[0001-9999]", "node420", false),
            ("node[0-4294967295]", "node4294967295", true),
            ("node[1-5]x[10-20]", "node3x15", true),
            ("node[1-5]x[10-20]", "node3x21", false),
            ("a[1-2],b", "b", true),
            ("a[1-2],b", "bb", false),
            ("a[1,12]", "a12", true),
            ("a[1][2]", "a12", true),
            ("a[12]", "a1", false),
        ];
        for (expr, name, want) in contains {
            assert_eq!(
                hostlist_contains(expr, name).unwrap(),
                *want,
                "{expr} {name}"
            );
        }
    }

    #[test]
    fn serializes() {
        fn is_serialize<T: serde::Serialize>(_: &T) {}
        let d = GresDevice {
            index: 0,
            file: "/dev/nvidia0".into(),
            extra_files: vec![],
            gpu_type: None,
            unique_id: None,
            line: 1,
        };
        is_serialize(&d);
        is_serialize(&AutoDetect::Nvml);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parser_never_panics(text in prop_oneof![
                "(?s).{0,300}",
                proptest::collection::vec(any::<u8>(), 0..300)
                    .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            ]) {
                let mut reader = |_: &Path| Ok(text.clone());
                if let Ok(conf) = GresConf::parse_with(&text, Path::new(SRC), &mut reader) {
                    let _ = conf.gpus_for_node("node1");
                    let _ = conf.autodetect_for_node("node1");
                }
            }

            #[test]
            fn gres_like_text_never_panics(
                // Multi-byte characters (and the replacement character a lossy read of a
                // non-UTF-8 byte gives) next to the ASCII the parser slices at.
                text in r#"([ \t\n\\#"=,\[\]\-0-9]|Name|gpu|File|NodeName|node|AutoDetect|nvml|Count|Include|/dev/nvidia|Type|MultipleFiles|€|ü|𐍈|\u{301}|\u{fffd}){0,60}"#
            ) {
                let mut reader = |_: &Path| Ok(text.clone());
                if let Ok(conf) = GresConf::parse_with(&text, Path::new(SRC), &mut reader) {
                    if let Ok(devs) = conf.gpus_for_node("node1") {
                        let _ = resolve_indices(&devs, &[0, 1, 2], "node1");
                    }
                }
            }

            #[test]
            fn index_list_never_panics(s in "(?s).{0,64}|([0-9,\\- ]|€|\u{fffd}){0,40}") {
                if let Ok(v) = parse_index_list(&s) {
                    prop_assert!(v.iter().all(|&i| i <= MAX_GPU_INDEX));
                }
            }

            #[test]
            fn hostlist_never_panics(
                s in "(?s).{0,64}|([a-c0-9,\\[\\]\\-]|é|€|𐍈|\u{fffd}){0,40}",
                name in "([a-c0-9]|é|€|𐍈){0,8}",
            ) {
                if let Ok(v) = expand_hostlist(&s) {
                    prop_assert!(v.len() <= MAX_EXPANSION);
                    // Matching must agree with expansion.
                    prop_assert_eq!(hostlist_contains(&s, &name).unwrap(), v.contains(&name));
                }
            }
        }
    }
}
