//! TLS to RabbitMQ: the rustls client configuration for `amqps://` (and for an `https://` management
//! API), and the TCP + TLS connect that every AMQP connection and reconnection goes through.
//!
//! - [`TlsSettings`] reads and checks `POSTBOX_AMQP_CA_FILE`, `POSTBOX_AMQP_CLIENT_CERT` and
//!   `POSTBOX_AMQP_CLIENT_KEY` (PEM files) once at start-up and builds one rustls `ClientConfig`:
//!   the server is verified against the CA file when one is given (and only against it), else against
//!   the operating system's trust store; the client certificate, when given, is offered for mutual TLS.
//! - [`Transport`] opens the socket for lapin. `amqps://` completes a verified rustls handshake or
//!   fails with a [`HandshakeFailure`] naming what to fix; it never falls back to plain text (lapin's
//!   own path silently does when no TLS feature is compiled in, which is why Postbox does not use it).
//!
//! It knows nothing of channels, queues or HTTP, and never logs key material.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use amq_protocol::{
    tcp::{AsyncTcpStream, RustlsConnector},
    uri::{AMQPScheme, AMQPUri},
};
use async_rs::{Runtime, Tokio, traits::*};
use rustls::{
    CertificateError, ClientConfig, RootCertStore,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

use crate::config::{CA_FILE_VAR, CLIENT_CERT_VAR, CLIENT_KEY_VAR, Config};

/// The socket type lapin's tokio runtime reads and writes.
pub type Stream = AsyncTcpStream<<Tokio as Reactor>::TcpStream>;

/// A TLS setting that cannot work (unreadable or unparsable file, a certificate without its key, ...).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TlsSetupError(String);

/// The checked TLS material of a [`Config`]: trust anchors and the optional client identity.
#[derive(Clone)]
pub struct TlsSettings {
    /// `POSTBOX_AMQP_CA_FILE` and its certificates; `None`: the system trust store.
    ca: Option<(PathBuf, Vec<CertificateDer<'static>>)>,
    /// `POSTBOX_AMQP_CLIENT_CERT` (chain) and `POSTBOX_AMQP_CLIENT_KEY`, checked to match.
    client: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("roots", &self.roots())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM file named by `var`, for the error messages.
fn read(var: &str, path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|e| {
        TlsSetupError(format!(
            "{var} {}: cannot read it ({e}); point {var} at a readable PEM file",
            path.display()
        ))
    })
}

fn certificates(var: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = read(var, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            TlsSetupError(format!(
                "{var} {}: not a valid PEM certificate file ({e})",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError(format!(
            "{var} {}: holds no PEM certificate (no -----BEGIN CERTIFICATE----- block)",
            path.display()
        )));
    }
    Ok(certs)
}

impl TlsSettings {
    /// Whether the configuration names any TLS file.
    pub fn configured(config: &Config) -> bool {
        config.amqp_tls_configured()
    }

    /// Reads and checks the configured files: each must be readable PEM, the client certificate and key
    /// come together and must match. Loads nothing from the system (that is [`Self::client_config`]).
    pub fn from_config(config: &Config) -> Result<Self, TlsSetupError> {
        let ca = match &config.amqp_ca_file {
            None => None,
            Some(path) => {
                let certs = certificates(CA_FILE_VAR, path)?;
                // Every certificate must be usable as a trust anchor: a file that parses as PEM but
                // holds garbage would otherwise be skipped silently and the handshake fail later.
                let mut store = RootCertStore::empty();
                for cert in &certs {
                    store.add(cert.clone()).map_err(|e| {
                        TlsSetupError(format!(
                            "{CA_FILE_VAR} {}: a certificate in it is not a usable CA certificate ({e})",
                            path.display()
                        ))
                    })?;
                }
                Some((path.clone(), certs))
            }
        };
        let client = match (&config.amqp_client_cert, &config.amqp_client_key) {
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(TlsSetupError(format!(
                    "{CLIENT_CERT_VAR} and {CLIENT_KEY_VAR} go together: set both (a client \
                     certificate and its private key, PEM) or neither"
                )));
            }
            (Some(cert_path), Some(key_path)) => {
                let chain = certificates(CLIENT_CERT_VAR, cert_path)?;
                let pem = read(CLIENT_KEY_VAR, key_path)?;
                let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                    TlsSetupError(format!(
                        "{CLIENT_KEY_VAR} {}: holds no usable PEM private key ({e}); it must be an \
                         unencrypted PKCS#8, PKCS#1 (RSA) or SEC1 (EC) key",
                        key_path.display()
                    ))
                })?;
                // Builds a throwaway config: rustls parses the key and checks it matches the certificate.
                ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| TlsSetupError(format!("TLS setup failed: {e}")))?
                    .with_root_certificates(RootCertStore::empty())
                    .with_client_auth_cert(chain.clone(), key.clone_key())
                    .map_err(|e| {
                        TlsSetupError(format!(
                            "{CLIENT_CERT_VAR} {} and {CLIENT_KEY_VAR} {} do not make a usable client \
                             identity ({e}); the key must be the one the certificate was issued for",
                            cert_path.display(),
                            key_path.display()
                        ))
                    })?;
                Some((chain, Arc::new(key)))
            }
        };
        Ok(TlsSettings { ca, client })
    }

    /// What the server certificate is verified against, for reports and logs.
    pub fn roots(&self) -> String {
        match &self.ca {
            Some((path, _)) => format!("{CA_FILE_VAR} {}", path.display()),
            None => "the system trust store".into(),
        }
    }

    pub fn client_certificate(&self) -> bool {
        self.client.is_some()
    }

    /// The rustls client configuration: TLS 1.2 and 1.3 (rustls's safe defaults), the server verified
    /// against the CA file or else the system trust store, the client certificate offered when set.
    pub fn client_config(&self) -> Result<ClientConfig, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        match &self.ca {
            Some((_, certs)) => {
                for cert in certs {
                    // Checked in `from_config`.
                    let _ = roots.add(cert.clone());
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let why = found
                        .errors
                        .first()
                        .map_or_else(|| "it is empty".to_owned(), |e| e.to_string());
                    return Err(TlsSetupError(format!(
                        "no trusted CA certificate in the system trust store ({why}); set \
                         {CA_FILE_VAR} to the CA (PEM) that signed RabbitMQ's certificate, or install \
                         the ca-certificates package"
                    )));
                }
            }
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError(format!("TLS setup failed: {e}")))?
            .with_root_certificates(roots);
        match &self.client {
            None => Ok(builder.with_no_client_auth()),
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| TlsSetupError(format!("{CLIENT_CERT_VAR}: {e}"))),
        }
    }
}

