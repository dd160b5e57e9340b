//! A user's quota and what uses it, by file type: the answer of
//! `GET /api/storage/usage`, the admin API's user details and
//! `stowage user show`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    core::Core,
    domain::filetype::FileType,
    meta::{MetaResult, TypeUsage, UserStorage},
};

#[derive(Debug, Serialize, Deserialize)]
pub struct Usage {
    pub user_id: String,
    pub total_bytes: i64,
    pub max_bytes: i64,
    pub file_count: i64,
    pub percent_used: f64,
    pub by_type: BTreeMap<String, TypeUsage>,
}

/// Percent of `max` used, rounded to 2 decimals; a zero quota reads as full.
pub fn percent(total: i64, max: i64) -> f64 {
    if max <= 0 {
        return 100.0;
    }
    (total as f64 * 10_000.0 / max as f64).round() / 100.0
}

/// `user`'s usage, with every file type present (zero when unused).
pub async fn usage_for(core: &Core, user: &UserStorage) -> MetaResult<Usage> {
    let mut by_type: BTreeMap<String, TypeUsage> = FileType::ALL
        .iter()
        .map(|t| (t.as_str().to_string(), TypeUsage::default()))
        .collect();
    for (t, u) in core.meta.usage_by_type(&user.user_id).await? {
        by_type.insert(t.as_str().to_string(), u);
    }
    Ok(Usage {
        user_id: user.user_id.clone(),
        total_bytes: user.total_bytes,
        max_bytes: user.max_bytes,
        file_count: user.file_count,
        percent_used: percent(user.total_bytes, user.max_bytes),
        by_type,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_rounds_to_two_decimals() {
        assert_eq!(super::percent(1, 3), 33.33);
        assert_eq!(super::percent(0, 100), 0.0);
        assert_eq!(super::percent(5, 0), 100.0);
        assert_eq!(super::percent(2, 3), 66.67);
    }
}
