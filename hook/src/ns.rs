//! Process plumbing: a forked single-threaded child that enters the container's mount
//! namespace and reports its result back over a pipe, and helper programs run from a host fd
//! with a fixed minimal environment, only the capabilities they need, `no_new_privs` and a
//! seccomp filter.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Runs `work` in a forked child that has entered the mount namespace of `pid`. `setns` with
/// CLONE_NEWNS fails in a multi-threaded process, and NVML may have started threads in this
/// one; the child of a fork has a single thread.
///
/// # Errors
/// The child's error, as its one-line message, or its abnormal end.
pub fn in_mount_ns(pid: i32, work: impl FnOnce() -> Result<()>) -> Result<()> {
    let ns_path = format!("/proc/{pid}/ns/mnt");
    // Opened here so a missing process is reported before forking.
    let ns = std::fs::File::open(&ns_path).with_context(|| format!("{ns_path}: cannot open"))?;
    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).context("pipe")?;
    // SAFETY: fork has no memory-safety preconditions. The child only runs `work` (which does
    // plain syscalls and allocation; glibc keeps malloc usable after fork) and then _exit()s
    // without returning into the parent's stack frames or running its atexit handlers.
    let child = unsafe { libc::fork() };
    if child < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if child == 0 {
        drop(rd);
        let result = rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&ns),
            Some(rustix::thread::LinkNameSpaceType::Mount),
        )
        .with_context(|| format!("setns {ns_path}"))
        .and_then(|()| work());
        let code = match result {
            Ok(()) => 0,
            Err(e) => {
                let mut w = std::fs::File::from(wr);
                let _ = write!(w, "{e:#}");
                1
            }
        };
        // SAFETY: _exit ends this forked child at once; nothing after it runs.
        unsafe { libc::_exit(code) };
    }
    drop(wr);
    let mut msg = String::new();
    let _ = std::fs::File::from(rd).read_to_string(&mut msg);
    let status = wait(child)?;
    match status {
        Ok(0) => Ok(()),
        _ if !msg.is_empty() => bail!("{msg}"),
        Ok(code) => bail!("injection child exited with status {code}"),
        Err(sig) => bail!("injection child killed by signal {sig}"),
    }
}

/// Waits for `pid`; `Ok(exit code)` or `Err(signal)`.
fn wait(pid: libc::pid_t) -> Result<std::result::Result<i32, i32>> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes only to `status`, a valid local.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            bail!("waitpid: {e}");
        }
    }
    Ok(if libc::WIFEXITED(status) {
        Ok(libc::WEXITSTATUS(status))
    } else {
        Err(libc::WTERMSIG(status))
    })
}

/// Opens a host binary for [`run_helper`]. Done on the host side, before any namespace
/// change, so the image can never substitute its own program.
///
/// # Errors
/// The file cannot be opened.
pub fn open_host_binary(path: &Path) -> Result<OwnedFd> {
    let f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    Ok(OwnedFd::from(f))
}

/// The whole environment of a helper: nothing from the hook's own (which runc < 1.3 fills from
/// the container's `process.env` for createContainer hooks) or the image's, such as
/// LD_PRELOAD (CVE-2025-23266). `LC_ALL=C` keeps its messages in the one language the log
/// is read in.
pub const HELPER_ENV: [&std::ffi::CStr; 2] = [c"PATH=/usr/sbin:/usr/bin:/sbin:/bin", c"LC_ALL=C"];

