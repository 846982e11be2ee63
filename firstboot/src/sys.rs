//! Privileged operations behind one narrow trait: [`RealSys`] does them, [`RecordingSys`]
//! records them for tests (passed in explicitly, never chosen by `cfg!(test)`).

pub mod ioctl;

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use rustix::mount::MountFlags;

/// The hidden subcommand through which [`RealSys::run_chrooted`] re-executes firstboot to
/// chroot and exec without `unsafe` pre-exec hooks.
pub const CHROOT_EXEC: &str = "__chroot-exec";

/// Privileged and environment-dependent operations used by stage 1 and the agent.
pub trait Sys {
    /// mount(2).
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MountFlags,
        data: &str,
    ) -> io::Result<()>;
    /// umount(2).
    fn umount(&self, target: &Path) -> io::Result<()>;
    /// mount(2) with MS_MOVE.
    fn mount_move(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// chroot(2).
    fn chroot(&self, path: &Path) -> io::Result<()>;
    /// chdir(2).
    fn chdir(&self, path: &Path) -> io::Result<()>;
    /// sethostname(2).
    fn sethostname(&self, name: &str) -> io::Result<()>;
    /// reboot(2) with RB_AUTOBOOT.
    fn reboot(&self) -> io::Result<()>;
    /// finit_module(2) on the file at `path`, no parameters.
    fn finit_module(&self, path: &Path) -> io::Result<()>;
    /// Runs `argv` chrooted into `root`, waits, returns the exit code (-1 on a signal).
    fn run_chrooted(&self, root: &Path, argv: &[&str]) -> io::Result<i32>;
    /// Attaches `file` read-only to a free loop device under `dev`; returns the device path.
    fn loop_attach(&self, dev: &Path, file: &Path) -> io::Result<PathBuf>;
    /// BLKRRPART on the whole-disk device `disk`.
    fn reread_partitions(&self, disk: &Path) -> io::Result<()>;
    /// execv(2) `path` with argv[0] = `path`. Returns only on failure.
    fn exec(&self, path: &Path) -> io::Error;
    /// Milliseconds of CLOCK_MONOTONIC (since boot).
    fn monotonic_ms(&self) -> u64;
    /// Fills `buf` from getrandom(2).
    fn random(&self, buf: &mut [u8]) -> io::Result<()>;
    /// Sleeps.
    fn sleep(&self, d: Duration);
    /// Reaps every exited child (waitpid(-1, WNOHANG) until none is left).
    fn reap(&self);
}

/// The real system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealSys;

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

impl Sys for RealSys {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MountFlags,
        data: &str,
    ) -> io::Result<()> {
        let data = std::ffi::CString::new(data)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        rustix::mount::mount(source, target, fstype, flags, data.as_c_str()).map_err(errno)
    }
    fn umount(&self, target: &Path) -> io::Result<()> {
        rustix::mount::unmount(target, rustix::mount::UnmountFlags::empty()).map_err(errno)
    }
    fn mount_move(&self, from: &Path, to: &Path) -> io::Result<()> {
        rustix::mount::mount_move(from, to).map_err(errno)
    }
    fn chroot(&self, path: &Path) -> io::Result<()> {
        rustix::process::chroot(path).map_err(errno)
    }
    fn chdir(&self, path: &Path) -> io::Result<()> {
        rustix::process::chdir(path).map_err(errno)
    }
    fn sethostname(&self, name: &str) -> io::Result<()> {
        rustix::system::sethostname(name.as_bytes()).map_err(errno)
    }
    fn reboot(&self) -> io::Result<()> {
        rustix::fs::sync();
        rustix::system::reboot(rustix::system::RebootCommand::Restart).map_err(errno)
    }
    fn finit_module(&self, path: &Path) -> io::Result<()> {
        let f = File::open(path)?;
        rustix::system::finit_module(&f, c"", 0).map_err(errno)
    }
    fn run_chrooted(&self, root: &Path, argv: &[&str]) -> io::Result<i32> {
        let status = Command::new("/proc/self/exe")
            .arg(CHROOT_EXEC)
            .arg(root)
            .args(argv)
            .status()?;
        Ok(status.code().unwrap_or(-1))
    }
    fn loop_attach(&self, dev: &Path, file: &Path) -> io::Result<PathBuf> {
        let backing = File::open(file)?;
        let ctl = File::open(dev.join("loop-control"))?;
        // A free device can be taken by someone else between GET_FREE and attach: retry.
        let mut last = io::Error::from(io::ErrorKind::NotFound);
        for _ in 0..8 {
            let n = ioctl::loop_get_free(&ctl).map_err(errno)?;
            let path = dev.join(format!("loop{n}"));
            let loopdev = OpenOptions::new().read(true).open(&path)?;
            match ioctl::loop_configure(&loopdev, &backing) {
                Ok(()) => return Ok(path),
                Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOTTY) => {
                    ioctl::loop_set_fd(&loopdev, &backing).map_err(errno)?;
                    return Ok(path);
                }
                Err(rustix::io::Errno::BUSY) => last = errno(rustix::io::Errno::BUSY),
                Err(e) => return Err(errno(e)),
            }
        }
        Err(last)
    }
    fn reread_partitions(&self, disk: &Path) -> io::Result<()> {
        let f = File::open(disk)?;
        ioctl::blkrrpart(&f).map_err(errno)
    }
    fn exec(&self, path: &Path) -> io::Error {
        Command::new(path).exec()
    }
    fn monotonic_ms(&self) -> u64 {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        (t.tv_sec as u64) * 1000 + (t.tv_nsec as u64) / 1_000_000
    }
    fn random(&self, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            done +=
                rustix::rand::getrandom(&mut buf[done..], rustix::rand::GetRandomFlags::empty())
                    .map_err(errno)?;
        }
        Ok(())
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
    fn reap(&self) {
        use rustix::process::{wait, WaitOptions};
        while let Ok(Some(_)) = wait(WaitOptions::NOHANG) {}
    }
}