/// How Postbox reaches RabbitMQ: the socket lapin runs AMQP on. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    /// `Some` exactly when the URL is `amqps://`.
    tls: Option<Arc<TlsTransport>>,
}

struct TlsTransport {
    connector: RustlsConnector,
    settings: TlsSettings,
    /// The parameters of the latest handshake, for logs and `check-rabbitmq`.
    last: Mutex<Option<TlsSession>>,
}

/// What a completed handshake negotiated.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TlsSession {
    /// `TLS 1.3` or `TLS 1.2`.
    pub protocol: String,
    /// The IANA name of the cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

impl fmt::Display for TlsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, {}", self.protocol, self.cipher)
    }
}

impl Transport {
    /// The transport `uri` asks for: rustls TLS for `amqps://` (with `settings`), plain TCP for
    /// `amqp://`. TLS settings with a plain URL are refused by [`Config::validate`] before this.
    pub fn new(uri: &AMQPUri, settings: &TlsSettings) -> Result<Self, TlsSetupError> {
        let tls = match uri.scheme {
            AMQPScheme::AMQP => None,
            AMQPScheme::AMQPS => Some(Arc::new(TlsTransport {
                connector: RustlsConnector::from(settings.client_config()?),
                settings: settings.clone(),
                last: Mutex::new(None),
            })),
        };
        Ok(Transport { tls })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn settings(&self) -> Option<&TlsSettings> {
        self.tls.as_ref().map(|t| &t.settings)
    }

    /// The parameters of the latest completed handshake (`None`: plain, or none completed yet).
    pub fn last_session(&self) -> Option<TlsSession> {
        let tls = self.tls.as_ref()?;
        tls.last.lock().expect("TLS session lock").clone()
    }

    /// Opens a TCP connection to the URL's host and port and, for `amqps://`, completes a verified TLS
    /// handshake on it. A TLS failure is an `io::Error` wrapping a [`HandshakeFailure`].
    pub async fn connect(&self, uri: &AMQPUri, runtime: &Runtime<Tokio>) -> io::Result<Stream> {
        let (host, port) = (uri.authority.host.clone(), uri.authority.port);
        let addrs = runtime.to_socket_addrs((host.clone(), port));
        let stream = AsyncTcpStream::connect(runtime, addrs).await?;
        let tls = match (&uri.scheme, &self.tls) {
            (AMQPScheme::AMQP, _) => return Ok(stream),
            (AMQPScheme::AMQPS, Some(tls)) => tls,
            // Defensive: a transport built for another URL. Never send AMQP in clear text for amqps.
            (AMQPScheme::AMQPS, None) => {
                return Err(io::Error::other(HandshakeFailure {
                    addr: format!("{host}:{port}"),
                    source: io::Error::other("no TLS configuration for an amqps:// URL"),
                }));
            }
        };
        let stream = stream
            .into_rustls(
                &tls.connector,
                host.trim_start_matches('[').trim_end_matches(']'),
            )
            .await
            .map_err(|source| {
                io::Error::other(HandshakeFailure {
                    addr: format!("{host}:{port}"),
                    source,
                })
            })?;
        let session = match &stream {
            AsyncTcpStream::Rustls(s) => {
                let connection = s.get_ref().1;
                Some(TlsSession {
                    protocol: match connection.protocol_version() {
                        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".into(),
                        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".into(),
                        Some(other) => format!("{other:?}"),
                        None => "TLS".into(),
                    },
                    cipher: connection
                        .negotiated_cipher_suite()
                        .map(|s| {
                            let suite = s.suite();
                            suite
                                .as_str()
                                .map_or_else(|| format!("{suite:?}"), str::to_owned)
                        })
                        .unwrap_or_else(|| "unknown".into()),
                })
            }
            _ => None,
        };
        tracing::debug!(
            host = %host,
            port,
            tls = ?session,
            "RabbitMQ connection: TLS handshake completed"
        );
        *tls.last.lock().expect("TLS session lock") = session;
        Ok(stream)
    }
}

/// A TLS handshake with RabbitMQ that did not complete: the address and rustls's (or the socket's)
/// reason. Its `Display` says what to check.
#[derive(Debug)]
pub struct HandshakeFailure {
    pub addr: String,
    pub source: io::Error,
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TLS handshake with RabbitMQ at {} failed: {}; {}",
            self.addr,
            self.source,
            hint(&self.source)
        )
    }
}