/// The syscalls a helper (glibc's static ldconfig) may make; every other one fails with
/// EPERM. Modelled on libnvidia-container's list for the same program: files, memory,
/// signals, `chroot` for `-r`, and the exec that starts it. Left out: mounts, namespaces,
/// ptrace, sockets, keyrings, BPF, modules, `open_by_handle_at` and the like.
fn helper_syscalls() -> Vec<i64> {
    let mut v = vec![
        libc::SYS_execveat,
        libc::SYS_execve,
        libc::SYS_brk,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mprotect,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_set_tid_address,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_prlimit64,
        libc::SYS_getrandom,
        libc::SYS_futex,
        libc::SYS_uname,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_getuid,
        libc::SYS_geteuid,
        libc::SYS_getgid,
        libc::SYS_getegid,
        libc::SYS_clock_gettime,
        libc::SYS_gettimeofday,
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_tgkill,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_chroot,
        libc::SYS_chdir,
        libc::SYS_fchdir,
        libc::SYS_getcwd,
        libc::SYS_openat,
        libc::SYS_close,
        libc::SYS_dup,
        libc::SYS_dup3,
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_pread64,
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_lseek,
        libc::SYS_fcntl,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_faccessat,
        libc::SYS_faccessat2,
        libc::SYS_readlinkat,
        libc::SYS_getdents64,
        libc::SYS_mkdirat,
        libc::SYS_unlinkat,
        libc::SYS_renameat,
        libc::SYS_renameat2,
        libc::SYS_symlinkat,
        libc::SYS_fchmod,
        libc::SYS_fchmodat,
        libc::SYS_ftruncate,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        libc::SYS_arch_prctl,
        libc::SYS_open,
        libc::SYS_dup2,
        libc::SYS_stat,
        libc::SYS_lstat,
        libc::SYS_access,
        libc::SYS_readlink,
        libc::SYS_getdents,
        libc::SYS_mkdir,
        libc::SYS_unlink,
        libc::SYS_rename,
        libc::SYS_symlink,
        libc::SYS_chmod,
        libc::SYS_time,
    ]);
    v
}

/// The seccomp program of [`helper_syscalls`], compiled before forking.
fn helper_filter() -> Result<seccompiler::BpfProgram> {
    let arch: seccompiler::TargetArch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| anyhow::anyhow!("seccomp: {e}"))?;
    let rules = helper_syscalls().into_iter().map(|n| (n, vec![])).collect();
    let filter = seccompiler::SeccompFilter::new(
        rules,
        seccompiler::SeccompAction::Errno(libc::EPERM as u32),
        seccompiler::SeccompAction::Allow,
        arch,
    )
    .context("seccomp filter")?;
    filter.try_into().context("seccomp filter")
}

/// In the forked child, before exec: keep only the capabilities in `keep` (bounding set
/// included, so that exec as root cannot regain the rest), no ambient ones, `no_new_privs`,
/// then the seccomp filter, last, since it forbids the calls that set the rest up.
fn confine(keep: &[caps::Capability], filter: &seccompiler::BpfProgram) -> Result<()> {
    use caps::CapSet;
    let keep: caps::CapsHashSet = keep.iter().copied().collect();
    for cap in caps::all().difference(&keep) {
        caps::drop(None, CapSet::Bounding, *cap).context("dropping bounding capabilities")?;
    }
    caps::clear(None, CapSet::Ambient).context("clearing ambient capabilities")?;
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::set(None, set, &keep).with_context(|| format!("setting {set:?} capabilities"))?;
    }
    // SAFETY: prctl with these integer arguments touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        bail!("no_new_privs: {}", std::io::Error::last_os_error());
    }
    // A runaway helper (a hostile ld.so.conf, a crafted ELF file) ends in seconds and cannot
    // write files beyond the size of the largest cache the hook accepts.
    for (res, lim) in [
        (libc::RLIMIT_CPU, 10),
        (libc::RLIMIT_FSIZE, gres_oci::ldcache::MAX_CACHE_SIZE),
    ] {
        let l = libc::rlimit {
            rlim_cur: lim,
            rlim_max: lim,
        };
        // SAFETY: `l` is a valid rlimit that outlives the call.
        if unsafe { libc::setrlimit(res, &l) } != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    seccompiler::apply_filter(filter).context("seccomp")?;
    Ok(())
}

