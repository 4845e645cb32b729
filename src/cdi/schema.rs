//! Checking a spec against the CDI JSON schema of the version it declares.

use super::*;

/// The released CDI spec versions whose JSON shape is the current one (0.1.0 and 0.2.0 had
/// another layout and are not accepted by today's runtimes either).
const KNOWN_VERSIONS: &[(u32, u32, u32)] = &[
    (0, 3, 0),
    (0, 4, 0),
    (0, 5, 0),
    (0, 6, 0),
    (0, 7, 0),
    (0, 8, 0),
];

type Version = (u32, u32, u32);

pub(super) fn parse_version(s: &str) -> Option<Version> {
    let s = s.strip_prefix('v').unwrap_or(s);
    let mut it = s.split('.');
    let mut n = || -> Option<u32> {
        let p = it.next()?;
        if p.is_empty()
            || !p.bytes().all(|b| b.is_ascii_digit())
            || (p.len() > 1 && p.starts_with('0'))
        {
            return None;
        }
        p.parse().ok()
    };
    let v = (n()?, n()?, n()?);
    it.next().is_none().then_some(v)
}

fn vstr(v: Version) -> String {
    format!("{}.{}.{}", v.0, v.1, v.2)
}

struct Checker {
    version: Version,
}

fn invalid(field: &str, message: impl Into<String>) -> CdiError {
    CdiError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn object<'a>(v: &'a Value, field: &str) -> Result<&'a serde_json::Map<String, Value>, CdiError> {
    v.as_object()
        .ok_or_else(|| invalid(field, format!("must be an object, not {}", type_name(v))))
}

fn array<'a>(v: &'a Value, field: &str) -> Result<&'a Vec<Value>, CdiError> {
    v.as_array()
        .ok_or_else(|| invalid(field, format!("must be an array, not {}", type_name(v))))
}

fn string<'a>(v: &'a Value, field: &str) -> Result<&'a str, CdiError> {
    v.as_str()
        .ok_or_else(|| invalid(field, format!("must be a string, not {}", type_name(v))))
}

fn strings(v: &Value, field: &str) -> Result<(), CdiError> {
    for (i, s) in array(v, field)?.iter().enumerate() {
        string(s, &format!("{field}[{i}]"))?;
    }
    Ok(())
}

fn integer(v: &Value, field: &str, min: i128, max: i128) -> Result<i128, CdiError> {
    let n = v
        .as_i64()
        .map(i128::from)
        .or_else(|| v.as_u64().map(i128::from))
        .ok_or_else(|| invalid(field, format!("must be an integer, not {}", type_name(v))))?;
    if n < min || n > max {
        return Err(invalid(field, format!("{n} is out of range {min}..={max}")));
    }
    Ok(n)
}

fn path_field(v: &Value, field: &str, absolute: bool) -> Result<(), CdiError> {
    let s = string(v, field)?;
    if s.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if absolute && !s.starts_with('/') {
        return Err(invalid(field, format!("{s:?} must be an absolute path")));
    }
    Ok(())
}

/// A vendor or class label: a letter first, a letter or digit last, letters, digits and
/// `extra` between.
fn label(s: &str, extra: &[char]) -> Result<(), String> {
    let Some(first) = s.chars().next() else {
        return Err("is empty".into());
    };
    if !first.is_ascii_alphabetic() {
        return Err(format!("{s:?} must start with a letter"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !extra.contains(c))
    {
        return Err(format!("{s:?} has an invalid character {c:?}"));
    }
    if !s.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("{s:?} must end with a letter or digit"));
    }
    Ok(())
}

/// A device name: `^[a-zA-Z0-9][a-zA-Z0-9_.:-]*$`, ending with a letter or digit.
fn device_name(s: &str) -> Result<(), String> {
    let Some(first) = s.chars().next() else {
        return Err("is empty".into());
    };
    if !first.is_ascii_alphanumeric() {
        return Err(format!("{s:?} must start with a letter or digit"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !matches!(c, '_' | '.' | ':' | '-'))
    {
        return Err(format!("{s:?} has an invalid character {c:?}"));
    }
    if !s.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("{s:?} must end with a letter or digit"));
    }
    Ok(())
}

