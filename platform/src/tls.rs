//! TLS for the gRPC ports and the HTTP (callback) port, and mutual TLS between the services,
//! configured by file paths (PEM). rustls with the ring provider throughout.

use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A server's TLS: its certificate and key, and optionally the CA its clients' certificates
/// must chain to (mutual TLS). Empty paths mean plaintext.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerTls {
    /// PEM certificate chain.
    pub cert_path: String,
    /// PEM private key.
    pub key_path: String,
    /// PEM CA bundle; when set, clients must present a certificate it signed.
    pub client_ca_path: String,
}

/// A client's TLS: the CA that signed the server, the server name to verify, and optionally
/// the client's own certificate and key (mutual TLS). An empty CA path means plaintext.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTls {
    /// PEM CA bundle the server's certificate must chain to.
    pub ca_path: String,
    /// The name in the server's certificate (default: the URL's host).
    pub domain: String,
    /// PEM client certificate (mutual TLS).
    pub cert_path: String,
    /// PEM client key (mutual TLS).
    pub key_path: String,
}

fn read(setting: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("{setting}: cannot read {path}: {e}"))
}

/// Installs ring as the process's rustls provider (idempotent).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl ServerTls {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        !self.cert_path.is_empty()
    }

    /// Checks the settings (both files or neither).
    ///
    /// # Errors
    /// Names the setting under `prefix`.
    pub fn validate(&self, prefix: &str) -> anyhow::Result<()> {
        if self.cert_path.is_empty() != self.key_path.is_empty() {
            anyhow::bail!("{prefix}.cert_path and {prefix}.key_path: give both or neither");
        }
        if !self.enabled() && !self.client_ca_path.is_empty() {
            anyhow::bail!(
                "{prefix}.client_ca_path: needs {prefix}.cert_path and {prefix}.key_path"
            );
        }
        Ok(())
    }

    /// The tonic server configuration, when enabled.
    ///
    /// # Errors
    /// Names the file that cannot be read.
    pub fn tonic(&self, prefix: &str) -> anyhow::Result<Option<ServerTlsConfig>> {
        if !self.enabled() {
            return Ok(None);
        }
        install_provider();
        let identity = Identity::from_pem(
            read(&format!("{prefix}.cert_path"), &self.cert_path)?,
            read(&format!("{prefix}.key_path"), &self.key_path)?,
        );
        let mut cfg = ServerTlsConfig::new().identity(identity);
        if !self.client_ca_path.is_empty() {
            cfg = cfg.client_ca_root(Certificate::from_pem(read(
                &format!("{prefix}.client_ca_path"),
                &self.client_ca_path,
            )?));
        }
        Ok(Some(cfg))
    }

    /// The rustls configuration for an HTTP server ([`crate::http::serve`]), when enabled;
    /// it offers HTTP/2 and HTTP/1.1.
    ///
    /// # Errors
    /// Names the file that cannot be read or parsed.
    pub async fn http(
        &self,
        prefix: &str,
    ) -> anyhow::Result<Option<std::sync::Arc<rustls::ServerConfig>>> {
        if !self.enabled() {
            return Ok(None);
        }
        install_provider();
        let cfg = axum_server::tls_rustls::RustlsConfig::from_pem(
            read(&format!("{prefix}.cert_path"), &self.cert_path)?,
            read(&format!("{prefix}.key_path"), &self.key_path)?,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{prefix}: invalid certificate or key: {e}"))?;
        Ok(Some(cfg.get_inner()))
    }
}

impl ClientTls {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        !self.ca_path.is_empty()
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// Names the setting under `prefix`.
    pub fn validate(&self, prefix: &str, url: &str) -> anyhow::Result<()> {
        if self.cert_path.is_empty() != self.key_path.is_empty() {
            anyhow::bail!("{prefix}.cert_path and {prefix}.key_path: give both or neither");
        }
        if self.enabled() != url.starts_with("https://") {
            anyhow::bail!(
                "{prefix}.ca_path: set it exactly when the URL is https:// (got {url:?})"
            );
        }
        Ok(())
    }

    /// The tonic client configuration, when enabled.
    ///
    /// # Errors
    /// Names the file that cannot be read.
    pub fn tonic(&self, prefix: &str) -> anyhow::Result<Option<ClientTlsConfig>> {
        if !self.enabled() {
            return Ok(None);
        }
        install_provider();
        let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(
            &format!("{prefix}.ca_path"),
            &self.ca_path,
        )?));
        if !self.domain.is_empty() {
            cfg = cfg.domain_name(self.domain.clone());
        }
        if !self.cert_path.is_empty() {
            cfg = cfg.identity(Identity::from_pem(
                read(&format!("{prefix}.cert_path"), &self.cert_path)?,
                read(&format!("{prefix}.key_path"), &self.key_path)?,
            ));
        }
        Ok(Some(cfg))
    }
}
