//! "Resumable Uploads for HTTP" (draft-ietf-httpbis-resumable-upload) at
//! `/api/uploads`, beside tus (SPEC §12, docs/resumable.md).
//!
//! Both protocols run on one upload engine: a draft upload is a row of
//! `tus_uploads` with its quota reservation and staging blob, written under
//! the same lease (so takeover, restarts and several nodes work as for tus,
//! see [`crate::http::tus::lease`]), expired by the same `cleanup`, and
//! completed by the same one-transaction commit.
//!
//! A request belongs to this protocol when it carries
//! `Upload-Draft-Interop-Version` (tus requests carry `Tus-Resumable`);
//! a `HEAD`, `PATCH` or `DELETE` of an upload carrying neither is answered
//! here when the upload was created with the draft. The interop versions
//! spoken are [`VERSIONS`]; their differences are in [`Version`].
//!
//! - [`upload`]: creation (`POST`), offset retrieval (`HEAD`), append
//!   (`PATCH`), cancellation (`DELETE`), and the streaming append itself;
//! - [`problem`]: RFC 9457 problem details with the draft's problem types.

pub mod problem;
pub mod upload;

use axum::{
    extract::{Request, State},
    handler::Handler,
    http::{HeaderMap, HeaderName, HeaderValue, Method},
    middleware::Next,
    response::Response,
};

use crate::app::AppState;

pub static INTEROP_VERSION: HeaderName = HeaderName::from_static("upload-draft-interop-version");
pub static UPLOAD_COMPLETE: HeaderName = HeaderName::from_static("upload-complete");
/// Interop version 3's inverse of `Upload-Complete`.
pub static UPLOAD_INCOMPLETE: HeaderName = HeaderName::from_static("upload-incomplete");
pub static UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
pub static UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
pub static UPLOAD_LIMIT: HeaderName = HeaderName::from_static("upload-limit");
pub static REPR_DIGEST: HeaderName = HeaderName::from_static("repr-digest");

/// The media type of an append's body (required from interop version 6).
pub const PARTIAL_UPLOAD: &str = "application/partial-upload";

/// The interop versions this server speaks: 3 (draft -01, iOS 17), 5
/// (drafts -03/-04, iOS 18.0, tus-js-client `ietf-draft-03`), 6 (draft -05,
/// iOS 18.1, tus-js-client `ietf-draft-05`), 7 (drafts -06 to -08), 8
/// (drafts -09 to -11, iOS 26) and 9 (draft -12 on).
pub const VERSIONS: &[u32] = &[3, 5, 6, 7, 8, 9];

/// The version assumed for a request to a draft upload that names none.
pub const NEWEST: Version = Version(9);

/// The metadata key (in the upload row's metadata) that marks an upload
/// created with the draft; its value is the interop version it was created
/// with.
pub const META_PROTOCOL: &str = "stowage-ietf-draft";
/// Metadata key: the upload's length was not known at creation (the row's
/// `upload_length` then holds the per-file limit, the most it may grow to).
pub const META_LENGTH_UNKNOWN: &str = "stowage-length-unknown";
/// Metadata key: the `Repr-Digest` sha-256 given at creation (32 bytes),
/// checked at completion.
pub const META_SHA256: &str = "stowage-repr-sha256";

/// An interop version this server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version(pub u32);

impl Version {
    /// Parses `Upload-Draft-Interop-Version`: `Ok(None)` when absent,
    /// `Err(raw)` for a version not spoken here.
    pub fn from_headers(h: &HeaderMap) -> Result<Option<Version>, String> {
        let Some(v) = h.get(&INTEROP_VERSION) else {
            return Ok(None);
        };
        let raw = String::from_utf8_lossy(v.as_bytes()).trim().to_string();
        match raw.parse::<u32>() {
            Ok(n) if VERSIONS.contains(&n) => Ok(Some(Version(n))),
            _ => Err(raw),
        }
    }

    /// Version 3 says `Upload-Incomplete` (true while not complete); later
    /// ones `Upload-Complete`.
    fn inverted(self) -> bool {
        self.0 < 5
    }

    /// From version 6 on, an append must be `application/partial-upload`.
    pub fn needs_partial_upload(self) -> bool {
        self.0 >= 6
    }

    /// Whether the request says its content ends the upload: `Ok(None)`
    /// when it does not say, `Err` for a value that is no sf-boolean.
    pub(crate) fn read_complete(self, h: &HeaderMap) -> Result<Option<bool>, ()> {
        let name = if self.inverted() {
            &UPLOAD_INCOMPLETE
        } else {
            &UPLOAD_COMPLETE
        };
        let Some(v) = h.get(name) else {
            return Ok(None);
        };
        let b = match v.as_bytes() {
            b"?1" => true,
            b"?0" => false,
            _ => return Err(()),
        };
        Ok(Some(b != self.inverted()))
    }

    /// Sets the completion header of a response.
    pub fn set_complete(self, h: &mut HeaderMap, complete: bool) {
        let (name, value) = if self.inverted() {
            (&UPLOAD_INCOMPLETE, !complete)
        } else {
            (&UPLOAD_COMPLETE, complete)
        };
        h.insert(
            name.clone(),
            HeaderValue::from_static(if value { "?1" } else { "?0" }),
        );
    }

    pub fn name(self) -> &'static str {
        match self.0 {
            3 => "3",
            5 => "5",
            6 => "6",
            7 => "7",
            8 => "8",
            _ => "9",
        }
    }
}

/// Installed on the tus routes: hands the requests of this protocol to it
/// (see the module docs), everything else to tus.
pub async fn dispatch(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let h = req.headers();
    let ours = if h.contains_key(&INTEROP_VERSION) {
        true
    } else {
        // No version named: an upload created with the draft still is one
        // (its handlers answer as tus would for a tus upload).
        !h.contains_key(&crate::http::tus::TUS_RESUMABLE)
            && matches!(*req.method(), Method::HEAD | Method::PATCH | Method::DELETE)
            && req.uri().path().len() > "/api/uploads/".len()
    };
    if !ours {
        return next.run(req).await;
    }
    // The tus route already matched (its path parameter is in the
    // request), so the handlers are called directly.
    let path = req.uri().path();
    let collection = path == "/api/uploads" || path == "/api/uploads/";
    match (req.method().clone(), collection) {
        (Method::POST, true) => upload::create.call(req, state).await,
        (Method::HEAD | Method::GET, false) => upload::offset.call(req, state).await,
        (Method::PATCH, false) => upload::append.call(req, state).await,
        (Method::DELETE, false) => upload::cancel.call(req, state).await,
        _ => next.run(req).await,
    }
}