impl Checker {
    /// A field that appeared in `since`.
    fn since(&self, since: Version, field: &str) -> Result<(), CdiError> {
        if self.version < since {
            return Err(invalid(
                field,
                format!(
                    "needs cdiVersion {} or later (the spec declares {})",
                    vstr(since),
                    vstr(self.version)
                ),
            ));
        }
        Ok(())
    }

    /// `obj` has only the `allowed` keys (each with the version it appeared in) and every
    /// `required` one.
    fn keys(
        &self,
        obj: &serde_json::Map<String, Value>,
        field: &str,
        allowed: &[(&str, Version)],
        required: &[&str],
    ) -> Result<(), CdiError> {
        let join = |k: &str| {
            if field.is_empty() {
                k.to_owned()
            } else {
                format!("{field}.{k}")
            }
        };
        for k in obj.keys() {
            match allowed.iter().find(|(a, _)| a == k) {
                Some((_, since)) => self.since(*since, &join(k))?,
                None => return Err(invalid(&join(k), "unknown field")),
            }
        }
        for r in required {
            if !obj.contains_key(*r) {
                return Err(invalid(&join(r), "required field is missing"));
            }
        }
        Ok(())
    }

    fn kind(&self, kind: &str) -> Result<(), CdiError> {
        let (vendor, class) = kind
            .split_once('/')
            .ok_or_else(|| invalid("kind", format!("{kind:?} must be VENDOR/CLASS")))?;
        label(vendor, &['_', '-', '.']).map_err(|m| invalid("kind", format!("vendor {m}")))?;
        let dots = self.version >= (0, 6, 0);
        let extra: &[char] = if dots { &['_', '-', '.'] } else { &['_', '-'] };
        label(class, extra).map_err(|m| {
            let hint = if !dots && class.contains('.') {
                " (dots in the class need cdiVersion 0.6.0 or later)"
            } else {
                ""
            };
            invalid("kind", format!("class {m}{hint}"))
        })
    }

    fn annotations(&self, v: &Value, field: &str) -> Result<(), CdiError> {
        for (k, val) in object(v, field)? {
            if k.is_empty() {
                return Err(invalid(field, "annotation keys must not be empty"));
            }
            string(val, &format!("{field}.{k}"))?;
        }
        Ok(())
    }

    fn edits(&self, v: &Value, field: &str) -> Result<(), CdiError> {
        const V3: Version = (0, 3, 0);
        let obj = object(v, field)?;
        self.keys(
            obj,
            field,
            &[
                ("env", V3),
                ("deviceNodes", V3),
                ("mounts", V3),
                ("hooks", V3),
                ("intelRdt", (0, 7, 0)),
                ("additionalGids", (0, 7, 0)),
            ],
            &[],
        )?;
        if let Some(env) = obj.get("env") {
            let f = format!("{field}.env");
            for (i, e) in array(env, &f)?.iter().enumerate() {
                let fi = format!("{f}[{i}]");
                let s = string(e, &fi)?;
                match s.split_once('=') {
                    Some((name, _)) if !name.is_empty() => {}
                    _ => return Err(invalid(&fi, format!("{s:?} must be NAME=VALUE"))),
                }
            }
        }
        if let Some(nodes) = obj.get("deviceNodes") {
            let f = format!("{field}.deviceNodes");
            for (i, n) in array(nodes, &f)?.iter().enumerate() {
                self.device_node(n, &format!("{f}[{i}]"))?;
            }
        }
        if let Some(mounts) = obj.get("mounts") {
            let f = format!("{field}.mounts");
            for (i, m) in array(mounts, &f)?.iter().enumerate() {
                self.mount(m, &format!("{f}[{i}]"))?;
            }
        }
        if let Some(hooks) = obj.get("hooks") {
            let f = format!("{field}.hooks");
            for (i, h) in array(hooks, &f)?.iter().enumerate() {
                self.hook(h, &format!("{f}[{i}]"))?;
            }
        }
        if let Some(rdt) = obj.get("intelRdt") {
            let f = format!("{field}.intelRdt");
            let o = object(rdt, &f)?;
            self.keys(
                o,
                &f,
                &[
                    ("closID", V3),
                    ("l3CacheSchema", V3),
                    ("memBwSchema", V3),
                    ("enableCMT", V3),
                    ("enableMBM", V3),
                ],
                &[],
            )?;
            for (k, val) in o {
                let fk = format!("{f}.{k}");
                if k.starts_with("enable") {
                    val.as_bool().ok_or_else(|| {
                        invalid(&fk, format!("must be a boolean, not {}", type_name(val)))
                    })?;
                } else {
                    string(val, &fk)?;
                }
            }
        }
        if let Some(gids) = obj.get("additionalGids") {
            let f = format!("{field}.additionalGids");
            for (i, g) in array(gids, &f)?.iter().enumerate() {
                integer(g, &format!("{f}[{i}]"), 0, u32::MAX.into())?;
            }
        }
        Ok(())
    }

