//! A writer of "newc" cpio archives, the format the Linux kernel unpacks as its initramfs
//! (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Every entry gets the same owner (root), a zero mtime and inode numbers in the order of
//! addition, so the same entries always make the same bytes.

const MAGIC: &[u8] = b"070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// An archive being written; [`Archive::finish`] adds the trailer and gives its bytes.
#[derive(Debug, Default)]
pub(crate) struct Archive {
    bytes: Vec<u8>,
    next_inode: u32,
}

impl Archive {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn directory(&mut self, path: &str) {
        self.entry(path, S_IFDIR | 0o755, 0, (0, 0), &[]);
    }

    pub(crate) fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, S_IFREG | (mode & 0o7777), 1, (0, 0), data);
    }

    pub(crate) fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    pub(crate) fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | (mode & 0o7777), 1, (major, minor), &[]);
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.write_header(TRAILER, 0, 0, 0, (0, 0), 0);
        self.bytes
    }

    fn entry(&mut self, path: &str, mode: u32, links: u32, device: (u32, u32), data: &[u8]) {
        let size = u32::try_from(data.len()).expect("initramfs files are far below 4 GiB");
        self.next_inode += 1;
        let inode = self.next_inode;
        let links = if mode & S_IFDIR == S_IFDIR { 2 } else { links };
        self.write_header(path, inode, mode, links, device, size);
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn write_header(
        &mut self,
        name: &str,
        inode: u32,
        mode: u32,
        links: u32,
        device: (u32, u32),
        size: u32,
    ) {
        let name_size = u32::try_from(name.len() + 1).expect("archive paths are short");
        self.bytes.extend_from_slice(MAGIC);
        let fields = [
            inode, mode, 0, // uid
            0, // gid
            links, 0, // mtime
            size, 0, // devmajor: the file system the entry came from, none here
            0, // devminor
            device.0, device.1, name_size, 0, // check: only the "070702" format fills it
        ];
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08X}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
    }

    /// Header-plus-name and data each end on a 4-byte boundary.
    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry read back: (name, mode, rdev, data).
    type Entry = (String, u32, (u32, u32), Vec<u8>);

    /// A reader written from the format's definition, independent of the writer's code.
    fn read_archive(bytes: &[u8]) -> Vec<Entry> {
        let field = |at: usize, index: usize| {
            let start = at + 6 + index * 8;
            let text = std::str::from_utf8(&bytes[start..start + 8]).expect("hex digits");
            u32::from_str_radix(text, 16).expect("a hex field")
        };
        let align = |n: usize| n.div_ceil(4) * 4;
        let mut entries = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(&bytes[at..at + 6], b"070701", "magic at offset {at}");
            let mode = field(at, 1);
            let size = field(at, 6) as usize;
            let rdev = (field(at, 9), field(at, 10));
            let name_size = field(at, 11) as usize;
            let name_start = at + 110;
            let name = std::str::from_utf8(&bytes[name_start..name_start + name_size - 1])
                .expect("a utf-8 name")
                .to_owned();
            assert_eq!(bytes[name_start + name_size - 1], 0, "names end with NUL");
            let data_start = align(name_start + name_size);
            if name == TRAILER {
                assert_eq!(align(data_start), bytes.len(), "nothing after the trailer");
                return entries;
            }
            let data = bytes[data_start..data_start + size].to_vec();
            entries.push((name, mode, rdev, data));
            at = align(data_start + size);
        }
    }

    #[test]
    fn entries_read_back_with_their_kind_mode_and_bytes() {
        let mut archive = Archive::new();
        archive.directory("bin");
        archive.file("bin/busybox", 0o755, b"\x7fELF...");
        archive.symlink("bin/sh", "busybox");
        archive.char_device("dev/console", 0o600, 5, 1);
        archive.file("init", 0o755, b"#!/bin/sh\n");
        let entry =
            |name: &str, mode, rdev, data: &[u8]| (name.to_owned(), mode, rdev, data.to_vec());
        assert_eq!(
            read_archive(&archive.finish()),
            vec![
                entry("bin", 0o040_755, (0, 0), b""),
                entry("bin/busybox", 0o100_755, (0, 0), b"\x7fELF..."),
                entry("bin/sh", 0o120_777, (0, 0), b"busybox"),
                entry("dev/console", 0o020_600, (5, 1), b""),
                entry("init", 0o100_755, (0, 0), b"#!/bin/sh\n"),
            ]
        );
    }

    #[test]
    fn every_header_starts_on_a_four_byte_boundary_whatever_the_lengths() {
        let mut archive = Archive::new();
        for length in 0..9 {
            let name = "n".repeat(length + 1);
            archive.file(&name, 0o644, &vec![b'x'; length]);
        }
        let entries = read_archive(&archive.finish());
        assert_eq!(entries.len(), 9);
        for (length, (name, _, _, data)) in entries.iter().enumerate() {
            assert_eq!(name.len(), length + 1);
            assert_eq!(data.len(), length);
        }
    }

    #[test]
    fn the_same_entries_make_the_same_bytes() {
        let make = || {
            let mut archive = Archive::new();
            archive.directory("etc");
            archive.file("etc/a", 0o644, b"a");
            archive.finish()
        };
        assert_eq!(make(), make());
    }
}
