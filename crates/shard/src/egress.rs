//! Writing response frames to a client's socket. A frame is a list of buffers
//! (for a fetch: small field buffers around the stored batches' own buffers,
//! whether they came from the tail cache or a disk read); they go to the
//! kernel as they are, with one `sendmsg` carrying an iovec per buffer, never
//! copied into one buffer first. When the socket is full, the writer waits for
//! it through glommio's own write (readiness from the core's ring), then goes
//! on with `sendmsg`. Buffers of at least `zc_threshold` bytes go out with
//! io_uring SEND_ZC instead (`zero_copy.rs`), where it is enabled.

use crate::zero_copy::ZeroCopy;
use futures_lite::AsyncWriteExt;
use sluice_protocol::frame::ResponseFrame;
use std::io;
use std::os::unix::io::RawFd;
use std::time::Duration;

/// Most iovecs in one sendmsg (Linux's UIO_MAXIOV is 1024).
const IOVECS_MAX: usize = 1024;

/// Writes all of `frame` to `fd` (the socket `writer` writes to). A write that
/// makes no progress for `idle` fails with `TimedOut`.
pub async fn write_frame(
    fd: RawFd,
    writer: &mut (impl futures_lite::AsyncWrite + Unpin),
    frame: &ResponseFrame,
    idle: Duration,
    zero_copy: Option<(&ZeroCopy, usize)>,
) -> io::Result<()> {
    let parts = &frame.parts;
    // Position: part `index`, byte `at` within it.
    let (mut index, mut at) = (0usize, 0usize);
    while index < parts.len() {
        if at >= parts[index].len() {
            index += 1;
            at = 0;
            continue;
        }
        let large = |part: &bytes::Bytes| {
            zero_copy.is_some_and(|(zc, min)| part.len() >= min && zc.usable())
        };
        if at == 0 && large(&parts[index]) {
            let (zc, _) = zero_copy.expect("checked");
            let sent = futures_lite::future::or(
                async { Some(zc.send(fd, parts[index].clone()).await) },
                async {
                    glommio::timer::sleep(idle).await;
                    None
                },
            )
            .await;
            match sent {
                None => return Err(io::ErrorKind::TimedOut.into()),
                Some(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Some(Ok(n)) => at = n,
                Some(Err(e)) => return Err(e),
            }
            continue;
        }
        // Up to the next buffer for SEND_ZC.
        let run_end = (index + 1..parts.len())
            .find(|&i| large(&parts[i]))
            .unwrap_or(parts.len());
        let sent = if run_end - index == 1 {
            // One buffer: glommio's write is the same one syscall.
            None
        } else {
            send_vectored(fd, &parts[index..run_end], at)?
        };
        let written = match sent {
            Some(n) => n,
            None => {
                // Full socket (or a single buffer): glommio waits for room.
                let part = &parts[index][at..];
                match futures_lite::future::or(async { Some(writer.write(part).await) }, async {
                    glommio::timer::sleep(idle).await;
                    None
                })
                .await
                {
                    None => return Err(io::ErrorKind::TimedOut.into()),
                    Some(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Some(result) => result?,
                }
            }
        };
        // Advance over what went out.
        let mut left = written;
        while left > 0 && index < parts.len() {
            let rest = parts[index].len() - at;
            if left >= rest {
                left -= rest;
                index += 1;
                at = 0;
            } else {
                at += left;
                left = 0;
            }
        }
    }
    Ok(())
}

/// One non-blocking sendmsg of `parts` (the first from byte `at`): the bytes
/// sent, or `None` if the socket has no room now.
fn send_vectored(fd: RawFd, parts: &[bytes::Bytes], at: usize) -> io::Result<Option<usize>> {
    let iovecs: Vec<libc::iovec> = parts
        .iter()
        .take(IOVECS_MAX)
        .enumerate()
        .map(|(i, part)| {
            let part = if i == 0 { &part[at..] } else { &part[..] };
            libc::iovec {
                iov_base: part.as_ptr() as *mut libc::c_void,
                iov_len: part.len(),
            }
        })
        .collect();
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = iovecs.as_ptr() as *mut libc::iovec;
    header.msg_iovlen = iovecs.len() as _;
    loop {
        // SAFETY: the iovecs point into buffers borrowed for this call.
        let sent = unsafe { libc::sendmsg(fd, &header, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if sent >= 0 {
            return Ok(Some(sent as usize));
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::WouldBlock => return Ok(None),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(error),
        }
    }
}
