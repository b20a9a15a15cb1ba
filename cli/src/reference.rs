//! THE REFERENCE: a minimal raw-tokio MSGI echo server, used only by
//! `msgi bench` as the yardstick msgi is measured against. Not part of the
//! library and not a server anyone should deploy: it checks only what it
//! must to find frame boundaries, has no sessions, timers, limits or
//! shutdown, and answers every frame by echoing its bytes (PING as PONG).
//!
//! Like msgi it writes each batch of answers with one write and holds no
//! buffer while a connection is idle, so memory per idle connection is
//! comparable.

use std::io;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const MAX_FRAME: usize = 1 << 20;

/// Accepts connections for ever.
pub(crate) async fn run(listener: TcpListener) -> io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let _ = connection(stream).await;
        });
    }
}

async fn connection(mut stream: TcpStream) -> io::Result<()> {
    let mut input = BytesMut::new();
    let mut output = BytesMut::new();
    loop {
        if input.is_empty() {
            // Idle: wait without holding a buffer.
            input = BytesMut::new();
            stream.readable().await?;
        }
        input.reserve(64 * 1024);
        match stream.try_read_buf(&mut input) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                stream.readable().await?;
                continue;
            }
            Err(e) => return Err(e),
        }
        while input.len() >= 10 {
            if &input[..4] != b"MSGI" {
                return Ok(());
            }
            let len = u32::from_be_bytes([input[4], input[5], input[6], input[7]]) as usize;
            if !(10..=MAX_FRAME).contains(&len) {
                return Ok(());
            }
            if input.len() < len {
                break;
            }
            let start = output.len();
            output.extend_from_slice(&input[..len]);
            if input[9] == 0x01 && input[8] & 0x0F == 0 {
                output[start + 9] = 0x02; // PING -> PONG
            }
            input.advance(len);
        }
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
            if input.is_empty() {
                output = BytesMut::new();
            }
        }
    }
}
