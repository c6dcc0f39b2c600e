//! The API token file, read the same way by both ends: the agent (which keeps only its digest)
//! and the clients (which send it).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("reading the API token file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the API token file {} holds no token", path.display())]
    Empty { path: PathBuf },
}

/// The token in `path`, surrounding whitespace (a trailing newline, say) left out.
pub fn read_token_file(path: &Path) -> Result<Vec<u8>, TokenFileError> {
    let bytes = std::fs::read(path).map_err(|source| TokenFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let token = bytes.trim_ascii();
    if token.is_empty() {
        return Err(TokenFileError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(token.to_vec())
}
