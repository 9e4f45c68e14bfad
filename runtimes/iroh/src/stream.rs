//! One QUIC stream as the driver's [`Connection`]: tokio's I/O traits seen
//! as the `futures` ones, and a close that waits until the peer has the
//! data.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_io::{AsyncRead, AsyncWrite};
use iroh::endpoint::{Connection as QuicConnection, RecvStream, SendStream};
use peermq_driver::Connection;
use tokio::io::ReadBuf;

/// The driver's view of `conn`'s stream `send`/`recv`.
pub(crate) fn connection(conn: &QuicConnection, send: SendStream, recv: RecvStream) -> Connection {
    let weak = conn.weak_handle();
    // The per-address caps apply to peers on a direct path; a relayed
    // peer's address is the relay's, shared by everyone behind it.
    let remote =
        conn.paths()
            .iter()
            .find(|p| p.is_selected())
            .and_then(|p| match p.remote_addr() {
                iroh::TransportAddr::Ip(ip) => Some(*ip),
                _ => None,
            });
    Connection {
        reader: Box::new(Reader(recv)),
        writer: Box::new(Writer {
            send,
            stopped: None,
        }),
        remote,
        route: Arc::new(move || super::route(&weak)),
    }
}

struct Reader(RecvStream);

impl AsyncRead for Reader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut buf = ReadBuf::new(buf);
        ready!(tokio::io::AsyncRead::poll_read(
            Pin::new(&mut self.0),
            cx,
            &mut buf
        ))?;
        Poll::Ready(Ok(buf.filled().len()))
    }
}

struct Writer {
    send: SendStream,
    /// Once closing: resolves when the peer has read everything we sent
    /// (or stopped reading). Dropping the last handle on a QUIC connection
    /// closes it at once, data in flight included, so a close must wait
    /// for this before letting go.
    stopped: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl AsyncWrite for Writer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.stopped.is_none() {
            // A stream already finished or reset has nothing left to wait for.
            if self.send.finish().is_err() {
                return Poll::Ready(Ok(()));
            }
            let stopped = self.send.stopped();
            self.stopped = Some(Box::pin(async move {
                let _ = stopped.await;
            }));
        }
        if let Some(stopped) = self.stopped.as_mut() {
            ready!(stopped.as_mut().poll(cx));
        }
        Poll::Ready(Ok(()))
    }
}
