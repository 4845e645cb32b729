//! Site defaults from plugstack.conf (`config=`, `hook=`, `default=`, `caps=`) and the user's
//! `--gres-oci` / `--gres-oci-caps` options, validated into [`Settings`]. Pure.

use std::path::PathBuf;

use crate::nvidia_env::parse_capability_list;

/// The option that turns gres-oci on or off for one job or step.
pub const OPT_ENABLE: &str = "gres-oci";
/// The option that sets the driver capabilities of the step's containers.
pub const OPT_CAPS: &str = "gres-oci-caps";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgError {
    #[error("plugstack.conf argument {arg:?}: {reason}")]
    Plugstack { arg: String, reason: String },
    #[error("--{option}={value}: {reason}")]
    Option {
        option: &'static str,
        value: String,
        reason: String,
    },
}

/// What plugstack.conf says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteArgs {
    /// `config=PATH`: the TOML shared with the hook; `None` = the library's default search.
    pub config: Option<PathBuf>,
    /// `hook=PATH`: added as a prestart hook to 22.05 `--container` bundles that lack it.
    pub hook: Option<PathBuf>,
    /// `default=on|off`: whether steps get gres-oci without `--gres-oci`.
    pub enabled: bool,
    /// `caps=LIST`: `NVIDIA_DRIVER_CAPABILITIES` for container steps.
    pub caps: Option<String>,
}

impl Default for SiteArgs {
    fn default() -> Self {
        SiteArgs {
            config: None,
            hook: None,
            enabled: true,
            caps: None,
        }
    }
}

fn on_off(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "on" | "yes" | "true" | "1" => Some(true),
        "off" | "no" | "false" | "0" => Some(false),
        _ => None,
    }
}

fn check_caps(v: &str) -> Result<String, String> {
    parse_capability_list(v)
        .map(|_| v.trim().to_owned())
        .map_err(|e| e.to_string())
}

impl SiteArgs {
    /// Parses plugstack.conf's arguments for this plugin.
    ///
    /// # Errors
    /// An unknown key, a relative path, or a bad value, quoting the argument.
    pub fn parse<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<SiteArgs, ArgError> {
        let mut s = SiteArgs::default();
        for arg in args {
            let bad = |reason: &str| ArgError::Plugstack {
                arg: arg.to_owned(),
                reason: reason.to_owned(),
            };
            let (k, v) = arg
                .split_once('=')
                .ok_or_else(|| bad("expected KEY=VALUE"))?;
            let path = || {
                let p = PathBuf::from(v);
                if p.is_absolute() {
                    Ok(p)
                } else {
                    Err(bad("the path must be absolute"))
                }
            };
            match k {
                "config" => s.config = Some(path()?),
                "hook" => s.hook = Some(path()?),
                "default" => s.enabled = on_off(v).ok_or_else(|| bad("expected on or off"))?,
                "caps" => s.caps = Some(check_caps(v).map_err(|r| bad(&r))?),
                _ => return Err(bad("unknown key (known: config, hook, default, caps)")),
            }
        }
        Ok(s)
    }
}

/// The settings of one step: site defaults with the user's options applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub enabled: bool,
    pub caps: Option<String>,
}

/// Applies `--gres-oci[=on|off]` (a bare option means on) and `--gres-oci-caps=LIST`.
///
/// # Errors
/// A value that is not on/off, or an unknown capability.
pub fn settings(
    site: &SiteArgs,
    enable: Option<&str>,
    caps: Option<&str>,
) -> Result<Settings, ArgError> {
    let enabled = match enable.map(str::trim) {
        None => site.enabled,
        Some("") => true,
        Some(v) => on_off(v).ok_or_else(|| ArgError::Option {
            option: OPT_ENABLE,
            value: v.to_owned(),
            reason: "expected on or off".into(),
        })?,
    };
    let caps = match caps {
        None => site.caps.clone(),
        Some(v) => Some(check_caps(v).map_err(|reason| ArgError::Option {
            option: OPT_CAPS,
            value: v.to_owned(),
            reason,
        })?),
    };
    Ok(Settings { enabled, caps })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugstack_args() {
        let s = SiteArgs::parse([
            "config=/etc/gres-oci/config.toml",
            "hook=/usr/libexec/gres-oci-hook",
            "default=off",
            "caps=compute,utility",
        ])
        .unwrap();
        assert_eq!(s.config, Some(PathBuf::from("/etc/gres-oci/config.toml")));
        assert_eq!(s.hook, Some(PathBuf::from("/usr/libexec/gres-oci-hook")));
        assert!(!s.enabled);
        assert_eq!(s.caps.as_deref(), Some("compute,utility"));
        assert_eq!(SiteArgs::parse([]).unwrap(), SiteArgs::default());
        for (arg, needle) in [
            ("config=rel/path", "absolute"),
            ("default=maybe", "on or off"),
            ("caps=compute,warp", "warp"),
            ("bogus=1", "unknown key"),
            ("config", "KEY=VALUE"),
        ] {
            let e = SiteArgs::parse([arg]).unwrap_err().to_string();
            assert!(e.contains(arg) && e.contains(needle), "{e}");
        }
    }

    /// The shipped plugstack lines (both forms) name the plugin the same way and carry
    /// arguments the plugin accepts.
    #[test]
    fn shipped_plugstack_lines() {
        let line = |text: &'static str| -> Vec<&'static str> {
            let l = text
                .lines()
                .find(|l| l.starts_with("required "))
                .expect("a required line");
            l.split_whitespace().collect()
        };
        let main = line(include_str!("../slurm-conf/plugstack.conf"));
        let dropin = line(include_str!("../slurm-conf/plugstack.conf.d/gres-oci.conf"));
        assert_eq!(main, dropin);
        assert_eq!(
            main[1], "gres-oci.so",
            "make install puts the plugin in PluginDir under this name"
        );
        let s = SiteArgs::parse(main[2..].iter().copied()).unwrap();
        assert_eq!(s.config, Some(PathBuf::from("/etc/gres-oci/config.toml")));
        assert_eq!(s.hook, Some(PathBuf::from("/usr/bin/gres-oci-hook")));
    }

    #[test]
    fn options_override_site() {
        let site = SiteArgs::default();
        assert!(settings(&site, None, None).unwrap().enabled);
        assert!(!settings(&site, Some("off"), None).unwrap().enabled);
        let off = SiteArgs {
            enabled: false,
            caps: Some("all".into()),
            ..SiteArgs::default()
        };
        assert!(settings(&off, Some(""), None).unwrap().enabled);
        assert!(settings(&off, Some("on"), None).unwrap().enabled);
        assert_eq!(
            settings(&off, None, None).unwrap().caps.as_deref(),
            Some("all")
        );
        assert_eq!(
            settings(&off, None, Some("compute"))
                .unwrap()
                .caps
                .as_deref(),
            Some("compute")
        );
        let e = settings(&site, Some("perhaps"), None)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "--gres-oci=perhaps: expected on or off");
        let e = settings(&site, None, Some("nope")).unwrap_err().to_string();
        assert!(e.starts_with("--gres-oci-caps=nope: "), "{e}");
    }
}