/// The body of the hidden `__chroot-exec ROOT ARGV...` subcommand: chroot, chdir /, exec.
/// Returns only on failure.
pub fn chroot_exec(root: &Path, argv: &[String]) -> io::Error {
    let Some((prog, args)) = argv.split_first() else {
        return io::Error::new(io::ErrorKind::InvalidInput, "no command to run");
    };
    if let Err(e) = rustix::process::chroot(root) {
        return errno(e);
    }
    if let Err(e) = rustix::process::chdir("/") {
        return errno(e);
    }
    Command::new(prog).args(args).exec()
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: String,
        target: PathBuf,
        fstype: String,
        read_only: bool,
        flags: u32,
        data: String,
    },
    Umount(PathBuf),
    MountMove(PathBuf, PathBuf),
    Chroot(PathBuf),
    Chdir(PathBuf),
    Sethostname(String),
    Reboot,
    FinitModule(PathBuf),
    RunChrooted(PathBuf, Vec<String>),
    LoopAttach(PathBuf),
    RereadPartitions(PathBuf),
    Exec(PathBuf),
}

type Hook = Box<dyn Fn(&Call) -> io::Result<()>>;

/// A fake that records every call. A hook can simulate the kernel's side effects (create
/// sysfs entries, fail a call); the clock advances only through `sleep`.
pub struct RecordingSys {
    calls: RefCell<Vec<Call>>,
    hook: Option<Hook>,
    now_ms: Cell<u64>,
    loops: Cell<u32>,
}

impl Default for RecordingSys {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordingSys {
    /// A fake that succeeds at everything.
    pub fn new() -> Self {
        RecordingSys {
            calls: RefCell::new(Vec::new()),
            hook: None,
            now_ms: Cell::new(1000),
            loops: Cell::new(0),
        }
    }
    /// A fake whose hook runs on every call after it is recorded; an `Err` from the hook
    /// becomes the call's result.
    pub fn with_hook(hook: impl Fn(&Call) -> io::Result<()> + 'static) -> Self {
        RecordingSys {
            hook: Some(Box::new(hook)),
            ..Self::new()
        }
    }
    /// Everything recorded so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }
    fn record(&self, c: Call) -> io::Result<()> {
        self.calls.borrow_mut().push(c.clone());
        match &self.hook {
            Some(h) => h(&c),
            None => Ok(()),
        }
    }
}

impl Sys for RecordingSys {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MountFlags,
        data: &str,
    ) -> io::Result<()> {
        self.record(Call::Mount {
            source: source.to_string(),
            target: target.to_path_buf(),
            fstype: fstype.to_string(),
            read_only: flags.contains(MountFlags::RDONLY),
            flags: flags.bits(),
            data: data.to_string(),
        })
    }
    fn umount(&self, target: &Path) -> io::Result<()> {
        self.record(Call::Umount(target.to_path_buf()))
    }
    fn mount_move(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.record(Call::MountMove(from.to_path_buf(), to.to_path_buf()))
    }
    fn chroot(&self, path: &Path) -> io::Result<()> {
        self.record(Call::Chroot(path.to_path_buf()))
    }
    fn chdir(&self, path: &Path) -> io::Result<()> {
        self.record(Call::Chdir(path.to_path_buf()))
    }
    fn sethostname(&self, name: &str) -> io::Result<()> {
        self.record(Call::Sethostname(name.to_string()))
    }
    fn reboot(&self) -> io::Result<()> {
        self.record(Call::Reboot)
    }
    fn finit_module(&self, path: &Path) -> io::Result<()> {
        self.record(Call::FinitModule(path.to_path_buf()))
    }
    fn run_chrooted(&self, root: &Path, argv: &[&str]) -> io::Result<i32> {
        self.record(Call::RunChrooted(
            root.to_path_buf(),
            argv.iter().map(|s| s.to_string()).collect(),
        ))
        .map(|()| 0)
    }
    fn loop_attach(&self, dev: &Path, file: &Path) -> io::Result<PathBuf> {
        self.record(Call::LoopAttach(file.to_path_buf()))?;
        let n = self.loops.get();
        self.loops.set(n + 1);
        Ok(dev.join(format!("loop{n}")))
    }
    fn reread_partitions(&self, disk: &Path) -> io::Result<()> {
        self.record(Call::RereadPartitions(disk.to_path_buf()))
    }
    fn exec(&self, path: &Path) -> io::Error {
        match self.record(Call::Exec(path.to_path_buf())) {
            Ok(()) => io::Error::other("exec recorded by the fake"),
            Err(e) => e,
        }
    }
    fn monotonic_ms(&self) -> u64 {
        self.now_ms.get()
    }
    fn random(&self, buf: &mut [u8]) -> io::Result<()> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        Ok(())
    }
    fn sleep(&self, d: Duration) {
        self.now_ms.set(self.now_ms.get() + d.as_millis() as u64);
    }
    fn reap(&self) {}
}
