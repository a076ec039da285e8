//! The browser's pipes, on two dedicated threads: one reads frames from
//! stdin, one writes to stdout. tokio's own stdin/stdout hand every read and
//! write to its blocking pool (a thread hop each way); a thread that does
//! nothing else answers a ping in half the time.
//!
//! The writer thread is the only code that writes to stdout in native mode
//! (in-process or relay): it coalesces whatever is queued into one write.

use tokio::sync::{mpsc, oneshot};

use crate::protocol::frame::{BlockingFrameReader, Inbound};
use crate::protocol::Wire;

/// Most bytes the writer gathers into one write.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Something the writer can put on the wire.
pub trait Frames: Send + 'static {
    /// Appends its frames to `out`.
    fn encode_into(&self, out: &mut Vec<u8>);
}

impl Frames for Wire {
    fn encode_into(&self, out: &mut Vec<u8>) {
        Wire::encode_into(self, out);
    }
}

/// Frames already encoded (a relay passes the daemon's through).
#[derive(Debug)]
pub struct Encoded(pub Vec<u8>);

impl Frames for Encoded {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }
}

/// Reads stdin's frames on a thread of its own until the end or an error
/// (which is the last item sent). The thread ends when the receiver goes.
pub fn spawn_reader(max: usize) -> mpsc::Receiver<std::io::Result<Inbound>> {
    let (tx, rx) = mpsc::channel(64);
    let spawned = std::thread::Builder::new().name("stdin".into()).spawn(move || {
        let mut frames = BlockingFrameReader::new(std::io::stdin().lock(), max);
        loop {
            let r = frames.read_frame();
            let more = matches!(r, Ok(Inbound::Frame(_) | Inbound::Oversized { .. }));
            if tx.blocking_send(r).is_err() || !more {
                return;
            }
        }
    });
    if let Err(e) = spawned {
        // No thread, no input: say so as the stream's only item.
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(Err(e));
        return rx;
    }
    rx
}

/// Writes what is sent to stdout on a thread of its own, until every sender
/// is gone or stdout closes. The returned receiver fires when it is done.
pub fn spawn_writer<T: Frames>(rx: mpsc::Receiver<T>) -> oneshot::Receiver<()> {
    let (done_tx, done_rx) = oneshot::channel();
    let spawned = std::thread::Builder::new().name("stdout".into()).spawn(move || {
        #[allow(clippy::disallowed_methods)] // the one owner of stdout in native mode
        let stdout = std::io::stdout();
        write_loop(stdout.lock(), rx);
        let _ = done_tx.send(());
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start the stdout thread: {e}");
    }
    done_rx
}

/// Encodes `first` and whatever else is queued (up to MAX_BATCH_BYTES)
/// into `buf`, for one write.
fn gather<T: Frames>(first: T, rx: &mut mpsc::Receiver<T>, buf: &mut Vec<u8>) {
    buf.clear();
    first.encode_into(buf);
    while buf.len() < MAX_BATCH_BYTES {
        match rx.try_recv() {
            Ok(next) => next.encode_into(buf),
            Err(_) => break,
        }
    }
}

/// Blocking: writes each batch of queued frames with one write and flush.
pub fn write_loop<W: std::io::Write, T: Frames>(mut w: W, mut rx: mpsc::Receiver<T>) {
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.blocking_recv() {
        gather(first, &mut rx, &mut buf);
        if let Err(e) = w.write_all(&buf).and_then(|()| w.flush()) {
            // The browser closed its end: nobody is listening any more.
            tracing::info!(error = %e, "output closed");
            return;
        }
    }
}

/// The same over an async stream (the daemon's connections).
pub async fn write_loop_async<W, T>(mut w: W, mut rx: mpsc::Receiver<T>)
where
    W: tokio::io::AsyncWrite + Unpin,
    T: Frames,
{
    use tokio::io::AsyncWriteExt;
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        gather(first, &mut rx, &mut buf);
        if let Err(e) = async {
            w.write_all(&buf).await?;
            w.flush().await
        }
        .await
        {
            tracing::info!(error = %e, "connection closed");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_frames_leave_in_order_and_in_one_write() {
        struct Writes(Vec<Vec<u8>>);
        impl std::io::Write for Writes {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.push(b.to_vec());
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (tx, rx) = mpsc::channel(8);
        for i in 0..5u8 {
            tx.try_send(Encoded(vec![i; 3])).unwrap();
        }
        drop(tx);
        let mut w = Writes(Vec::new());
        write_loop(&mut w, rx);
        assert_eq!(w.0, vec![vec![0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]]);
    }
}
