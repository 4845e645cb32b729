//! The hook's one command-line parser: Go-style flags before the command (NVIDIA's hook
//! contract: `-config=PATH prestart`) and each subcommand's flags after it.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

/// A command and the arguments after it.
pub type Command = (String, Vec<String>);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    /// Go's `flag` package: flags until the first positional, the command.
    Go,
    /// A subcommand's own flags and positionals.
    Subcommand,
}

/// Arguments: `--name value`, `--name=value` (one dash or two), switches and positionals.
/// Unknown flags are errors.
#[derive(Debug)]
pub struct Flags {
    pub values: BTreeMap<String, Vec<String>>,
    pub switches: Vec<String>,
    pub positional: Vec<String>,
}

impl Flags {
    /// A subcommand's arguments: flags and positionals in any order, `--` ends the flags.
    ///
    /// # Errors
    /// An unknown flag, or a flag without its value.
    pub fn parse(rest: &[String], with_value: &[&str], switches: &[&str]) -> Result<Flags> {
        Ok(Flags::scan(rest, with_value, switches, Style::Subcommand)?.0)
    }

    /// Go `flag` semantics, as NVIDIA's hook parses its own: flags only before the command
    /// (the first positional), one or two dashes, `=` or a separate value, and a switch may
    /// say `=true` or `=false`. Returns the flags and, when there is one, the command with
    /// the arguments after it.
    ///
    /// # Errors
    /// An unknown flag (`flag provided but not defined`, Go's words), a flag without its value.
    pub fn parse_go(
        argv: &[String],
        with_value: &[&str],
        switches: &[&str],
    ) -> Result<(Flags, Option<Command>)> {
        Flags::scan(argv, with_value, switches, Style::Go)
    }

    fn scan(
        argv: &[String],
        with_value: &[&str],
        switches: &[&str],
        style: Style,
    ) -> Result<(Flags, Option<Command>)> {
        let go = style == Style::Go;
        let mut f = Flags {
            values: BTreeMap::new(),
            switches: Vec::new(),
            positional: Vec::new(),
        };
        let mut it = argv.iter();
        while let Some(a) = it.next() {
            let Some(flag) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
                if go {
                    return Ok((f, Some((a.clone(), it.cloned().collect()))));
                }
                f.positional.push(a.clone());
                continue;
            };
            if flag.is_empty() && !go {
                f.positional.extend(it.by_ref().cloned());
                break;
            }
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (flag, None),
            };
            if with_value.contains(&name) {
                let v = match inline {
                    Some(v) => v,
                    None => it.next().cloned().with_context(|| {
                        if go {
                            format!("flag needs an argument: -{name}")
                        } else {
                            format!("--{name} needs a value")
                        }
                    })?,
                };
                f.values.entry(name.to_owned()).or_default().push(v);
            } else if switches.contains(&name) && (go || inline.is_none()) {
                if inline.is_none_or(|v| v != "false") {
                    f.switches.push(name.to_owned());
                }
            } else if go {
                bail!("flag provided but not defined: -{name}");
            } else {
                bail!("unknown flag: {a}");
            }
        }
        Ok((f, None))
    }

    /// The last value given for `name`.
    pub fn last(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    pub fn all(&self, name: &str) -> &[String] {
        self.values.get(name).map_or(&[], Vec::as_slice)
    }

    pub fn has(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }
}

/// An argument vector from string literals, for tests.
#[cfg(test)]
pub fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_forms() {
        let f = Flags::parse(
            &args(&[
                "--link",
                "a::b",
                "--link=c::d",
                "-folder",
                "/x",
                "pos",
                "--help",
            ]),
            &["link", "folder"],
            &["help"],
        )
        .unwrap();
        assert_eq!(f.all("link"), ["a::b", "c::d"]);
        assert_eq!(f.last("folder"), Some("/x"));
        assert_eq!(f.positional, ["pos"]);
        assert!(f.has("help"));
        assert!(Flags::parse(&args(&["--bogus"]), &["link"], &[]).is_err());
        assert!(Flags::parse(&args(&["--link"]), &["link"], &[]).is_err());
        assert!(Flags::parse(&args(&["--help=1"]), &[], &["help"]).is_err());
    }

    #[test]
    fn go_style_stops_at_the_command() {
        let (f, cmd) = Flags::parse_go(
            &args(&["-config", "/c.toml", "--debug=false", "prestart", "-x"]),
            &["config"],
            &["debug"],
        )
        .unwrap();
        assert_eq!(f.last("config"), Some("/c.toml"));
        assert!(!f.has("debug"));
        assert_eq!(cmd, Some(("prestart".into(), args(&["-x"]))));
        let e = Flags::parse_go(&args(&["-bogus"]), &[], &[]).unwrap_err();
        assert_eq!(e.to_string(), "flag provided but not defined: -bogus");
        assert!(Flags::parse_go(&args(&["-config"]), &["config"], &[]).is_err());
        assert_eq!(
            Flags::parse_go(&args(&["-debug"]), &[], &["debug"])
                .unwrap()
                .1,
            None
        );
    }
}
