//! Names that cross the trust boundary.
//!
//! A client's file name is display data only: it is cleaned for showing and
//! for `Content-Disposition`, and never becomes part of a path. A user id
//! (`sub` of a token) becomes a directory name through a reversible,
//! filesystem-safe encoding.

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

/// Encodes a user id as one safe path component: ASCII alphanumerics, `-` and
/// `_` pass through; every other byte becomes `.xx` (lower hex). The result
/// never starts with a dot (so it cannot be `.`, `..` or `.tmp`), and distinct
/// ids give distinct names: an encoding that would start with `.` is prefixed
/// with `_`, which cannot collide because a literal leading `_` is encoded.
pub fn user_dir_name(user_id: &str) -> String {
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
    }
}
