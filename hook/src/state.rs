//! The hook's inputs from the runtime: the OCI state on stdin and the bundle's `config.json`.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::LinuxDeviceCgroup;
use serde::Deserialize;
use serde_json::Value;

/// The fields of the OCI state the hook uses (runtime-spec "State"). Other fields, and their
/// order, vary between runtimes (crun adds `root`, runc omits empty annotations).
#[derive(Debug, serde::Deserialize)]
pub struct State {
    #[serde(default)]
    pub id: String,
    pub pid: Option<i32>,
    pub bundle: Option<PathBuf>,
    /// runc before 17.06 wrote this name.
    #[serde(rename = "bundlePath")]
    pub bundle_path: Option<PathBuf>,
}

impl State {
    /// Reads and validates the state from `input` (stdin).
    ///
    /// # Errors
    /// Not JSON, no bundle, or no usable pid.
    pub fn read(mut input: impl Read) -> Result<State> {
        let mut buf = Vec::new();
        // The state is a few hundred bytes; a cap keeps a broken runtime from feeding us GiBs.
        input
            .by_ref()
            .take(1 << 20)
            .read_to_end(&mut buf)
            .context("reading OCI state from stdin")?;
        let state: State =
            serde_json::from_slice(&buf).context("OCI state on stdin is not valid JSON")?;
        if state.bundle().is_none() {
            bail!("OCI state on stdin has no bundle");
        }
        match state.pid {
            Some(p) if p > 0 => {}
            _ => bail!("OCI state on stdin has no container pid (prestart needs one)"),
        }
        Ok(state)
    }

    pub fn bundle(&self) -> Option<&Path> {
        self.bundle
            .as_deref()
            .or(self.bundle_path.as_deref())
            .filter(|p| !p.as_os_str().is_empty())
    }
}

/// The parts of `config.json` the hook needs, and nothing else: a field the hook never reads
/// (`process.user`, `mounts`, a runtime's extension) may be missing or of any shape, while a
/// wrong value in a field it does read is an error naming the file and the field.
pub struct Bundle {
    /// `root.path` made absolute against the bundle.
    pub rootfs: PathBuf,
    /// `process.env`.
    pub env: Vec<String>,
    /// `linux.resources.devices`, which cgroup v2 checks the plan against.
    pub device_rules: Vec<LinuxDeviceCgroup>,
}

impl Bundle {
    /// # Errors
    /// Unreadable `config.json`, not JSON, no `root.path`, or a wrong value in a field the
    /// hook reads.
    pub fn load(bundle: &Path) -> Result<Bundle> {
        let path = bundle.join("config.json");
        let bytes =
            std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        Bundle::parse(bundle, &path, &bytes)
    }

