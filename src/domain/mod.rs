//! Plain domain values shared by every layer: byte sizes, file types decided
//! from content, safe display names and on-disk user directory names.

pub mod filetype;
pub mod names;
pub mod size;
