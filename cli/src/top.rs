//! `msgi top --admin ADDR`: the live view of `msgi serve --admin` in the
//! terminal, refreshed every `--interval`, sorted by a column (`s` for the
//! next, `S` for the previous, `q` to quit); `--once` prints one frame and
//! exits. Plain ANSI: the alternate screen, a home-and-redraw per frame;
//! keys read without Enter by turning off the terminal's line mode (Unix).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

use crate::admin::{Connz, Sort, Varz, MAX_LIMIT};

/// How long one fetch (connect, request, answer) may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read: a full page of sessions is well under this.
const MAX_ANSWER: usize = 8 * 1024 * 1024;

#[derive(clap::Args, Debug)]
pub(crate) struct TopArgs {
    /// The address of `msgi serve --admin` (HOST:PORT, or http://HOST:PORT/).
    #[arg(long, value_name = "ADDR")]
    admin: String,
    /// The column to sort by (counts and times largest first).
    #[arg(long, value_enum, default_value_t = Sort::Id)]
    sort: Sort,
    /// Sessions shown (default: what fits the terminal; 100 with --once).
    #[arg(long, value_parser = crate::flags::count)]
    limit: Option<usize>,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0, value_parser = crate::flags::seconds)]
    interval: f64,
    /// Print one frame (no escape codes) and exit.
    #[arg(long)]
    once: bool,
}

pub(crate) async fn run(args: TopArgs) -> Result<()> {
    let addr = authority(&args.admin)?;
    if args.once {
        let limit = args.limit.unwrap_or(100);
        let (varz, connz) = fetch(&addr, args.sort, limit).await?;
        print!("{}", render(&addr, &varz, &connz, false));
        return Ok(());
    }
    interactive(&addr, &args).await
}

/// `host:port` of `--admin`, with or without `http://` and a trailing `/`.
fn authority(admin: &str) -> Result<String> {
    let rest = admin.strip_prefix("http://").unwrap_or(admin);
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) || admin.starts_with("https://") {
        bail!("--admin takes HOST:PORT (or http://HOST:PORT/), not {admin:?}");
    }
    Ok(rest.to_owned())
}

/// `/varz` and one `/connz` page.
async fn fetch(addr: &str, sort: Sort, limit: usize) -> Result<(Varz, Connz)> {
    let limit = limit.min(MAX_LIMIT);
    let varz = get(addr, "/varz").await?;
    let connz = get(addr, &format!("/connz?sort={}&limit={limit}", sort.name())).await?;
    let varz = serde_json::from_slice(&varz).context("/varz is not msgi's")?;
    let connz = serde_json::from_slice(&connz).context("/connz is not msgi's")?;
    Ok((varz, connz))
}

/// GET `path` on a connection of its own, within [`FETCH_TIMEOUT`].
async fn get(addr: &str, path: &str) -> Result<Bytes> {
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let connection = tokio::spawn(connection);
        let request = http::Request::get(path)
            .header(http::header::HOST, addr)
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the answer to {path}: {e}"))?
            .to_bytes();
        connection.abort();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            bail!("{path}: {status}: {}", text.escape_debug());
        }
        Ok(body)
    };
    tokio::time::timeout(FETCH_TIMEOUT, fetch)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {addr} within {FETCH_TIMEOUT:?}"))?
}

