//! Process plumbing: a forked single-threaded child that enters the container's mount
//! namespace and reports its result back over a pipe, and helper programs run from a host fd
//! with an empty environment.

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

/// Runs the program behind `exe` with `args` (argv[0] included) and an **empty
/// environment** (nothing from the image, such as LD_PRELOAD, reaches a root process:
/// CVE-2025-23266), stdout discarded, stderr captured for the error message.
///
/// # Errors
/// Non-zero exit, a signal, or exec failure; the message carries the helper's stderr.
pub fn run_helper(exe: BorrowedFd, args: &[&OsStr]) -> Result<()> {
    let cargs = args
        .iter()
        .map(|a| crate::apply::cstring(a))
        .collect::<Result<Vec<_>>>()?;
    let mut argv: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).context("pipe")?;
    let devnull = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .ok();
    // SAFETY: see in_mount_ns; the child only dup2()s, execveat()s and _exit()s, all
    // async-signal-safe, using buffers prepared before the fork.
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
