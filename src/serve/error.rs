//! HTTP errors: FastAPI's `{"detail": …}` body with a status. Core errors map through the one
//! mechanism every module uses ([`crate::error::Diagnose`], carried by [`crate::error::Error`]):
//! the user's input at fault → 400, a runtime failure → 500.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::api::ErrorBody;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: u16, detail: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                detail: detail.into(),
                hint: None,
            },
        }
    }

    /// 500: something failed inside.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(500, detail)
    }

    /// 503: no model to answer with (loading, or a load failed), or the queue is full.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(503, detail)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.body.hint = Some(hint.into());
        self
    }
}

impl From<crate::error::Error> for ApiError {
    fn from(e: crate::error::Error) -> Self {
        Self {
            status: if e.is_input() { 400 } else { 500 },
            body: ErrorBody {
                detail: e.message(),
                hint: e.hint().map(str::to_string),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Error, input_err};

    #[test]
    fn input_errors_are_400_and_runtime_failures_500() {
        let e = ApiError::from(input_err(
            "token id 99999999 is outside the vocabulary",
            "pick one",
        ));
        assert_eq!((e.status, e.body.hint.as_deref()), (400, Some("pick one")));
        assert!(e.body.detail.contains("outside the vocabulary"));
        assert_eq!(ApiError::from(Error::runtime("decode failed")).status, 500);
    }
}
