//! What a scoring run reads and writes: one input file (local or
//! `s3://`) into one output file, or a directory or glob of files, each a
//! partition scored into the output directory under its own file name. A
//! partition whose output file exists is complete (outputs are renamed into
//! place when whole), so a rerun skips it.

use std::path::{Path, PathBuf};

use greenbelt_features::defs::{Location, SourceFormat};

use crate::error::{AppError, Result};

/// One input file and the output file it is scored into.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub input: Location,
    pub format: SourceFormat,
    pub output: PathBuf,
}

/// One file, or partitions (skipped when their output exists).
#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    Single(Part),
    Partitioned(Vec<Part>),
}

impl Layout {
    pub fn parts(&self) -> &[Part] {
        match self {
            Layout::Single(p) => std::slice::from_ref(p),
            Layout::Partitioned(ps) => ps,
        }
    }
}

/// The input's format: `format` when given, else by extension (`.csv`
/// is CSV, anything else Parquet).
fn format_of(loc: &Location, format: Option<SourceFormat>) -> SourceFormat {
    format.unwrap_or_else(|| greenbelt_features::source::format_of(loc))
}

/// The layout for `--input input --output output`.
pub fn layout(input: &str, output: &Path, format: Option<SourceFormat>) -> Result<Layout> {
    let loc = Location::from_path(Path::new(input))?;
    let files = match &loc {
        Location::S3 { .. } if has_wildcard(input) => {
            return Err(AppError::Invalid(format!(
                "--input {input}: globs work for local files only; give one s3:// object"
            )));
        }
        Location::S3 { .. } => None,
        Location::Local(path) if has_wildcard(input) => Some(glob(path)?),
        Location::Local(path) if path.is_dir() => Some(list(path, format)?),
        Location::Local(path) if path.exists() => None,
        Location::Local(path) => {
            return Err(AppError::Invalid(format!(
                "--input {}: no such file or directory",
                path.display()
            )));
        }
    };
    let Some(files) = files else {
        if output.is_dir() {
            return Err(AppError::Invalid(format!(
                "--output {} is a directory; for one input file give the output file's path",
                output.display()
            )));
        }
        let format = format_of(&loc, format);
        return Ok(Layout::Single(Part {
            input: loc,
            format,
            output: output.to_path_buf(),
        }));
    };
    if output.is_file() {
        return Err(AppError::Invalid(format!(
            "--output {} is a file; the input {input} is partitioned ({} files), so give a directory for one output file each",
            output.display(),
            files.len()
        )));
    }
    let mut parts = Vec::with_capacity(files.len());
    for file in files {
        let Some(name) = file.file_name() else {
            continue;
        };
        if same_dir(&file, output) {
            return Err(AppError::Invalid(format!(
                "--output {} is the input's directory; the outputs would replace their inputs, so give another directory",
                output.display()
            )));
        }
        let input = Location::Local(file.clone());
        parts.push(Part {
            format: format_of(&input, format),
            output: output.join(name),
            input,
        });
    }
    Ok(Layout::Partitioned(parts))
}

fn has_wildcard(text: &str) -> bool {
    text.contains(['*', '?'])
}

