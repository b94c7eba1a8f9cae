//! The smallest ISO 9660 image holding one file in its root (ECMA-119: a primary volume
//! descriptor, its terminator, the two path tables, the root directory, the file), for a
//! context CD. The machine has no mkisofs, and the test needs no more.

const SECTOR: usize = 2048;
const PVD: usize = 16;
const TERMINATOR: usize = 17;
const L_PATH_TABLE: usize = 18;
const M_PATH_TABLE: usize = 19;
const ROOT: usize = 20;
const FILE: usize = 21;

fn both_u32(value: u32) -> [u8; 8] {
    let mut bytes = [0; 8];
    bytes[..4].copy_from_slice(&value.to_le_bytes());
    bytes[4..].copy_from_slice(&value.to_be_bytes());
    bytes
}

fn both_u16(value: u16) -> [u8; 4] {
    let mut bytes = [0; 4];
    bytes[..2].copy_from_slice(&value.to_le_bytes());
    bytes[2..].copy_from_slice(&value.to_be_bytes());
    bytes
}

fn sector_u32(sector: usize) -> u32 {
    u32::try_from(sector).expect("a small image")
}

/// A directory record (ECMA-119 9.1).
fn directory_record(
    identifier: &[u8],
    extent: usize,
    length: usize,
    is_directory: bool,
) -> Vec<u8> {
    let padding = usize::from(identifier.len().is_multiple_of(2));
    let record_length = 33 + identifier.len() + padding;
    let mut record = vec![0u8; record_length];
    record[0] = u8::try_from(record_length).expect("a short name");
    record[2..10].copy_from_slice(&both_u32(sector_u32(extent)));
    record[10..18].copy_from_slice(&both_u32(u32::try_from(length).expect("a small file")));
    // Recorded 2000-01-01 00:00:00 UTC: years since 1900, month, day, h, m, s, offset.
    record[18..25].copy_from_slice(&[100, 1, 1, 0, 0, 0, 0]);
    record[25] = if is_directory { 2 } else { 0 };
    record[28..32].copy_from_slice(&both_u16(1));
    record[32] = u8::try_from(identifier.len()).expect("a short name");
    record[33..33 + identifier.len()].copy_from_slice(identifier);
    record
}

/// An image whose root holds `name` (upper case 8.3, e.g. `OVF-ENV.XML`) with `data`.
pub fn single_file_iso(name: &str, data: &[u8]) -> Vec<u8> {
    let file_sectors = data.len().div_ceil(SECTOR).max(1);
    let total = FILE + file_sectors;
    let mut image = vec![0u8; total * SECTOR];

    let pvd = &mut image[PVD * SECTOR..(PVD + 1) * SECTOR];
    pvd[0] = 1;
    pvd[1..6].copy_from_slice(b"CD001");
    pvd[6] = 1;
    pvd[8..40].fill(b' ');
    pvd[40..72].fill(b' ');
    pvd[40..47].copy_from_slice(b"CONTEXT");
    pvd[80..88].copy_from_slice(&both_u32(sector_u32(total)));
    pvd[120..124].copy_from_slice(&both_u16(1));
    pvd[124..128].copy_from_slice(&both_u16(1));
    pvd[128..132].copy_from_slice(&both_u16(2048));
    pvd[132..140].copy_from_slice(&both_u32(10));
    pvd[140..144].copy_from_slice(&sector_u32(L_PATH_TABLE).to_le_bytes());
    pvd[148..152].copy_from_slice(&sector_u32(M_PATH_TABLE).to_be_bytes());
    pvd[156..190].copy_from_slice(&directory_record(&[0], ROOT, SECTOR, true));
    pvd[190..813].fill(b' ');
    for date in [813, 830, 847, 864] {
        pvd[date..date + 16].fill(b'0');
    }
    pvd[881] = 1;

    let terminator = &mut image[TERMINATOR * SECTOR..(TERMINATOR + 1) * SECTOR];
    terminator[0] = 255;
    terminator[1..6].copy_from_slice(b"CD001");
    terminator[6] = 1;

    for (sector, location) in [
        (L_PATH_TABLE, sector_u32(ROOT).to_le_bytes()),
        (M_PATH_TABLE, sector_u32(ROOT).to_be_bytes()),
    ] {
        let table = &mut image[sector * SECTOR..sector * SECTOR + 10];
        table[0] = 1;
        table[2..6].copy_from_slice(&location);
        let parent = if sector == L_PATH_TABLE {
            1u16.to_le_bytes()
        } else {
            1u16.to_be_bytes()
        };
        table[6..8].copy_from_slice(&parent);
    }

    let mut root = directory_record(&[0], ROOT, SECTOR, true);
    root.extend(directory_record(&[1], ROOT, SECTOR, true));
    root.extend(directory_record(
        format!("{name};1").as_bytes(),
        FILE,
        data.len(),
        false,
    ));
    image[ROOT * SECTOR..ROOT * SECTOR + root.len()].copy_from_slice(&root);
    image[FILE * SECTOR..FILE * SECTOR + data.len()].copy_from_slice(data);
    image
}