    fn device_node(&self, v: &Value, field: &str) -> Result<(), CdiError> {
        const V3: Version = (0, 3, 0);
        let o = object(v, field)?;
        self.keys(
            o,
            field,
            &[
                ("path", V3),
                ("hostPath", (0, 5, 0)),
                ("type", V3),
                ("major", V3),
                ("minor", V3),
                ("fileMode", V3),
                ("permissions", V3),
                ("uid", V3),
                ("gid", V3),
            ],
            &["path"],
        )?;
        path_field(&o["path"], &format!("{field}.path"), true)?;
        if let Some(h) = o.get("hostPath") {
            path_field(h, &format!("{field}.hostPath"), true)?;
        }
        if let Some(t) = o.get("type") {
            let f = format!("{field}.type");
            let t = string(t, &f)?;
            if !matches!(t, "b" | "c" | "u" | "p") {
                return Err(invalid(&f, format!("{t:?} must be one of b, c, u, p")));
            }
        }
        for k in ["major", "minor"] {
            if let Some(n) = o.get(k) {
                integer(n, &format!("{field}.{k}"), i64::MIN.into(), i64::MAX.into())?;
            }
        }
        if let Some(m) = o.get("fileMode") {
            integer(m, &format!("{field}.fileMode"), 0, u32::MAX.into())?;
        }
        if let Some(p) = o.get("permissions") {
            let f = format!("{field}.permissions");
            let p = string(p, &f)?;
            if p.is_empty() || !p.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
                return Err(invalid(&f, format!("{p:?} must be made of r, w and m")));
            }
        }
        for k in ["uid", "gid"] {
            if let Some(n) = o.get(k) {
                integer(n, &format!("{field}.{k}"), 0, u32::MAX.into())?;
            }
        }
        Ok(())
    }

    fn mount(&self, v: &Value, field: &str) -> Result<(), CdiError> {
        const V3: Version = (0, 3, 0);
        let o = object(v, field)?;
        self.keys(
            o,
            field,
            &[
                ("hostPath", V3),
                ("containerPath", V3),
                ("options", V3),
                ("type", (0, 4, 0)),
            ],
            &["hostPath", "containerPath"],
        )?;
        path_field(&o["hostPath"], &format!("{field}.hostPath"), false)?;
        path_field(
            &o["containerPath"],
            &format!("{field}.containerPath"),
            false,
        )?;
        if let Some(opts) = o.get("options") {
            strings(opts, &format!("{field}.options"))?;
        }
        if let Some(t) = o.get("type") {
            string(t, &format!("{field}.type"))?;
        }
        Ok(())
    }

    fn hook(&self, v: &Value, field: &str) -> Result<(), CdiError> {
        const V3: Version = (0, 3, 0);
        let o = object(v, field)?;
        self.keys(
            o,
            field,
            &[
                ("hookName", V3),
                ("path", V3),
                ("args", V3),
                ("env", V3),
                ("timeout", V3),
            ],
            &["hookName", "path"],
        )?;
        let f = format!("{field}.hookName");
        let name = string(&o["hookName"], &f)?;
        const STAGES: &[&str] = &[
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop",
        ];
        if !STAGES.contains(&name) {
            return Err(invalid(
                &f,
                format!("{name:?} is not an OCI hook ({})", STAGES.join(", ")),
            ));
        }
        path_field(&o["path"], &format!("{field}.path"), true)?;
        for k in ["args", "env"] {
            if let Some(a) = o.get(k) {
                strings(a, &format!("{field}.{k}"))?;
            }
        }
        if let Some(t) = o.get("timeout") {
            integer(t, &format!("{field}.timeout"), 1, i32::MAX.into())?;
        }
        Ok(())
    }
}

