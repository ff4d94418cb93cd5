//! Text a user writes that other users see (chat messages, display names):
//! which characters it may not hold.
//!
//! Refused: control characters (C0, DEL, C1: NUL, ESC and the terminal escape
//! sequences it starts; a newline and a tab are allowed where
//! [`Lines::Allowed`] says so) and the bidirectional controls (Unicode's
//! `Bidi_Control` property: U+061C, U+200E, U+200F, U+202A–U+202E,
//! U+2066–U+2069), which can make text read in another order than it is
//! stored ("Trojan Source"); invisible characters ([`is_invisible`]); and in a
//! name, the line and paragraph separators. The bidi list is Unicode's own twelve characters,
//! unchanged since Unicode 6.3; a crate for twelve code points would be more
//! to trust than the code.

/// Whether `\n` and `\t` are allowed (a message) or not (a name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    /// A message: `\n` and `\t` allowed.
    Allowed,
    /// A name or label: one line, no tab.
    Refused,
}

/// Whether `c` is a bidirectional control (Unicode `Bidi_Control`).
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Whether `c` is invisible and carries nothing a reader can see: a zero-width
/// space, a word joiner and the invisible operators, the byte order mark, the
/// Mongolian vowel separator, and the tag characters (U+E0000–U+E007F, which
/// can smuggle ASCII no reader sees; a side effect: the three subdivision flag
/// emoji, which are built from them, are refused too). The zero-width joiner
/// and non-joiner stay: emoji and several scripts need them.
pub fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{180E}' | '\u{E0000}'..='\u{E007F}')
}

/// Whether `c` breaks a line without being a control character (U+2028 line
/// separator, U+2029 paragraph separator): refused where lines are.
pub fn is_line_separator(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}')
}

/// The first character of `text` other users must not be shown, if any.
///
/// ```
/// use switchboard_proto::text::{forbidden_char, Lines};
/// assert_eq!(forbidden_char("hi\nthere", Lines::Allowed), None);
/// assert_eq!(forbidden_char("hi\nthere", Lines::Refused), Some('\n'));
/// assert_eq!(forbidden_char("a\u{1b}[2Jb", Lines::Allowed), Some('\u{1b}'));
/// assert_eq!(forbidden_char("abc\u{202E}fed", Lines::Allowed), Some('\u{202E}'));
/// assert_eq!(forbidden_char("a\u{200B}b", Lines::Allowed), Some('\u{200B}'));
/// assert_eq!(forbidden_char("zone\u{2028}x", Lines::Refused), Some('\u{2028}'));
/// assert_eq!(forbidden_char("para\u{2029}graph", Lines::Allowed), None);
/// assert_eq!(forbidden_char("\u{E0041}", Lines::Allowed), Some('\u{E0041}'));
/// assert_eq!(forbidden_char("👩\u{200D}💻", Lines::Refused), None);
/// ```
pub fn forbidden_char(text: &str, lines: Lines) -> Option<char> {
    text.chars().find(|&c| {
        let allowed_space = lines == Lines::Allowed && (c == '\n' || c == '\t');
        (c.is_control() && !allowed_space)
            || is_bidi_control(c)
            || is_invisible(c)
            || (lines == Lines::Refused && is_line_separator(c))
    })
}

/// `Err` naming the first forbidden character of `text` (as `U+XXXX`) and
/// what it is, for a `bad_request`.
///
/// # Errors
///
/// When `text` holds a character [`forbidden_char`] finds.
pub fn check(text: &str, lines: Lines) -> Result<(), String> {
    match forbidden_char(text, lines) {
        None => Ok(()),
        Some(c) => Err(format!(
            "U+{:04X} is not allowed ({})",
            c as u32,
            if is_bidi_control(c) {
                "a bidirectional control"
            } else if is_invisible(c) {
                "an invisible character"
            } else if is_line_separator(c) {
                "a line break"
            } else {
                "a control character"
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bidi_control_and_control_character_is_refused() {
        let bidi = [
            0x061C, 0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068,
            0x2069,
        ];
        for c in bidi.into_iter().filter_map(char::from_u32) {
            assert!(check(&format!("a{c}b"), Lines::Allowed).is_err(), "{c:?}");
        }
        for c in (0u32..0x20).chain(0x7F..0xA0).filter_map(char::from_u32) {
            let allowed = c == '\n' || c == '\t';
            assert_eq!(
                check(&format!("a{c}b"), Lines::Allowed).is_ok(),
                allowed,
                "{c:?}"
            );
            assert!(check(&format!("a{c}b"), Lines::Refused).is_err(), "{c:?}");
        }
        // Ordinary text of every script, emoji and joiners pass.
        for ok in ["héllo", "שלום", "مرحبا", "你好", "👩‍💻", "a\u{200D}b"] {
            assert!(check(ok, Lines::Refused).is_ok(), "{ok}");
        }
    }
}
