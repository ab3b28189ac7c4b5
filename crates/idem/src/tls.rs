//! TLS with rustls: the listener's certificate (`--tls-cert`, `--tls-key`), and the roots
//! that `https://` upstreams and operations are checked against (the system's, plus
//! `--upstream-ca-file`). The stores' TLS is their drivers' (sqlx, redis), given the same
//! kind of CA file by [`crate::store`].
//!
//! One crypto provider, ring, for every TLS user in the binary: rustls picks it by itself
//! when it is the only one built in, which the workspace's features keep true.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

/// The listener's TLS: the certificate chain and key, HTTP/2 and HTTP/1.1 offered by ALPN
/// (h2 first, as browsers and gRPC clients expect).
pub fn server_config(files: &TlsFiles) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("cannot read --tls-cert {}", files.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| {
            format!(
                "--tls-cert {}: not a PEM certificate chain",
                files.cert.display()
            )
        })?;
    anyhow::ensure!(
        !chain.is_empty(),
        "--tls-cert {}: no certificate in the file",
        files.cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(&files.key).with_context(|| {
        format!(
            "--tls-key {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file",
            files.key.display()
        )
    })?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("--tls-cert and --tls-key do not make a usable pair")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The roots an `https://` upstream is checked against: the system's, and `ca_file`'s
/// certificates when given. Refuses to start with no root at all (every upstream would fail).
fn client_roots(ca_file: Option<&Path>) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    for error in &system.errors {
        tracing::debug!(%error, "a system root certificate could not be loaded");
    }
    let (added, _ignored) = roots.add_parsable_certificates(system.certs);
    tracing::debug!(added, "system root certificates loaded");
    if let Some(path) = ca_file {
        let certificates = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("cannot read --upstream-ca-file {}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| {
                format!(
                    "--upstream-ca-file {}: not PEM certificates",
                    path.display()
                )
            })?;
        anyhow::ensure!(
            !certificates.is_empty(),
            "--upstream-ca-file {}: no certificate in the file",
            path.display()
        );
        for certificate in certificates {
            roots.add(certificate).with_context(|| {
                format!(
                    "--upstream-ca-file {}: unusable certificate",
                    path.display()
                )
            })?;
        }
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "no root certificate to check https:// upstreams against: install the system's CA bundle (ca-certificates) or pass --upstream-ca-file"
    );
    Ok(roots)
}

/// A connector for `http://` and `https://` upstreams. Over TLS, HTTP/2 is asked for by ALPN
/// next to HTTP/1.1 and used when the upstream picks it; over plain TCP, HTTP/1.1 unless
/// the client is built for HTTP/2 only (h2c with prior knowledge).
///
/// The roots are loaded only when needed: an `http://` upstream starts without a CA bundle.
pub fn connector(
    http: HttpConnector,
    ca_file: Option<&Path>,
    needs_tls: bool,
) -> anyhow::Result<HttpsConnector<HttpConnector>> {
    let roots = if needs_tls {
        client_roots(ca_file)?
    } else {
        rustls::RootCertStore::empty()
    };
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}
