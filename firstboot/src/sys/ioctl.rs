//! The only `unsafe` in firstboot: block and loop device ioctls through `rustix::ioctl`.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::os::fd::AsFd;

use rustix::io;
use rustix::ioctl::{ioctl, Ioctl, IoctlOutput, Opcode};

/// `LOOP_CTL_GET_FREE` on /dev/loop-control.
pub const LOOP_CTL_GET_FREE: Opcode = 0x4C82;
/// `LOOP_SET_FD` on /dev/loopN.
pub const LOOP_SET_FD: Opcode = 0x4C00;
/// `LOOP_CONFIGURE` on /dev/loopN (Linux ≥ 5.8).
pub const LOOP_CONFIGURE: Opcode = 0x4C0A;
/// `BLKRRPART`: re-read the partition table.
pub const BLKRRPART: Opcode = 0x125F;

/// `LO_FLAGS_READ_ONLY`
pub const LO_FLAGS_READ_ONLY: u32 = 1;
/// `LO_FLAGS_AUTOCLEAR`
pub const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// An ioctl whose argument is an integer and whose result is the syscall's return value.
struct IntArg<const OP: Opcode>(usize);

// SAFETY: the argument is passed by value (never dereferenced by the kernel for these
// opcodes: LOOP_CTL_GET_FREE ignores it, LOOP_SET_FD takes an fd, BLKRRPART ignores it),
// and the output is the plain integer return value.
unsafe impl<const OP: Opcode> Ioctl for IntArg<OP> {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = false;
    fn opcode(&self) -> Opcode {
        OP
    }
    fn as_ptr(&mut self) -> *mut c_void {
        self.0 as *mut c_void
    }
    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> io::Result<IoctlOutput> {
        Ok(out)
    }
}

/// `struct loop_info64` from linux/loop.h (232 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LoopInfo64 {
    pub lo_device: u64,
    pub lo_inode: u64,
    pub lo_rdevice: u64,
    pub lo_offset: u64,
    pub lo_sizelimit: u64,
    pub lo_number: u32,
    pub lo_encrypt_type: u32,
    pub lo_encrypt_key_size: u32,
    pub lo_flags: u32,
    pub lo_file_name: [u8; 64],
    pub lo_crypt_name: [u8; 64],
    pub lo_encrypt_key: [u8; 32],
    pub lo_init: [u64; 2],
}

/// `struct loop_config` from linux/loop.h.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LoopConfig {
    pub fd: u32,
    pub block_size: u32,
    pub info: LoopInfo64,
    pub reserved: [u64; 8],
}

impl LoopConfig {
    /// A config attaching `fd` with `flags`.
    pub fn new(fd: u32, flags: u32) -> Self {
        LoopConfig {
            fd,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: flags,
                lo_file_name: [0; 64],
                lo_crypt_name: [0; 64],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        }
    }
}

struct Configure<'a>(&'a mut LoopConfig);

// SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `LoopConfig` mirrors with
// `repr(C)`; the pointer is valid for the duration of the call and not written.
unsafe impl Ioctl for Configure<'_> {
    type Output = ();
    const IS_MUTATING: bool = true;
    fn opcode(&self) -> Opcode {
        LOOP_CONFIGURE
    }
    fn as_ptr(&mut self) -> *mut c_void {
        (self.0 as *mut LoopConfig).cast()
    }
    unsafe fn output_from_ptr(_: IoctlOutput, _: *mut c_void) -> io::Result<()> {
        Ok(())
    }
}

/// Asks /dev/loop-control for a free loop device number.
pub fn loop_get_free(ctl: impl AsFd) -> io::Result<u32> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns the device number.
    let n = unsafe { ioctl(ctl, IntArg::<LOOP_CTL_GET_FREE>(0)) }?;
    u32::try_from(n).map_err(|_| io::Errno::RANGE)
}

/// Attaches `backing` to the loop device `dev` read-only (LOOP_CONFIGURE). No autoclear:
/// it would detach the device as soon as `dev` is closed, before anyone mounts it.
pub fn loop_configure(dev: impl AsFd, backing: impl AsFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = u32::try_from(backing.as_fd().as_raw_fd()).map_err(|_| io::Errno::BADF)?;
    let mut cfg = LoopConfig::new(fd, LO_FLAGS_READ_ONLY);
    // SAFETY: see `Configure`.
    unsafe { ioctl(dev, Configure(&mut cfg)) }
}

/// Attaches `backing` to the loop device `dev` (LOOP_SET_FD, for kernels before 5.8).
pub fn loop_set_fd(dev: impl AsFd, backing: impl AsFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = usize::try_from(backing.as_fd().as_raw_fd()).map_err(|_| io::Errno::BADF)?;
    // SAFETY: LOOP_SET_FD takes the backing file descriptor by value.
    unsafe { ioctl(dev, IntArg::<LOOP_SET_FD>(fd)) }.map(|_| ())
}

/// Asks the kernel to re-read the partition table of the whole-disk device `disk`.
pub fn blkrrpart(disk: impl AsFd) -> io::Result<()> {
    // SAFETY: BLKRRPART takes no argument.
    unsafe { ioctl(disk, IntArg::<BLKRRPART>(0)) }.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn blkrrpart_on_a_regular_file_is_refused_not_crashing() {
        let f = tempfile::tempfile().unwrap();
        assert!(blkrrpart(&f).is_err());
    }
}