/// A duration as people read it: `950ms`, `12s`, `3m04s`, `2h05m`, `3d04h`.
fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// A count of bytes: `512B`, `1.5K`, `12.0M`, `3.2G`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// `text` with control characters escaped, cut to `width` characters.
fn cell(text: &str, width: usize) -> String {
    let escaped: String = text.chars().flat_map(char::escape_default).collect();
    let text = if text.chars().any(char::is_control) {
        escaped.as_str()
    } else {
        text
    };
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// One frame of the view: a summary, a header, a line per session.
/// `keys` (interactive) adds the key help.
fn render(addr: &str, varz: &Varz, connz: &Connz, keys: bool) -> String {
    let mut out = String::new();
    let c = &varz.counts;
    let _ = writeln!(
        out,
        "msgi {} at {addr}: up {}, {} session(s) ({} since start), in {} frames {}, out {} frames {}, errors {}",
        varz.version,
        human_duration(varz.uptime_ms),
        varz.connections,
        varz.total_connections,
        c.frames_in,
        human_bytes(c.bytes_in),
        c.frames_out,
        human_bytes(c.bytes_out),
        c.errors,
    );
    let mut sort = format!("sorted by {}", connz.sort);
    if keys {
        sort.push_str("  (s: next column, S: previous, q: quit)");
    }
    let shown = connz.connections.len();
    let _ = writeln!(out, "{shown} of {} session(s) shown, {sort}", connz.total);
    let _ = writeln!(
        out,
        "{:<20} {:<16} {:<21} {:<4} {:>7} {:>7} {:>10} {:>10} {:>8} {:>8} {:>8} {:>6} {:>5}",
        "ID",
        "CLIENT",
        "PEER",
        "VIA",
        "UPTIME",
        "IDLE",
        "FRAMES_IN",
        "FRAMES_OUT",
        "BYTES_IN",
        "BYTES_OUT",
        "WQUEUE",
        "OUTBOX",
        "INFL"
    );
    for s in &connz.connections {
        let _ =
            writeln!(
            out,
            "{:<20} {:<16} {:<21} {:<4} {:>7} {:>7} {:>10} {:>10} {:>8} {:>8} {:>8} {:>6} {:>5}{}",
            cell(&s.id, 20),
            // A session that announced none has its id as client id.
            cell(if s.client_id == s.id { "-" } else { &s.client_id }, 16),
            cell(s.peer.as_deref().unwrap_or("-"), 21),
            cell(&s.transport, 4),
            human_duration(s.uptime_ms),
            human_duration(s.idle_ms),
            s.counts.frames_in,
            s.counts.frames_out,
            human_bytes(s.counts.bytes_in),
            human_bytes(s.counts.bytes_out),
            human_bytes(s.write_queue),
            s.outbox,
            s.in_flight,
            if s.closing { " closing" } else { "" },
        );
    }
    out
}

/// What a key asks.
enum Key {
    Quit,
    NextSort,
    PreviousSort,
}

async fn interactive(addr: &str, args: &TopArgs) -> Result<()> {
    use std::io::Write;
    let terminal = terminal::Raw::enter();
    let mut keys = terminal::keys();
    // Without a readable stdin there are no keys: Ctrl-C quits.
    let mut keys_open = true;
    let mut sort = args.sort;
    let interval = Duration::from_secs_f64(args.interval);
    let mut stdout = std::io::stdout();
    // The alternate screen, cursor hidden; given back on the way out.
    let _ = write!(stdout, "\x1b[?1049h\x1b[?25l");
    let _restore = terminal::Restore;
    loop {
        // Rows left for sessions: the terminal's height less 4 lines.
        let limit = args
            .limit
            .unwrap_or_else(|| terminal::rows().unwrap_or(24).saturating_sub(4).max(1));
        let frame = match fetch(addr, sort, limit).await {
            Ok((varz, connz)) => render(addr, &varz, &connz, true),
            Err(e) => format!("msgi top: {addr}: {e:#}\n(retrying; q: quit)\n"),
        };
        // Home, each line cleared to its end, then everything below.
        let mut screen = String::from("\x1b[H");
        for line in frame.lines() {
            screen.push_str(line);
            screen.push_str("\x1b[K\n");
        }
        screen.push_str("\x1b[J");
        let _ = stdout.write_all(screen.as_bytes());
        let _ = stdout.flush();
        let wait = tokio::time::sleep(interval);
        tokio::select! {
            () = wait => {}
            key = keys.recv(), if keys_open => match key {
                None => keys_open = false,
                Some(Key::Quit) => break,
                Some(Key::NextSort) => sort = step(sort, 1),
                Some(Key::PreviousSort) => sort = step(sort, Sort::ALL.len() - 1),
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    drop(terminal);
    Ok(())
}

/// The column `by` places after `sort` in [`Sort::ALL`].
fn step(sort: Sort, by: usize) -> Sort {
    let i = Sort::ALL.iter().position(|s| *s == sort).unwrap_or(0);
    Sort::ALL[(i + by) % Sort::ALL.len()]
}

mod terminal {
    //! The terminal: keys without Enter (Unix), its height, and the screen
    //! given back on the way out.

    use super::Key;

    /// Leaves the alternate screen and shows the cursor when dropped.
    pub(super) struct Restore;

    impl Drop for Restore {
        fn drop(&mut self) {
            use std::io::Write;
            let mut stdout = std::io::stdout();
            let _ = write!(stdout, "\x1b[?25h\x1b[?1049l");
            let _ = stdout.flush();
        }
    }

    /// Keys as they are typed, read on a thread of their own (a plain
    /// thread: the runtime does not wait for it when `top` ends).
    pub(super) fn keys() -> tokio::sync::mpsc::Receiver<Key> {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        std::thread::spawn(move || {
            use std::io::Read;
            let mut byte = [0u8; 1];
            let mut stdin = std::io::stdin().lock();
            while let Ok(1) = stdin.read(&mut byte) {
                let key = match byte[0] {
                    b'q' | b'Q' => Key::Quit,
                    b's' => Key::NextSort,
                    b'S' => Key::PreviousSort,
                    _ => continue,
                };
                if tx.blocking_send(key).is_err() {
                    return;
                }
            }
        });
        rx
    }

    /// The terminal in non-canonical mode without echo while this lives
    /// (signals still work: Ctrl-C quits), as it was after.
    #[cfg(unix)]
    pub(super) struct Raw(Option<rustix::termios::Termios>);

    #[cfg(unix)]
    impl Raw {
        pub(super) fn enter() -> Raw {
            use rustix::termios::{self, LocalModes, OptionalActions, SpecialCodeIndex};
            let stdin = std::io::stdin();
            let Ok(saved) = termios::tcgetattr(&stdin) else {
                // Not a terminal: keys need Enter.
                return Raw(None);
            };
            let mut raw = saved.clone();
            raw.local_modes -= LocalModes::ICANON | LocalModes::ECHO;
            raw.special_codes[SpecialCodeIndex::VMIN] = 1;
            raw.special_codes[SpecialCodeIndex::VTIME] = 0;
            match termios::tcsetattr(&stdin, OptionalActions::Now, &raw) {
                Ok(()) => Raw(Some(saved)),
                Err(_) => Raw(None),
            }
        }
    }

    #[cfg(unix)]
    impl Drop for Raw {
        fn drop(&mut self) {
            if let Some(saved) = &self.0 {
                let stdin = std::io::stdin();
                let _ = rustix::termios::tcsetattr(
                    &stdin,
                    rustix::termios::OptionalActions::Now,
                    saved,
                );
            }
        }
    }

    /// The terminal's height in rows.
    #[cfg(unix)]
    pub(super) fn rows() -> Option<usize> {
        let size = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
        (size.ws_row > 0).then_some(usize::from(size.ws_row))
    }

    #[cfg(not(unix))]
    pub(super) struct Raw;

    #[cfg(not(unix))]
    impl Raw {
        pub(super) fn enter() -> Raw {
            Raw
        }
    }

    #[cfg(not(unix))]
    pub(super) fn rows() -> Option<usize> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_well() {
        assert_eq!(human_duration(950), "950ms");
        assert_eq!(human_duration(12_000), "12s");
        assert_eq!(human_duration(184_000), "3m04s");
        assert_eq!(human_duration(7_500_000), "2h05m");
        assert_eq!(human_duration(273_600_000), "3d04h");
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5K");
        assert_eq!(human_bytes(12 * 1024 * 1024), "12.0M");
        assert_eq!(cell("abc", 3), "abc");
        assert_eq!(cell("abcdef", 4), "abc…");
        assert_eq!(cell("a\x1b[2Jb", 20), "a\\u{1b}[2Jb");
        assert_eq!(authority("http://127.0.0.1:8/").unwrap(), "127.0.0.1:8");
        assert_eq!(authority("localhost:8").unwrap(), "localhost:8");
        assert!(authority("https://x:1/").is_err());
        assert!(authority("x:1/connz").is_err());
        assert_eq!(step(Sort::Id, 1), Sort::Uptime);
        assert_eq!(step(Sort::Id, Sort::ALL.len() - 1), Sort::InFlight);
    }
}
