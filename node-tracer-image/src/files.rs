//! What the image must hold for the binary to start: the binary and what the dynamic loader
//! loads, as `ldd` (the loader itself, in trace mode) lists it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{BINARY_PATH, Error, io};

/// A regular file of the layer.
#[derive(Debug, Clone)]
pub struct File {
    /// Path inside the image, without the leading `/`.
    pub image_path: String,
    pub bytes: Vec<u8>,
    pub mode: u32,
}

/// The binary at [`BINARY_PATH`], and each library (and the loader) at the path the loader
/// resolved it to on this machine, as a regular file: the image has no symlinks to follow, and
/// the binary's `PT_INTERP` and the loader's default search path find them where they were.
pub fn runtime_files(binary: &Path) -> Result<Vec<File>, Error> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(io("run ldd"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let libs = if out.status.success() {
        libraries(&text).map_err(|reason| Error::Ldd {
            binary: binary.to_path_buf(),
            reason,
        })?
    } else if String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
        || text.contains("statically linked")
    {
        Vec::new()
    } else {
        return Err(Error::Ldd {
            binary: binary.to_path_buf(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    };
    let read = |p: &Path| std::fs::read(p).map_err(io(p.display()));
    let mut files = vec![File {
        image_path: BINARY_PATH.into(),
        bytes: read(binary)?,
        mode: 0o755,
    }];
    for lib in libs {
        let image_path = lib.to_string_lossy().trim_start_matches('/').to_string();
        if files.iter().all(|f| f.image_path != image_path) {
            files.push(File {
                image_path,
                bytes: read(&lib)?,
                // The loader is exec'd by the kernel as the interpreter: it needs the x bit.
                mode: 0o755,
            });
        }
    }
    files.sort_by(|a, b| a.image_path.cmp(&b.image_path));
    Ok(files)
}

/// The absolute paths in `ldd` output; a library it could not find is an error (the image would
/// not start).
fn libraries(ldd: &str) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for line in ldd.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            return Err(format!("missing library: {line}"));
        }
        if line.contains("statically linked") {
            continue;
        }
        // `name => /path (0x…)`, or the loader as `/path (0x…)`; the vDSO has no path.
        let target = line.split_once("=>").map_or(line, |(_, t)| t).trim();
        let path = target.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            out.push(PathBuf::from(path));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_names_libraries_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f2b)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2a)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f2c)\n";
        assert_eq!(
            libraries(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(libraries("\tlibfoo.so => not found\n").is_err());
    }

    #[test]
    fn the_image_holds_what_this_machines_ldd_names() {
        // /bin/true is dynamic on Debian: libc and the loader at least.
        let files = runtime_files(Path::new("/bin/true")).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.image_path.as_str()).collect();
        assert!(paths.contains(&BINARY_PATH), "{paths:?}");
        assert!(paths.iter().any(|p| p.ends_with("/libc.so.6")), "{paths:?}");
        assert!(paths.iter().any(|p| p.contains("ld-linux")), "{paths:?}");
        let mut sorted = paths.clone();
        sorted.sort_unstable();
        assert_eq!(paths, sorted);
    }
}
