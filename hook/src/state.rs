//! The hook's inputs from the runtime: the OCI state on stdin and the bundle's `config.json`.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::Spec;

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

/// The parts of `config.json` the hook needs.
pub struct Bundle {
    pub spec: Spec,
    /// `root.path` made absolute against the bundle.
    pub rootfs: PathBuf,
    pub env: Vec<String>,
}

impl Bundle {
    /// # Errors
    /// Unreadable or malformed `config.json`, or one without `root`.
    pub fn load(bundle: &Path) -> Result<Bundle> {
        let path = bundle.join("config.json");
        let bytes =
            std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        let spec: Spec = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: invalid OCI config", path.display()))?;
        let root = spec
            .root()
            .as_ref()
            .with_context(|| format!("{}: no root", path.display()))?;
        let rootfs = if root.path().is_absolute() {
            root.path().clone()
        } else {
            bundle.join(root.path())
        };
        let env = spec
            .process()
            .as_ref()
            .and_then(|p| p.env().clone())
            .unwrap_or_default();
        Ok(Bundle { spec, rootfs, env })
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
