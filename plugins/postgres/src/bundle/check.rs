//! The bundle check of `strata verify`: each file stream of a PostgreSQL
//! backup parsed as a bundle as its raw parts are read.

use std::io::{self, Read};

use bytes::Bytes;
use strata_core::catalog::manifest::{Manifest, StreamRecord};
use strata_core::plugin::{ContentCheck, ContentSink};
use strata_core::{Error, Result};

use super::reader::check;

/// The content check `strata verify` runs on PostgreSQL backups: each file
/// stream (recorded without a stream digest) is parsed as a bundle and every
/// file's checksum is checked, exactly as a restore would, writing nothing.
pub struct BundleCheck;

impl ContentCheck for BundleCheck {
    fn start(&self, manifest: &Manifest, stream: &StreamRecord) -> Option<Box<dyn ContentSink>> {
        if manifest.engine != "postgres" || stream.blake3.is_some() {
            return None;
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
        let origin = stream.name.clone();
        let checker = tokio::task::spawn_blocking(move || {
            check(
                &mut ChannelRead {
                    rx,
                    current: Bytes::new(),
                },
                &origin,
            )
            .map(|_| ())
        });
        Some(Box::new(BundleSink { tx, checker }))
    }
}

struct BundleSink {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    checker: tokio::task::JoinHandle<Result<()>>,
}

#[async_trait::async_trait]
impl ContentSink for BundleSink {
    async fn add(&mut self, raw: Bytes) -> Result<()> {
        self.tx
            .send(raw)
            .await
            .map_err(|_| Error::integrity("the bundle check stopped early"))
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        let BundleSink { tx, checker } = *self;
        drop(tx);
        checker
            .await
            .map_err(|e| Error::from(e).with_message("the bundle check failed to run"))?
    }
}

/// A blocking [`Read`] over the raw parts sent on a channel.
struct ChannelRead {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(next) => self.current = next,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
