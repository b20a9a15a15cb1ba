//! Peer-chosen text made safe to log: control characters escaped, length capped.

use std::fmt;

/// The most characters of peer text a log line shows.
pub const PEER_TEXT_MAX_CHARS: usize = 200;

/// Displays bytes a peer chose (an ERROR or DISCONNECT reason, a client id)
/// for a log line or an error message: invalid UTF-8 is replaced, control
/// and other invisible characters and backslashes are escaped as Rust
/// escapes them (quotes too in `Debug`, which wraps the text in quotes; not
/// in `Display`, so a reason that quotes something reads as written), and
/// only the first [`PEER_TEXT_MAX_CHARS`] characters are shown, followed by
/// `…` and the total length in bytes when cut.
#[derive(Clone, Copy)]
pub struct PeerText<'a>(pub &'a [u8]);

impl PeerText<'_> {
    fn write(&self, f: &mut fmt::Formatter<'_>, escape_quotes: bool) -> fmt::Result {
        // A character is at most 4 bytes, and an invalid byte shows as one
        // character: one more than the shown characters lies within this
        // prefix, so the whole payload (up to the maximum frame size) is
        // never decoded or copied.
        let prefix = self
            .0
            .get(..self.0.len().min(4 * (PEER_TEXT_MAX_CHARS + 1)))
            .unwrap_or(self.0);
        let mut chars = prefix.utf8_chunks().flat_map(|chunk| {
            let bad = (!chunk.invalid().is_empty()).then_some(char::REPLACEMENT_CHARACTER);
            chunk.valid().chars().chain(bad)
        });
        for c in chars.by_ref().take(PEER_TEXT_MAX_CHARS) {
            if matches!(c, '"' | '\'') && !escape_quotes {
                fmt::Write::write_char(f, c)?;
            } else {
                fmt::Display::fmt(&c.escape_debug(), f)?;
            }
        }
        if chars.next().is_some() {
            write!(f, "…({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

impl fmt::Display for PeerText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, false)
    }
}

impl fmt::Debug for PeerText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        self.write(f, true)?;
        f.write_str("\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_control_characters() {
        let text = "bye\n\x1b[2J\r\0\u{202e} \"x\" \\";
        let shown = PeerText(text.as_bytes()).to_string();
        // Quotes read as written; backslashes stay escaped, so `\n` in the
        // output always means an escaped newline.
        assert_eq!(shown, "bye\\n\\u{1b}[2J\\r\\0\\u{202e} \"x\" \\\\");
        assert!(!shown.chars().any(char::is_control));
        // Debug wraps the text in quotes, so it escapes them.
        assert_eq!(
            format!("{:?}", PeerText(b"say \"hi\"")),
            "\"say \\\"hi\\\"\""
        );
    }

    #[test]
    fn truncates_long_text_and_says_how_long_it_was() {
        let long = vec![b'a'; 1 << 20];
        let shown = PeerText(&long).to_string();
        assert!(shown.starts_with(&"a".repeat(PEER_TEXT_MAX_CHARS)));
        assert!(shown.ends_with("…(1048576 bytes)"), "{shown}");
        assert!(shown.len() < PEER_TEXT_MAX_CHARS + 32);
    }

    #[test]
    fn replaces_invalid_utf8() {
        assert_eq!(PeerText(b"ok\xff").to_string(), "ok\u{fffd}");
        // As `String::from_utf8_lossy` does: one replacement per maximal
        // invalid sequence, a sequence cut at the end included.
        assert_eq!(
            PeerText(b"a\xf0\x9f\x98b\xe2\x82").to_string(),
            "a\u{fffd}b\u{fffd}"
        );
    }

    #[test]
    fn the_cut_is_the_same_for_any_text_at_the_limit() {
        // Exactly the limit: nothing cut. One more character (of any width,
        // or an invalid byte): cut, with the total length.
        for one in ["a", "é", "€", "😀", "\u{fffd}"] {
            let text = one.repeat(PEER_TEXT_MAX_CHARS);
            assert_eq!(PeerText(text.as_bytes()).to_string(), text);
            let longer = one.repeat(PEER_TEXT_MAX_CHARS + 1);
            let shown = PeerText(longer.as_bytes()).to_string();
            assert_eq!(shown, format!("{text}…({} bytes)", longer.len()));
        }
        let invalid = vec![0xffu8; 1 << 20];
        let shown = PeerText(&invalid).to_string();
        let replaced = "\u{fffd}".repeat(PEER_TEXT_MAX_CHARS);
        assert_eq!(shown, format!("{replaced}…(1048576 bytes)"));
        let at_limit = vec![0xffu8; PEER_TEXT_MAX_CHARS];
        assert_eq!(PeerText(&at_limit).to_string(), replaced);
    }
}
