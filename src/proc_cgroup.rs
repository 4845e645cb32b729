//! The text of `/proc/<pid>/cgroup` (`ID:CONTROLLERS:PATH` per line; v2's line has no
//! controllers), read the one way the hook, the plugin and the allocation records need it.

/// Each well-formed line as (controllers, path); lines without two colons are skipped.
pub fn entries(text: &str) -> impl Iterator<Item = (Controllers<'_>, &str)> {
    text.lines().filter_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        Some((Controllers(ctrls), path))
    })
}

/// The comma-separated controllers of one line (`cpu,cpuacct`; empty on v2).
#[derive(Debug, Clone, Copy)]
pub struct Controllers<'a>(&'a str);

impl Controllers<'_> {
    pub fn has(&self, controller: &str) -> bool {
        self.0.split(',').any(|c| c == controller)
    }
}

/// The path of the v1 hierarchy that has `controller`, if the process is in one.
pub fn v1_path<'a>(text: &'a str, controller: &str) -> Option<&'a str> {
    entries(text).find_map(|(c, path)| c.has(controller).then_some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_lines() {
        let text = "12:cpu,cpuacct:/slurm/uid_0/job_5\n4:devices:/slurm/uid_0/job_5/step_0\n\
                    garbage\n0::/user.slice\n";
        assert_eq!(v1_path(text, "devices"), Some("/slurm/uid_0/job_5/step_0"));
        assert_eq!(v1_path(text, "cpu"), Some("/slurm/uid_0/job_5"));
        assert_eq!(v1_path(text, "cpuset"), None);
        assert_eq!(v1_path("0::/x\n", "devices"), None);
        assert_eq!(entries(text).count(), 3);
    }
}
