//! Names that cross the trust boundary.
//!
//! A client's file name is display data only: it is cleaned for showing and
//! for `Content-Disposition`, and never becomes part of a path. A user id
//! (`sub` of a token) becomes a directory name through a filesystem-safe
//! encoding, reversible up to [`MAX_USER_DIR_BYTES`] and hashed beyond.

/// Longest display name kept, in characters (the column holds 500).
pub const MAX_NAME_CHARS: usize = 255;

/// Cleans a client-supplied file name for display: keeps only the last path
/// component, drops control, bidi-override and other invisible format
/// characters, trims dots and spaces at the ends, and caps the length while
/// keeping the extension. Never returns an empty string.
pub fn sanitize_file_name(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control() && !is_invisible_format(*c))
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| c == '.' || c.is_whitespace());
    let name = if trimmed.is_empty() { "file" } else { trimmed };
    if name.chars().count() <= MAX_NAME_CHARS {
        return name.to_string();
    }
    // Keep a short extension when truncating.
    let ext: Option<&str> = name
        .rsplit_once('.')
        .map(|(_, e)| e)
        .filter(|e| !e.is_empty() && e.chars().count() <= 16);
    match ext {
        Some(ext) => {
            let keep = MAX_NAME_CHARS - ext.chars().count() - 1;
            let stem: String = name.chars().take(keep).collect();
            format!("{stem}.{ext}")
        }
        None => name.chars().take(MAX_NAME_CHARS).collect(),
    }
}

/// Unicode format characters that can disguise a name (RTL override turning
/// `gpj.exe` into `exe.jpg`, zero-width joiners, BOM).
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}'
        | '\u{FEFF}' | '\u{061C}' | '\u{00AD}')
}

/// Longest user directory name, bytes: well inside the 255 of every common
/// filesystem, with room for the key prefixes an object store adds.
pub const MAX_USER_DIR_BYTES: usize = 200;

/// Separates the kept prefix of a long encoding from its hash. The plain
/// encoding never contains it: there a `.` always starts a `.xx` escape of
/// two lowercase hex digits, and `x` is not one.
const HASHED_SEPARATOR: &str = ".x";

/// Encodes a user id as one safe path component: ASCII alphanumerics, `-` and
/// `_` pass through; every other byte becomes `.xx` (lower hex). The result
/// never starts with a dot (so it cannot be `.`, `..` or `.tmp`), and distinct
/// ids give distinct names: an encoding that would start with `.` is prefixed
/// with `_`, which cannot collide because a literal leading `_` is encoded.
///
/// An encoding longer than [`MAX_USER_DIR_BYTES`] (a 255-byte `sub` may
/// need 766) is shortened to its start, cut between escapes, then
/// [`HASHED_SEPARATOR`] and the hex SHA-256 of the id. Shortened names
/// cannot equal plain ones (those never hold the separator) nor each other
/// (the hash differs), and an id whose encoding fits keeps exactly the name
/// it always had, so existing volumes need no migration.
pub fn user_dir_name(user_id: &str) -> String {
    let mut out = plain_dir_name(user_id);
    if out.len() <= MAX_USER_DIR_BYTES {
        return out;
    }
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(user_id.as_bytes()));
    let mut keep = MAX_USER_DIR_BYTES - HASHED_SEPARATOR.len() - hash.len();
    // Do not cut an escape in two: back up to the `.` that starts it.
    if let Some(dot) = out[keep - 2..keep].rfind('.') {
        keep = keep - 2 + dot;
    }
    out.truncate(keep);
    out.push_str(HASHED_SEPARATOR);
    out.push_str(&hash);
    out
}

/// The reversible encoding, whatever its length.
fn plain_dir_name(user_id: &str) -> String {
    let mut out = String::with_capacity(user_id.len() + 1);
    for (i, b) in user_id.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'-' || (b == b'_' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!(".{b:02x}"));
        }
    }
    if out.starts_with('.') {
        out.insert(0, '_');
    }
    if out.is_empty() {
        out.push_str("_empty");
    }
    out
}

