//! The rules for what clients send, shared by every domain: text that Postbox stores (chat and support
//! messages, notification titles and texts: which characters are refused, what counts as blank), the
//! largest id, and the error that names the field ([`Invalid`], answered 400 `validation_error`).
//!
//! One place, so every caller refuses the same input with the same answer. Lengths stay with each
//! caller (their limits differ). Nothing here knows HTTP.

/// The largest id the API accepts (15 digits: exact in JavaScript numbers too).
pub const MAX_ID: i64 = 999_999_999_999_999;

/// A field of the input that is not acceptable, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Invalid {
            field,
            reason: reason.into(),
        }
    }
}

/// Whether `c` may not be stored: the C0 control characters (U+0000–U+001F) except tab, line feed and
/// carriage return, and DEL (U+007F). PostgreSQL cannot store NUL in text at all; the others are
/// invisible in clients and useful only to confuse them (terminal escapes, the ASCII separators that
/// Python counts as blank). Carriage return stays because CRLF is a newline (browsers send textarea
/// newlines as CRLF in forms).
pub fn is_refused(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{7f}')
}

/// Refuses `text` for `field` (400 `validation_error`) when it holds a refused character.
pub fn check(field: &'static str, text: &str) -> Result<(), Invalid> {
    if text.chars().any(is_refused) {
        return Err(Invalid::new(
            field,
            "may not contain control characters (U+0000 to U+001F other than tab, line feed and carriage return, or U+007F)",
        ));
    }
    Ok(())
}

/// A chat or support message text as stored: trimmed. The length counts what the client sent (refused
/// beyond `max` characters); control characters are refused ([`check`]); blank means whitespace only, as
/// the API document's `\S` pattern sees it, and is refused unless the message carries an attachment
/// (`Some(true)`); `None` where attachments are not offered.
pub fn message_text(text: &str, max: usize, attachment: Option<bool>) -> Result<String, Invalid> {
    if text.chars().count() > max {
        return Err(Invalid::new(
            "message",
            format!("is longer than {max} characters"),
        ));
    }
    check("message", text)?;
    if is_blank(text) && attachment != Some(true) {
        return Err(Invalid::new(
            "message",
            match attachment {
                Some(_) => "may not be blank (unless an attachment is sent)",
                None => "may not be blank",
            },
        ));
    }
    Ok(text.trim().to_owned())
}

/// Whether text is blank the way the API document's `\S` pattern sees it (Python's `str.isspace`,
/// which also counts the ASCII separators U+001C..U+001F).
pub fn is_blank(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// The JSON Schema pattern of a text that passes [`check`] (for the API document).
pub const PATTERN: &str = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f]*$";

/// The JSON Schema pattern of a text that passes [`check`] and is not blank.
pub const NOT_BLANK_PATTERN: &str = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f]*[^\\s\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f][^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f]*$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_c0_controls_but_tab_newlines_and_del() {
        for c in (0u32..0x20).chain([0x7f]).filter_map(char::from_u32) {
            let refused = !matches!(c, '\t' | '\n' | '\r');
            assert_eq!(is_refused(c), refused, "U+{:04X}", c as u32);
            assert_eq!(check("message", &format!("a{c}b")).is_err(), refused);
        }
        assert!(check("message", "line 1\r\nline 2\n\tkept").is_ok());
        // Everything else is text: printable ASCII, non-ASCII, the C1 range, emoji.
        for c in [
            ' ', '~', 'é', '\u{80}', '\u{9f}', '\u{a0}', '—', '🙂', '\u{2028}',
        ] {
            assert!(!is_refused(c), "U+{:04X}", c as u32);
        }
        let err = check("title", "a\u{0}b").unwrap_err();
        assert_eq!(err.field, "title");
        assert!(err.reason.contains("control characters"));
    }

    #[test]
    fn blank_is_whitespace_only() {
        assert!(is_blank(""));
        assert!(is_blank(" \t\r\n\u{a0}\u{3000}"));
        assert!(!is_blank(" x "));
    }
}