fn same_dir(file: &Path, out_dir: &Path) -> bool {
    let parent = file.parent().unwrap_or(Path::new("."));
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    match (
        std::fs::canonicalize(parent),
        std::fs::canonicalize(out_dir),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Whether `name` is an input partition: not hidden, not an unfinished
/// output, a Parquet or CSV name (any name when the format is given).
fn is_partition(name: &str, format: Option<SourceFormat>) -> bool {
    if name.starts_with('.') || name.starts_with('_') || name.ends_with(".tmp") {
        return false;
    }
    let ext = Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match format {
        Some(_) => true,
        None => matches!(ext.as_deref(), Some("parquet" | "csv")),
    }
}

/// The partition files in `dir`, sorted by name.
fn list(dir: &Path, format: Option<SourceFormat>) -> Result<Vec<PathBuf>> {
    let files = files_in(dir, |name| is_partition(name, format))?;
    if files.is_empty() {
        return Err(AppError::Invalid(format!(
            "--input {}: no Parquet or CSV files in the directory",
            dir.display()
        )));
    }
    Ok(files)
}

/// The files matching a pattern whose last component has `*` or `?`.
fn glob(pattern: &Path) -> Result<Vec<PathBuf>> {
    let dir = pattern.parent().filter(|d| !d.as_os_str().is_empty());
    let name = pattern.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if dir.is_some_and(|d| has_wildcard(&d.to_string_lossy())) {
        return Err(AppError::Invalid(format!(
            "--input {}: only the file name may have * or ?",
            pattern.display()
        )));
    }
    let dir = dir.unwrap_or(Path::new("."));
    let hidden = |n: &str| n.starts_with('.') && !name.starts_with('.');
    let files = files_in(dir, |n| {
        !n.ends_with(".tmp") && !hidden(n) && wildcard(name, n)
    })?;
    if files.is_empty() {
        return Err(AppError::Invalid(format!(
            "--input {}: no file matches",
            pattern.display()
        )));
    }
    Ok(files)
}

fn files_in(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let what = || format!("listing {}", dir.display());
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(AppError::io(what()))? {
        let entry = entry.map_err(AppError::io(what()))?;
        let is_file = entry.file_type().map_err(AppError::io(what()))?.is_file();
        if is_file && entry.file_name().to_str().is_some_and(&keep) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// `*` (any run) and `?` (any one character) against a whole name.
fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        match p.get(i) {
            Some('*') => {
                star = Some((i, j));
                i += 1;
            }
            Some(c) if *c == '?' || Some(c) == n.get(j) => {
                i += 1;
                j += 1;
            }
            _ => match star {
                Some((si, sj)) => {
                    i = si + 1;
                    j = sj + 1;
                    star = Some((si, sj + 1));
                }
                None => return false,
            },
        }
    }
    p.get(i..)
        .is_some_and(|rest| rest.iter().all(|c| *c == '*'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn wildcards_match_whole_names() {
        assert!(wildcard("part-*.parquet", "part-0001.parquet"));
        assert!(wildcard("*", "x"));
        assert!(wildcard("p?rt*", "part"));
        assert!(wildcard("*a*b", "xxaxxb"));
        assert!(!wildcard("part-*.parquet", "part-0001.csv"));
        assert!(!wildcard("a?", "a"));
        assert!(!wildcard("*.parquet", "x.parquet.tmp"));
    }

    #[test]
    fn a_directory_is_partitions_and_a_file_is_one() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let inp = d.join("in");
        std::fs::create_dir(&inp).unwrap();
        for n in [
            "b.parquet",
            "a.parquet",
            "c.csv",
            ".hidden.parquet",
            "x.parquet.tmp",
            "notes.txt",
        ] {
            std::fs::write(inp.join(n), b"").unwrap();
        }
        let out = d.join("out");
        let Layout::Partitioned(parts) = layout(inp.to_str().unwrap(), &out, None).unwrap() else {
            panic!()
        };
        let names: Vec<_> = parts
            .iter()
            .map(|p| p.output.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["a.parquet", "b.parquet", "c.csv"]);
        assert_eq!(parts[2].format, SourceFormat::Csv);
        assert_eq!(parts[0].output, out.join("a.parquet"));

        let pattern = inp.join("*.parquet");
        let l = layout(pattern.to_str().unwrap(), &out, None).unwrap();
        assert_eq!(l.parts().len(), 2);

        let single = layout(
            inp.join("c.csv").to_str().unwrap(),
            &d.join("o.parquet"),
            None,
        )
        .unwrap();
        assert!(matches!(single, Layout::Single(ref p) if p.format == SourceFormat::Csv));

        let e = layout(inp.to_str().unwrap(), &inp, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the input's directory"), "{e}");
        let e = layout(d.join("nope.parquet").to_str().unwrap(), &out, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.parquet: no such file"), "{e}");
    }
}
