//! The request body on its way to the vendor: read whole when it is small
//! enough to be sent again ([`REPLAY_LIMIT`]), otherwise streamed once.

use std::rc::Rc;

use actix_web::http::header;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::HttpRequest;
use futures::StreamExt;

use super::REPLAY_LIMIT;
use crate::routes::error::ApiError;

/// The request body as the broker will send it.
pub(super) enum Upload {
    None,
    /// Read whole (≤ [`REPLAY_LIMIT`]): can be sent again.
    Kept(Bytes),
    /// Longer or of unknown length: sent once, streamed.
    Stream {
        body: Option<reqwest::Body>,
        length: Option<u64>,
    },
}

impl Upload {
    pub(super) fn replayable(&self) -> bool {
        !matches!(self, Upload::Stream { .. })
    }
}

/// Reads up to [`REPLAY_LIMIT`] bytes; a longer body continues as a stream fed
/// by a local task (the request payload cannot leave its worker thread).
pub(super) async fn upload(
    req: &HttpRequest,
    mut payload: web::Payload,
    deadline: tokio::time::Instant,
    counted: Rc<std::cell::Cell<u64>>,
) -> Result<Upload, ApiError> {
    let h = req.headers();
    let length = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let chunked = h.contains_key(header::TRANSFER_ENCODING);
    if !chunked && length.unwrap_or(0) == 0 {
        return Ok(Upload::None);
    }
    let unreadable = || ApiError::InvalidRequest("the request body could not be read".into());
    let mut kept = BytesMut::new();
    if length.is_none_or(|n| n <= REPLAY_LIMIT as u64) {
        loop {
            let next = tokio::time::timeout_at(deadline, payload.next())
                .await
                .map_err(|_| {
                    ApiError::RequestTimeout("the request body did not arrive in time".into())
                })?;
            match next {
                None => {
                    counted.set(kept.len() as u64);
                    return Ok(Upload::Kept(kept.freeze()));
                }
                Some(Err(_)) => return Err(unreadable()),
                Some(Ok(chunk)) => {
                    kept.extend_from_slice(&chunk);
                    if kept.len() > REPLAY_LIMIT {
                        break;
                    }
                }
            }
        }
    }
    // Streamed: what was read first, then the rest as it arrives.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let first = kept.freeze();
    counted.set(first.len() as u64);
    actix_web::rt::spawn(async move {
        if !first.is_empty() && tx.send(Ok(first)).await.is_err() {
            return;
        }
        loop {
            let next = tokio::time::timeout_at(deadline, payload.next()).await;
            let item = match next {
                Err(_) => Err(std::io::Error::other(
                    "the request body did not arrive in time",
                )),
                Ok(None) => return,
                Ok(Some(Err(_))) => {
                    Err(std::io::Error::other("the request body could not be read"))
                }
                Ok(Some(Ok(chunk))) => {
                    counted.set(counted.get() + chunk.len() as u64);
                    Ok(chunk)
                }
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(Upload::Stream {
        body: Some(reqwest::Body::wrap_stream(stream)),
        length,
    })
}