/// Runs the program behind `exe` with `args` (argv[0] included) and the environment
/// [`HELPER_ENV`], confined to the capabilities in `keep`, with `no_new_privs` and a seccomp
/// filter (as libnvidia-container runs ldconfig): the helper parses files of the image, so it
/// gets none of the hook's other powers. Stdout is discarded, stderr captured for the error
/// message.
///
/// # Errors
/// Non-zero exit, a signal, confinement or exec failure; the message carries the helper's
/// stderr.
pub fn run_helper(exe: BorrowedFd, args: &[&OsStr], keep: &[caps::Capability]) -> Result<()> {
    let cargs = args
        .iter()
        .map(|a| crate::apply::cstring(a))
        .collect::<Result<Vec<_>>>()?;
    let mut argv: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = HELPER_ENV.iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null());
    let filter = helper_filter()?;
    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).context("pipe")?;
    let devnull = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .ok();
    // SAFETY: see in_mount_ns (this runs in that single-threaded child, so allocating in the
    // grandchild is safe too); the child dup2()s, confines itself, execveat()s and _exit()s,
    // using buffers prepared before the fork.
    let child = unsafe { libc::fork() };
    if child < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if child == 0 {
        // SAFETY: the fds and the argv/envp arrays are valid and NUL-terminated; on any
        // failure the child _exit()s at once.
        unsafe {
            if let Some(n) = &devnull {
                libc::dup2(n.as_raw_fd(), 1);
            }
            libc::dup2(wr.as_raw_fd(), 2);
            if let Err(e) = confine(keep, &filter) {
                let msg = format!("confining the helper: {e:#}");
                libc::write(2, msg.as_ptr().cast(), msg.len());
                libc::_exit(126);
            }
            libc::syscall(
                libc::SYS_execveat,
                exe.as_raw_fd(),
                c"".as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
            libc::_exit(127);
        }
    }
    drop(wr);
    let mut err = String::new();
    let mut f = std::fs::File::from(rd);
    let _ = Read::by_ref(&mut f).take(4096).read_to_string(&mut err);
    let err = err.split_whitespace().collect::<Vec<_>>().join(" ");
    match wait(child)? {
        Ok(0) => Ok(()),
        Ok(127) if err.is_empty() => bail!("cannot execute"),
        Ok(code) => bail!("process failed with exit code {code}: {err}"),
        Err(sig) => bail!("process killed by signal {sig}: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A helper runs with only the capabilities it is given, `no_new_privs`, the seccomp
    /// filter (a `fork` fails) and the fixed environment, whatever the hook's own are.
    #[test]
    fn helpers_run_confined() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "needs root, as the hook has");
        std::env::set_var("LD_PRELOAD", "/nonexistent-preload.so");
        let sh = open_host_binary(Path::new("/bin/sh")).unwrap();
        // dash builtins only: reading /proc/self/status needs no fork, `( )` does.
        let script = r#"
            while read -r k v; do
              case "$k" in CapPrm:|CapEff:|CapBnd:|CapAmb:|NoNewPrivs:|Seccomp:) echo "$k $v" >&2;; esac
            done < /proc/self/status
            echo "env ${LD_PRELOAD-unset} $PATH $LC_ALL" >&2
            ( : )
            echo "fork ok" >&2"#;
        let args = [OsStr::new("sh"), OsStr::new("-c"), OsStr::new(script)];
        let err = run_helper(sh.as_fd(), &args, &[caps::Capability::CAP_SYS_CHROOT])
            .unwrap_err()
            .to_string();
        for want in [
            "Cannot fork",
            "CapPrm: 0000000000040000",
            "CapEff: 0000000000040000",
            "CapBnd: 0000000000040000",
            "CapAmb: 0000000000000000",
            "NoNewPrivs: 1",
            "Seccomp: 2",
            "env unset /usr/sbin:/usr/bin:/sbin:/bin C",
        ] {
            assert!(err.contains(want), "{want:?} not in {err}");
        }
        assert!(!err.contains("fork ok"), "{err}");
    }
}