impl std::error::Error for HandshakeFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// A TLS connection the broker dropped right after a completed handshake, before answering AMQP: a TLS 1.3
/// server that refuses the client's certificate (or its absence) sends its alert only then, and the
/// alert is often lost in the reset that follows. `None` when `e` is not such a drop.
pub fn dropped_after_handshake(addr: &str, e: &io::Error) -> Option<String> {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
    )
    .then(|| {
        format!(
            "RabbitMQ at {addr} closed the TLS connection right after the handshake ({e}): it most \
             likely refused the client certificate, or its absence; set {CLIENT_CERT_VAR} and \
             {CLIENT_KEY_VAR} to a certificate its CA signed, or check the broker's TLS settings"
        )
    })
}

/// The rustls error inside an I/O error, if it is one.
pub fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// What to do about a failed handshake, from rustls's reason (or the socket's error kind).
fn hint(e: &io::Error) -> String {
    hint_for(rustls_error(e), e.kind())
}

fn hint_for(tls: Option<&rustls::Error>, kind: io::ErrorKind) -> String {
    use rustls::Error as E;
    match tls {
        Some(E::InvalidCertificate(cert)) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "the broker's certificate is not signed by a CA Postbox trusts: set {CA_FILE_VAR} to \
                 the CA certificate (PEM) that signed it, or check the broker's certificate"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the broker's certificate does not name the host in the URL: use a host name the \
                 certificate lists (subjectAltName), or reissue the certificate"
                    .into()
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => {
                "the broker's certificate is expired or not yet valid: renew it (or check this \
                 machine's clock)"
                    .into()
            }
            _ => format!("check {CA_FILE_VAR} and the broker's certificate"),
        },
        Some(E::InvalidMessage(_) | E::InappropriateMessage { .. }) => {
            "the port does not speak TLS (a plain listener?): point the URL at RabbitMQ's TLS \
             listener (AMQP: usually port 5671)"
                .into()
        }
        Some(E::AlertReceived(alert)) => format!(
            "the broker refused the handshake ({alert:?}): if it requires client certificates, set \
             {CLIENT_CERT_VAR} and {CLIENT_KEY_VAR} to a certificate its CA signed; else check the \
             broker's TLS settings and certificate"
        ),
        Some(_) => format!("check {CA_FILE_VAR} and the broker's TLS settings"),
        None if kind == io::ErrorKind::UnexpectedEof || kind == io::ErrorKind::ConnectionReset => {
            "the broker closed the connection during the handshake: check that the URL points at \
             RabbitMQ's TLS listener (AMQP: usually port 5671), and the broker's TLS settings"
                .into()
        }
        None => format!("check {CA_FILE_VAR} and the broker's TLS settings"),
    }
}