/// RFC 6266 / RFC 8187 `Content-Disposition` value with an ASCII fallback
/// `filename` and a UTF-8 `filename*`.
pub fn content_disposition(kind: &str, name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() && c != '"' && c != '\\' && c != '%' {
                c
            } else {
                '_'
            }
        })
        .collect();
    const ATTR: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'!')
        .remove(b'#')
        .remove(b'$')
        .remove(b'&')
        .remove(b'+')
        .remove(b'-')
        .remove(b'.')
        .remove(b'^')
        .remove(b'_')
        .remove(b'`')
        .remove(b'|')
        .remove(b'~');
    let encoded = percent_encoding::utf8_percent_encode(name, ATTR);
    format!("{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn strips_paths_and_controls() {
        assert_eq!(sanitize_file_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_file_name("/abs/path/x.png"), "x.png");
        assert_eq!(sanitize_file_name("C:\\win\\evil.exe"), "evil.exe");
        assert_eq!(sanitize_file_name("a\0b\nc.txt"), "abc.txt");
        assert_eq!(sanitize_file_name("photo\u{202E}gpj.exe"), "photogpj.exe");
        assert_eq!(sanitize_file_name(".."), "file");
        assert_eq!(sanitize_file_name(""), "file");
        assert_eq!(sanitize_file_name("  .hidden  "), "hidden");
    }

    #[test]
    fn caps_long_names_keeping_extension() {
        let long = format!("{}.mp4", "a".repeat(1000));
        let s = sanitize_file_name(&long);
        assert_eq!(s.chars().count(), MAX_NAME_CHARS);
        assert!(s.ends_with(".mp4"));
    }

    #[test]
    fn user_dirs_are_safe_and_distinct() {
        assert_eq!(user_dir_name("user_2abcXYZ"), "user_2abcXYZ");
        assert_eq!(user_dir_name(".."), "_.2e.2e");
        assert_eq!(user_dir_name("a/b"), "a.2fb");
        assert_eq!(user_dir_name(".tmp"), "_.2etmp");
        assert_ne!(user_dir_name("_x"), user_dir_name(".5fx"));
        assert_eq!(user_dir_name(""), "_empty");
    }

    #[test]
    fn long_user_dirs_are_hashed() {
        // Fits: unchanged (66 escapes = 198 bytes, +"a", "b" = 200).
        let fits = format!("a{}b", "/".repeat(66));
        assert_eq!(user_dir_name(&fits).len(), 200);
        assert!(!user_dir_name(&fits).contains(HASHED_SEPARATOR));
        assert_eq!(user_dir_name(&"a".repeat(200)), "a".repeat(200));
        // One byte more: shortened.
        let long = format!("a{}bc", "/".repeat(66));
        let d = user_dir_name(&long);
        assert!(d.len() <= MAX_USER_DIR_BYTES, "{}", d.len());
        assert!(d.starts_with("a.2f.2f"), "{d}");
        assert!(d.ends_with(&format!(".x{}", crate_sha(&long))));
        // 255 non-alphanumeric bytes: 766 plain, at most 200 here.
        let hostile = "!".repeat(255);
        let d = user_dir_name(&hostile);
        assert!(d.len() <= MAX_USER_DIR_BYTES);
        assert!(d.starts_with("_.21.21"));
        // Ids that differ only at the end get different names.
        let a = format!("{}a", "é".repeat(127));
        let b = format!("{}b", "é".repeat(127));
        assert_ne!(user_dir_name(&a), user_dir_name(&b));
    }

    fn crate_sha(s: &str) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(s.as_bytes()))
    }

    #[test]
    fn disposition_has_fallback_and_utf8() {
        let v = content_disposition("attachment", "résumé \"x\".pdf");
        assert!(v.starts_with("attachment; filename=\"r_sum_ _x_.pdf\""));
        assert!(v.contains("filename*=UTF-8''r%C3%A9sum%C3%A9%20%22x%22.pdf"));
    }

    proptest! {
        #[test]
        fn sanitized_names_never_escape(raw in ".{0,600}") {
            let s = sanitize_file_name(&raw);
            prop_assert!(!s.is_empty());
            prop_assert!(!s.contains('/') && !s.contains('\\') && !s.contains('\0'));
            prop_assert!(s != "." && s != "..");
            prop_assert!(s.chars().count() <= MAX_NAME_CHARS);
            prop_assert!(!s.chars().any(|c| c.is_control()));
        }

        #[test]
        fn user_dir_is_one_safe_component(id in ".{0,80}") {
            let d = user_dir_name(&id);
            prop_assert!(!d.is_empty());
            prop_assert!(!d.starts_with('.'));
            prop_assert!(d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'));
        }

        #[test]
        fn user_dir_is_injective(a in "[a-z_./]{0,6}", b in "[a-z_./]{0,6}") {
            if a != b { prop_assert_ne!(user_dir_name(&a), user_dir_name(&b)); }
        }

        #[test]
        fn any_valid_sub_gets_a_short_safe_dir(id in "[^\\x00-\\x1f\\x7f]{1,255}") {
            prop_assume!(id.len() <= 255);
            let d = user_dir_name(&id);
            prop_assert!(d.len() <= MAX_USER_DIR_BYTES);
            prop_assert!(!d.starts_with('.'));
            prop_assert!(d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'));
        }

        /// Long and short ids around the limit, built from characters whose
        /// escapes fill the name fast, never share a directory.
        #[test]
        fn user_dir_is_injective_across_the_limit(
            a in "[a_/!]{55,80}",
            b in "[a_/!]{55,80}",
        ) {
            if a != b { prop_assert_ne!(user_dir_name(&a), user_dir_name(&b)); }
        }

        /// A name that fits is exactly the plain encoding (existing data
        /// keeps its directory); one that does not is a whole-escape prefix
        /// of it, the separator and the id's hash.
        #[test]
        fn short_names_are_unchanged(id in "[a-zA-Z0-9_/. -]{1,255}") {
            let plain = plain_dir_name(&id);
            let d = user_dir_name(&id);
            if plain.len() <= MAX_USER_DIR_BYTES {
                prop_assert_eq!(d, plain);
            } else {
                let tail = format!("{HASHED_SEPARATOR}{}", crate_sha(&id));
                prop_assert!(d.len() <= MAX_USER_DIR_BYTES);
                let head = d.strip_suffix(&tail).expect("hash at the end");
                prop_assert!(plain.starts_with(head));
                // Cut between escapes, never inside one.
                prop_assert!(head.rfind('.').map_or(true, |i| i + 3 <= head.len()));
                prop_assert!(head.len() >= MAX_USER_DIR_BYTES - tail.len() - 2);
            }
        }
    }
}