    fn parse(bundle: &Path, path: &Path, bytes: &[u8]) -> Result<Bundle> {
        let spec: Value = serde_json::from_slice(bytes)
            .with_context(|| format!("{}: invalid OCI config", path.display()))?;
        let bad =
            |field: &str, want: &str| anyhow::anyhow!("{}: {field} must be {want}", path.display());
        // A missing or null object is as good as an empty one; anything else must be an object.
        fn object<'a>(v: Option<&'a Value>, path: &Path, field: &str) -> Result<Option<&'a Value>> {
            match v {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Object(_)) => Ok(v),
                Some(_) => bail!("{}: {field} must be an object", path.display()),
            }
        }
        fn get<'a>(v: Option<&'a Value>, key: &str) -> Option<&'a Value> {
            v.and_then(|o| o.get(key))
        }
        let object = |v, field| object(v, path, field);
        object(Some(&spec), "the top level")?;
        let root = object(spec.get("root"), "root")?
            .with_context(|| format!("{}: no root", path.display()))?;
        let root_path = match root.get("path") {
            Some(Value::String(p)) if !p.is_empty() => PathBuf::from(p),
            None | Some(Value::Null) => bail!("{}: no root.path", path.display()),
            Some(_) => return Err(bad("root.path", "a non-empty string")),
        };
        let rootfs = if root_path.is_absolute() {
            root_path
        } else {
            bundle.join(root_path)
        };
        let process = object(spec.get("process"), "process")?;
        let env = match get(process, "env") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, e)| match e {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(bad(&format!("process.env[{i}]"), "a string")),
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(bad("process.env", "an array of strings")),
        };
        let linux = object(spec.get("linux"), "linux")?;
        let resources = object(get(linux, "resources"), "linux.resources")?;
        let device_rules = match get(resources, "devices") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => Vec::<LinuxDeviceCgroup>::deserialize(v).with_context(|| {
                format!(
                    "{}: linux.resources.devices: not a list of device rules",
                    path.display()
                )
            })?,
        };
        Ok(Bundle {
            rootfs,
            env,
            device_rules,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a runtime (or anything else) writes on stdin: an error, never a panic.
        #[test]
        fn state_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = State::read(&bytes[..]);
        }

        #[test]
        fn state_shaped_never_panics(id in ".{0,20}", pid in any::<i64>(), bundle in ".{0,30}", key in prop_oneof![Just("bundle"), Just("bundlePath"), Just("root")]) {
            let json = serde_json::json!({"id": id, "pid": pid, key: bundle});
            if let Err(e) = State::read(json.to_string().as_bytes()) {
                let msg = format!("{e:#}");
                prop_assert!(!msg.contains('\n'), "{}", msg);
            }
        }
    }

    /// Text and bytes as the image's user may write them: multi-byte UTF-8, replacement
    /// characters, and bytes that are not UTF-8 at all.
    fn hostile_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "([a-z0-9/=:,.{}\\[\\]\"-]|€|ü|𐍈|\u{fffd}){0,30}",
            proptest::collection::vec(any::<u8>(), 0..40)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ]
    }

    proptest! {
        /// config.json with arbitrary bytes, or shaped with hostile values in the fields the
        /// hook reads: a bundle or a one-line error, never a panic.
        #[test]
        fn config_json_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Bundle::parse(Path::new("/b"), Path::new("/b/config.json"), &bytes);
        }

        #[test]
        fn config_json_shaped_never_panics(
            root in hostile_text(),
            env in proptest::collection::vec(hostile_text(), 0..4),
            raw in proptest::collection::vec(any::<u8>(), 0..12),
            field in prop_oneof![Just("root"), Just("process"), Just("linux"), Just("user")],
        ) {
            let mut spec = serde_json::json!({
                "root": {"path": root},
                "process": {"env": env},
                "linux": {"resources": {"devices": [{"allow": true, "access": root}]}},
            });
            spec[field] = serde_json::json!(root);
            let mut bytes = serde_json::to_vec(&spec).unwrap();
            for bad in [bytes.clone(), { bytes.extend(&raw); bytes }] {
                if let Err(e) = Bundle::parse(Path::new("/b"), Path::new("/b/config.json"), &bad) {
                    let msg = format!("{e:#}");
                    prop_assert!(!msg.contains('\n'), "{}", msg);
                }
            }
        }

        #[test]
        fn state_with_hostile_text_never_panics(id in hostile_text(), bundle in hostile_text(), raw in proptest::collection::vec(any::<u8>(), 0..12)) {
            let mut json = serde_json::json!({"id": id, "pid": 7, "bundle": bundle}).to_string().into_bytes();
            let _ = State::read(&json[..]);
            let at = json.len() / 2;
            json.splice(at..at, raw);
            let _ = State::read(&json[..]);
        }
    }

    #[test]
    fn config_json_only_what_the_hook_uses() {
        let p = Path::new("/b/config.json");
        let parse =
            |v: serde_json::Value| Bundle::parse(Path::new("/b"), p, v.to_string().as_bytes());
        // No process.user, odd shapes where the hook never looks.
        let b = parse(serde_json::json!({
            "root": {"path": "rootfs"},
            "process": {"env": ["A=€"], "capabilities": "x"},
            "mounts": 3,
            "linux": {"namespaces": "x", "resources": {"devices": [{"allow": true, "access": "rwm"}]}},
        }))
        .unwrap();
        assert_eq!(b.rootfs, Path::new("/b/rootfs"));
        assert_eq!(b.env, ["A=€"]);
        assert_eq!(b.device_rules.len(), 1);
        let b = parse(serde_json::json!({"root": {"path": "/abs"}, "process": null})).unwrap();
        assert_eq!((b.rootfs.as_path(), b.env.len()), (Path::new("/abs"), 0));
        for (v, needle) in [
            (serde_json::json!([]), "the top level"),
            (serde_json::json!({}), "no root"),
            (serde_json::json!({"root": {}}), "no root.path"),
            (serde_json::json!({"root": {"path": ""}}), "root.path"),
            (serde_json::json!({"root": "rootfs"}), "root must be"),
            (
                serde_json::json!({"root": {"path": "r"}, "process": {"env": [1]}}),
                "process.env[0]",
            ),
            (
                serde_json::json!({"root": {"path": "r"}, "process": {"env": {}}}),
                "process.env",
            ),
            (
                serde_json::json!({"root": {"path": "r"}, "linux": {"resources": 1}}),
                "linux.resources",
            ),
            (
                serde_json::json!({"root": {"path": "r"}, "linux": {"resources": {"devices": [{"allow": "no"}]}}}),
                "linux.resources.devices",
            ),
        ] {
            let e = format!(
                "{:#}",
                parse(v.clone()).err().unwrap_or_else(|| panic!("{v}"))
            );
            assert!(
                e.contains("/b/config.json") && e.contains(needle),
                "{v}: {e}"
            );
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn state_forms() {
        let s = State::read(
            &br#"{"ociVersion":"1.0.2-dev","id":"c1","status":"creating","pid":42,"bundle":"/b"}"#
                [..],
        )
        .unwrap();
        assert_eq!(
            (s.id.as_str(), s.pid, s.bundle()),
            ("c1", Some(42), Some(Path::new("/b")))
        );
        let s = State::read(&br#"{"id":"c","pid":7,"bundlePath":"/old","root":"/x"}"#[..]).unwrap();
        assert_eq!(s.bundle(), Some(Path::new("/old")));
        for bad in [
            &b"garbage"[..],
            br#"{"id":"c","pid":7}"#,
            br#"{"id":"c","bundle":"/b"}"#,
            br#"{"id":"c","pid":0,"bundle":"/b"}"#,
            br#"{"id":"c","pid":"x","bundle":"/b"}"#,
            b"",
        ] {
            let e = format!("{:#}", State::read(bad).unwrap_err());
            assert!(e.contains("OCI state"), "{e}");
            assert!(!e.contains('\n'));
        }
    }
}