/// The TLS failure inside an error chain (lapin's, reqwest's), as one sentence naming what to do: a
/// failed handshake, or a TLS alert the broker sent after it (a TLS 1.3 server refuses a missing client
/// certificate only once the client has finished its side of the handshake).
pub fn failure_in(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(failure) = err.downcast_ref::<HandshakeFailure>() {
            return Some(failure.to_string());
        }
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(format!(
                "TLS error with RabbitMQ: {tls}; {}",
                hint_for(Some(tls), io::ErrorKind::InvalidData)
            ));
        }
        current = next_cause(err);
    }
    None
}

/// The rustls error inside an error chain and what to do about it (for the management API's client).
pub fn rustls_failure_in(e: &(dyn std::error::Error + 'static)) -> Option<(String, String)> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some((
                tls.to_string(),
                hint_for(Some(tls), io::ErrorKind::InvalidData),
            ));
        }
        current = next_cause(err);
    }
    None
}

/// The next error in a chain. `io::Error::source` skips the error it wraps: that one comes first.
fn next_cause<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a (dyn std::error::Error + 'static)> {
    match err.downcast_ref::<io::Error>() {
        Some(io) => io
            .get_ref()
            .map(|inner| inner as &(dyn std::error::Error + 'static)),
        None => err.source(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::BrokerError;

    fn tls_message(err: lapin::Error) -> Option<String> {
        match BrokerError::classify(err, "connection") {
            BrokerError::Tls(message) => Some(message),
            _ => None,
        }
    }

    #[test]
    fn tls_failures_are_classified_as_such_and_say_what_to_do() {
        let unknown_issuer = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let handshake = io::Error::other(HandshakeFailure {
            addr: "rabbit:5671".into(),
            source: unknown_issuer,
        });
        let message = tls_message(handshake.into()).expect("a TLS error");
        assert!(
            message.starts_with("TLS handshake with RabbitMQ at rabbit:5671 failed: ")
                && message.contains("set POSTBOX_AMQP_CA_FILE"),
            "{message}"
        );

        // An alert after the handshake (TLS 1.3 client-certificate refusal), as lapin's I/O loop sees it.
        let alert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
        );
        let message = tls_message(alert.into()).expect("a TLS error");
        assert!(message.contains(CLIENT_CERT_VAR), "{message}");

        let corrupt = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        assert!(
            tls_message(corrupt.into())
                .unwrap()
                .contains("does not speak TLS")
        );

        // Not TLS: an outage stays an outage.
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(matches!(
            BrokerError::classify(refused.into(), "connection"),
            BrokerError::Unavailable(_)
        ));
    }

    #[test]
    fn only_a_drop_counts_as_a_refusal_after_the_handshake() {
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        let message = dropped_after_handshake("rabbit:5671", &reset).unwrap();
        assert!(message.contains(CLIENT_KEY_VAR), "{message}");
        let timeout = io::Error::from(io::ErrorKind::TimedOut);
        assert!(dropped_after_handshake("rabbit:5671", &timeout).is_none());
    }
}