/// Checks a spec against the CDI schema of the version it declares: required fields and
/// their types, the kind and device name grammars, unique device names, and fields that do
/// not exist yet in that version (`hostPath` on device nodes before 0.5.0, `annotations`
/// before 0.6.0, …), including device names starting with a digit before 0.5.0.
///
/// # Errors
/// The first violation, naming the field by its JSON path.
pub fn validate(spec: &Value) -> Result<(), CdiError> {
    let top = object(spec, "spec")?;
    let version_str = string(
        top.get("cdiVersion")
            .ok_or_else(|| invalid("cdiVersion", "required field is missing"))?,
        "cdiVersion",
    )?;
    let version = parse_version(version_str).ok_or_else(|| {
        invalid(
            "cdiVersion",
            format!("{version_str:?} is not a version X.Y.Z"),
        )
    })?;
    if !KNOWN_VERSIONS.contains(&version) {
        return Err(invalid(
            "cdiVersion",
            format!(
                "{version_str:?} is not a known CDI version ({})",
                KNOWN_VERSIONS
                    .iter()
                    .map(|v| vstr(*v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let c = Checker { version };
    const V3: Version = (0, 3, 0);
    c.keys(
        top,
        "",
        &[
            ("cdiVersion", V3),
            ("kind", V3),
            ("devices", V3),
            ("containerEdits", V3),
            ("annotations", (0, 6, 0)),
        ],
        &["kind", "devices"],
    )?;
    c.kind(string(&top["kind"], "kind")?)?;
    if let Some(a) = top.get("annotations") {
        c.annotations(a, "annotations")?;
    }
    let devices = array(&top["devices"], "devices")?;
    if devices.is_empty() {
        return Err(invalid("devices", "must list at least one device"));
    }
    let mut names = BTreeSet::new();
    for (i, d) in devices.iter().enumerate() {
        let f = format!("devices[{i}]");
        let o = object(d, &f)?;
        c.keys(
            o,
            &f,
            &[
                ("name", V3),
                ("containerEdits", V3),
                ("annotations", (0, 6, 0)),
            ],
            &["name", "containerEdits"],
        )?;
        let fname = format!("{f}.name");
        let name = string(&o["name"], &fname)?;
        device_name(name).map_err(|m| invalid(&fname, m))?;
        if name.starts_with(|ch: char| ch.is_ascii_digit()) && c.version < (0, 5, 0) {
            return Err(invalid(
                &fname,
                format!(
                    "{name:?} starts with a digit, which needs cdiVersion 0.5.0 or later (the spec declares {})",
                    vstr(c.version)
                ),
            ));
        }
        if !names.insert(name) {
            return Err(invalid(&fname, format!("{name:?} is listed twice")));
        }
        if let Some(a) = o.get("annotations") {
            c.annotations(a, &format!("{f}.annotations"))?;
        }
        c.edits(&o["containerEdits"], &format!("{f}.containerEdits"))?;
    }
    if let Some(e) = top.get("containerEdits") {
        c.edits(e, "containerEdits")?;
    }
    Ok(())
}
