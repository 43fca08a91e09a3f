//! Optional TLS on the HTTP edge (rustls with ring; no OpenSSL), with the certificate and key
//! read from files and reloaded when they change on disk.
//!
//! A certificate mounted from a Secret (cert-manager, or an operator's rotation) changes under
//! the running agent: the kubelet swaps the whole directory at once, a hand rotation may write
//! the two files one after the other. So the files are polled ([`Tls::watch`]), and a new pair
//! is taken only once it parses and its key matches its certificate; until then the previous
//! pair keeps serving (a half-written rotation never breaks scrapes). Each handshake picks the
//! current pair, so connections opened after a reload present the new certificate.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How often the files are checked for a new pair: a rotated certificate is served within this.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// A certificate chain and its private key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate/key file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("TLS certificate file {path}: {what}")]
    Cert { path: PathBuf, what: String },
    #[error("TLS key file {path}: {what}")]
    Key { path: PathBuf, what: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The files' bytes as last read, and the pair built from them.
struct Loaded {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    key: Arc<CertifiedKey>,
}

/// Hands each handshake the current pair.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(crate::sync::read(&self.0).clone())
    }
}

/// The TLS side of the HTTP edge.
pub struct Tls {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
    /// The bytes the current pair was built from (what a poll compares against).
    seen: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key material and the acceptor are left out on purpose: a Debug print must not leak
        // the private key.
        f.debug_struct("Tls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Builds the pair from PEM bytes, naming the file at fault.
fn certified_key(
    files: &TlsFiles,
    provider: &CryptoProvider,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Cert {
            path: files.cert.clone(),
            what: format!("not PEM: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Cert {
            path: files.cert.clone(),
            what: "no CERTIFICATE block".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key {
        path: files.key.clone(),
        what: format!("no usable PRIVATE KEY block: {e}"),
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key {
            path: files.key.clone(),
            what: format!("unsupported key: {e}"),
        })?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|e| TlsError::Key {
        path: files.key.clone(),
        what: format!(
            "does not match the certificate in {}: {e}",
            files.cert.display()
        ),
    })?;
    Ok(Arc::new(pair))
}

fn load(files: &TlsFiles, provider: &CryptoProvider) -> Result<Loaded, TlsError> {
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let key = certified_key(files, provider, &cert_pem, &key_pem)?;
    Ok(Loaded {
        cert_pem,
        key_pem,
        key,
    })
}

impl Tls {
    /// Reads and checks the pair; an error names the file and what is wrong with it.
    pub fn from_files(files: TlsFiles) -> Result<Tls, TlsError> {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let loaded = load(&files, &provider)?;
        let current = Arc::new(Current(RwLock::new(loaded.key)));
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        // The edge speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            files,
            provider,
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            seen: std::sync::Mutex::new((loaded.cert_pem, loaded.key_pem)),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Re-reads the files; takes the new pair when they changed and are valid. Returns whether
    /// the served pair changed. An invalid new pair is reported and the old one kept.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let cert_pem = read(&self.files.cert)?;
        let key_pem = read(&self.files.key)?;
        let mut seen = crate::sync::lock(&self.seen);
        if seen.0 == cert_pem && seen.1 == key_pem {
            return Ok(false);
        }
        let key = certified_key(&self.files, &self.provider, &cert_pem, &key_pem)?;
        *crate::sync::write(&self.current.0) = key;
        *seen = (cert_pem, key_pem);
        Ok(true)
    }

    /// Polls the files every `interval` until `cancel`; logs each reload, and each failed one
    /// once until the files change again.
    pub async fn watch(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            match self.reload() {
                Ok(true) => {
                    last_error = None;
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                }
                Ok(false) => last_error = None,
                Err(e) => {
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(msg.as_str()) {
                        tracing::warn!(error = %msg, "TLS certificate not reloaded; serving the previous one");
                        last_error = Some(msg);
                    }
                }
            }
        }
    }

    /// The handshake, bounded by `timeout` (a client that connects and sends nothing must not
    /// hold its connection longer than one that sends no request headers).
    pub async fn accept<IO>(&self, io: IO, timeout: Duration) -> io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        tokio::time::timeout(timeout, self.acceptor.accept(io))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> TlsFiles {
        TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        }
    }

    #[test]
    fn missing_or_garbage_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let e = Tls::from_files(f.clone()).unwrap_err().to_string();
        assert!(e.contains("tls.crt"), "{e}");
        std::fs::write(&f.cert, "not a certificate").unwrap();
        std::fs::write(&f.key, "not a key").unwrap();
        let e = Tls::from_files(f.clone()).unwrap_err().to_string();
        assert!(e.contains("tls.crt") && e.contains("no CERTIFICATE"), "{e}");
    }
}
