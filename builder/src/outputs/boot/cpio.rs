//! newc ("070701") cpio writer, as the kernel's initramfs unpacker reads it.
//! Reproducible by construction: the caller's order (sorted), inode numbers counted
//! from 1 in that order, one mtime for everything, owners as given.

use std::io::{self, Read, Write};

/// One archive member. Names are relative (`etc/kiln/modules.load`); the root is `.`.
pub enum Node<'a> {
    Dir {
        name: &'a str,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    File {
        name: &'a str,
        mode: u32,
        uid: u32,
        gid: u32,
        size: u64,
        data: Box<dyn Read + 'a>,
    },
    Symlink {
        name: &'a str,
        target: &'a str,
        uid: u32,
        gid: u32,
    },
    CharDev {
        name: &'a str,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

pub struct Writer<W: Write> {
    w: W,
    ino: u32,
    written: u64,
    mtime: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(w: W, mtime: u64) -> Self {
        Writer {
            w,
            ino: 0,
            written: 0,
            mtime,
        }
    }

    pub fn add(&mut self, node: Node<'_>) -> io::Result<()> {
        self.ino += 1;
        let ino = self.ino;
        match node {
            Node::Dir {
                name,
                mode,
                uid,
                gid,
            } => self.header(name, ino, S_IFDIR | mode, uid, gid, 2, 0, (0, 0)),
            Node::File {
                name,
                mode,
                uid,
                gid,
                size,
                mut data,
            } => {
                let len = u32::try_from(size).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("{name}: over 4 GiB"))
                })?;
                self.header(name, ino, S_IFREG | mode, uid, gid, 1, len, (0, 0))?;
                let copied = io::copy(&mut (&mut data).take(size), &mut self.w)?;
                if copied != size {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{name}: expected {size} bytes, got {copied}"),
                    ));
                }
                self.written += copied;
                self.pad()
            }
            Node::Symlink {
                name,
                target,
                uid,
                gid,
            } => {
                let len = target.len() as u32;
                self.header(name, ino, S_IFLNK | 0o777, uid, gid, 1, len, (0, 0))?;
                self.put(target.as_bytes())?;
                self.pad()
            }
            Node::CharDev {
                name,
                mode,
                major,
                minor,
            } => self.header(name, ino, S_IFCHR | mode, 0, 0, 1, 0, (major, minor)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        uid: u32,
        gid: u32,
        nlink: u32,
        size: u32,
        rdev: (u32, u32),
    ) -> io::Result<()> {
        let mtime = u32::try_from(self.mtime).unwrap_or(u32::MAX);
        let h = format!(
            "070701{ino:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{size:08X}\
             {:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.put(h.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    /// Writes the `TRAILER!!!` record and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        let mtime = self.mtime;
        self.mtime = 0;
        self.header("TRAILER!!!", 0, 0, 0, 0, 1, 0, (0, 0))?;
        self.mtime = mtime;
        Ok(self.w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), 1_700_000_000);
        w.add(Node::Dir {
            name: ".",
            mode: 0o755,
            uid: 0,
            gid: 0,
        })
        .expect("dir");
        w.add(Node::File {
            name: "init",
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 5,
            data: Box::new(&b"hello"[..]),
        })
        .expect("file");
        w.add(Node::Symlink {
            name: "sbin",
            target: "bin",
            uid: 0,
            gid: 0,
        })
        .expect("link");
        w.finish().expect("finish")
    }

    /// GNU cpio is the oracle: it lists what we wrote with the right modes.
    #[test]
    fn gnu_cpio_reads_the_archive() {
        let bytes = sample();
        assert_eq!(bytes.len() % 4, 0);
        let mut child = Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .env("TZ", "UTC")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cpio installed");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&bytes)
            .expect("write");
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success());
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("-rwxr-xr-x"), "{listing}");
        assert!(listing.contains("sbin -> bin"), "{listing}");
        assert!(listing.contains("Nov 14  2023"), "{listing}");
        assert_eq!(sample(), bytes, "same input, same bytes");
    }

    #[test]
    fn short_content_is_an_error() {
        let mut w = Writer::new(Vec::new(), 0);
        let err = w
            .add(Node::File {
                name: "x",
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: 10,
                data: Box::new(&b"abc"[..]),
            })
            .expect_err("short");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
