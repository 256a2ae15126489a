//! Images other tools made, laid out again as the disk they were taken from so drover can
//! capture it like any disk: a Clonezilla image directory (`ocs-sr savedisk`) is written into
//! a sparse disk file — its partition table from the saved dumps, its MBR and the hidden data
//! after it, each partition's used blocks from its partclone image (or all of a `dd` image),
//! swap partitions made again with their UUID and label — checking partclone's checksums and
//! the directory's `MD5SUMS`/`SHA1SUMS`/`B2SUMS` where present. A FOG image directory is laid
//! out the same way from its `dN.*` files. Blocks no image holds are never written, so the
//! file stays as small as the data.
//!
//! This module does not capture (the caller runs [`crate::capture`] over the file) and does
//! not read ntfsclone or partimage files, LVM volume groups, or lzop/lzip/lrzip compression:
//! each is refused with a message naming it.

pub mod clonezilla;
pub mod fog;
pub mod partclone;
pub mod pieces;
pub mod table;
mod write;

use std::path::Path;

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The directory is not one drover can read, or holds something inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// A file's contents do not check out.
    #[error("{file} is damaged: {detail}")]
    Damaged {
        /// The file (or files, "a or b") to look at.
        file: String,
        /// What does not check out.
        detail: String,
    },
    /// Reading the directory or writing the disk file failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One partition laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartDone {
    /// Its name in the source (`sda1`).
    pub name: String,
    /// What it was made from, for the report ("partclone EXTFS image, zstd, 3 pieces").
    pub from: String,
    /// Bytes written.
    pub bytes: u64,
}

/// A laid-out disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembly {
    /// Size of the disk laid out, in bytes.
    pub disk_size: u64,
    /// The source disk's name (`sda`).
    pub disk: String,
    /// The partitions written, in table order.
    pub parts: Vec<PartDone>,
    /// Things the caller should tell the user.
    pub notes: Vec<String>,
}

/// Whether `dir` looks like a Clonezilla image directory.
pub fn is_clonezilla(dir: &Path) -> bool {
    dir.join("parts").is_file()
        || dir.join("disk").is_file()
        || dir.join("clonezilla-img").is_file()
}

/// Lays the image directory `dir` out into `out` (a new, empty file), choosing the source disk
/// `disk` when the image holds several.
pub fn assemble(
    dir: &Path,
    disk: Option<&str>,
    out: &std::fs::File,
) -> Result<Assembly, ImportError> {
    if !dir.is_dir() {
        return Err(ImportError::Invalid(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if is_clonezilla(dir) {
        return clonezilla::assemble(dir, disk, out);
    }
    if fog::is_fog(dir) {
        return fog::assemble(dir, disk, out);
    }
    Err(ImportError::Invalid(format!(
        "{} is neither a Clonezilla image directory (no `disk` or `parts` file) nor a FOG one \
         (no `d1.partitions`)",
        dir.display()
    )))
}
