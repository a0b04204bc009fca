//! Vendor answers (token, revocation, discovery) are read with a size cap,
//! chunk by chunk, so a hostile or broken endpoint cannot make the broker
//! buffer an unbounded body. Depends on nothing in the crate.

/// The most the broker reads of any vendor answer. Real answers are a few KiB.
pub const MAX_BODY: usize = 64 * 1024;

/// Why a vendor answer could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Larger than the cap (by `Content-Length` or while streaming).
    TooLarge,
    Transport(reqwest::Error),
}

/// Reads at most `max` bytes of `resp`'s body; stops reading as soon as it is exceeded.
pub async fn read_capped(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
