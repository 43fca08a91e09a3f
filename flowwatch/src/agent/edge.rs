//! The HTTP edge's protection, from the flags: TLS from certificate files (polled for
//! rotation) and the Kubernetes authorization of `/metrics`.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::AgentError;
use crate::cli::{MetricsAuth, RunArgs};
use crate::http::{tls, Authorizer, AuthzOptions, HttpState, Tls, TlsFiles};

/// Loads the certificate (an error names the file) and starts watching it for rotation.
pub fn tls(args: &RunArgs, cancel: &CancellationToken) -> Result<Option<Arc<Tls>>, AgentError> {
    let (Some(cert), Some(key)) = (&args.metrics_tls_cert_file, &args.metrics_tls_key_file) else {
        return Ok(None);
    };
    let tls = Arc::new(Tls::from_files(TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
    })?);
    tokio::spawn(
        tls.clone()
            .watch(tls::DEFAULT_RELOAD_INTERVAL, cancel.clone()),
    );
    Ok(Some(tls))
}

/// Puts `/metrics` behind the API server's TokenReview and SubjectAccessReview when asked.
pub async fn authorize(args: &RunArgs, state: HttpState) -> Result<HttpState, AgentError> {
    match args.metrics_auth {
        MetricsAuth::None => Ok(state),
        MetricsAuth::Kubernetes => {
            let client = kube::Client::try_default()
                .await
                .map_err(AgentError::MetricsAuthKube)?;
            Ok(state.with_authz(Arc::new(Authorizer::new(client, AuthzOptions::default()))))
        }
    }
}
