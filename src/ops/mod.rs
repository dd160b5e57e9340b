//! Operator actions shared by the CLI and the admin API.

pub mod audit;
pub mod backup;
pub mod doctor;
pub mod lease;
pub mod migrate;
pub mod progress;
pub mod scheduler;

use crate::{
    core::Core,
    domain::names::user_dir_name,
    meta::{DeletedUser, MetaResult},
};

/// Removes every row and blob of `user`, then the user's directory.
pub async fn delete_user(state: &Core, user: &str) -> MetaResult<Option<DeletedUser>> {
    let Some(removed) = state.meta.delete_user(user).await? else {
        return Ok(None);
    };
    for key in &removed.blob_keys {
        if let Err(e) = state.blobs.remove(key).await {
            tracing::error!(error = %e, key, "could not remove blob of deleted user");
        }
    }
    // Sweep the user's prefix for anything the rows did not name (a
    // thumbnail written by a job racing this deletion, a blob left by a
    // crashed commit).
    let prefix = format!("{}/", user_dir_name(user));
    match state.blobs.list_prefix(&prefix).await {
        Ok(left) => {
            for e in left {
                if let Err(e) = state.blobs.remove(&e.key).await {
                    tracing::error!(error = %e, "could not remove blob of deleted user");
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "could not list the deleted user's blobs"),
    }
    // The volume also keeps the (now empty) directories.
    if let Some(root) = state.blobs.local_root() {
        let dir = root.join(user_dir_name(user));
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(error = %e, dir = %dir.display(), "could not remove user directory")
            }
        }
    }
    Ok(Some(removed))
}
