//! `--web.config.file`: the Prometheus exporter-toolkit web configuration (the YAML file
//! node_exporter and the other official exporters accept) for the metrics endpoint: TLS,
//! basic auth, response headers.
//!
//! Parsing is strict, as exporter-toolkit's: unknown keys are errors. Keys tcptrace cannot
//! honour with rustls (TLS 1.0/1.1, unverified client certificates, CBC cipher suites, P-521)
//! or does not implement (HTTP/2, rate limits, client SAN allow-lists) are refused by name,
//! never ignored. Relative file names are resolved against the config file's directory, as
//! exporter-toolkit does. Everything is checked when the file is loaded (at start, before the
//! programs are attached, and on SIGHUP), so a bad file is one line and a non-zero exit.
//!
//! The module lives beside `http` because it is the endpoint's configuration; it reads only
//! the files it names.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{anyhow, bail};
use hyper::header::{HeaderName, HeaderValue};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{CipherSuite, NamedGroup, ServerConfig, SupportedProtocolVersion};
use serde::Deserialize;

/// The file as written. Every key exporter-toolkit knows is named here, so that the ones
/// tcptrace refuses get a message of their own instead of "unknown field".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    rate_limit: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<String>,
    key_file: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    client_ca: Option<String>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// The endpoint's configuration, checked and ready to use.
#[derive(Default)]
pub struct WebConfig {
    /// TLS for every connection when set.
    pub tls: Option<Arc<ServerConfig>>,
    /// Basic auth for every request when set.
    pub auth: Option<BasicAuth>,
    /// Added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("auth", &self.auth.as_ref().map(|a| a.users.len()))
            .field("headers", &self.headers)
            .finish()
    }
}

/// The configuration in force; replaced whole on reload (SIGHUP).
#[derive(Debug, Default)]
pub struct SharedWebConfig(RwLock<Arc<WebConfig>>);

impl SharedWebConfig {
    pub fn new(config: WebConfig) -> Self {
        Self(RwLock::new(Arc::new(config)))
    }

    /// The configuration for a new connection (it keeps it until it closes).
    pub fn current(&self) -> Arc<WebConfig> {
        self.0
            .read()
            .map_or_else(|e| e.into_inner().clone(), |c| c.clone())
    }

    pub fn replace(&self, config: WebConfig) {
        match self.0.write() {
            Ok(mut c) => *c = Arc::new(config),
            Err(e) => *e.into_inner() = Arc::new(config),
        }
    }
}

impl WebConfig {
    /// Reads and checks the file at `path`; errors are one line naming the file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("--web.config.file {}: {e}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, dir).map_err(|e| anyhow!("--web.config.file {}: {e:#}", path.display()))
    }

    /// Parses and checks a web config; relative file names are taken from `dir`.
    pub fn parse(text: &str, dir: &Path) -> anyhow::Result<Self> {
        // An empty file (or a lone `---`/null) means: plain HTTP, no auth, as exporter-toolkit.
        let file: FileConfig = match serde_yaml_ng::from_str::<Option<FileConfig>>(text) {
            Ok(file) => file.unwrap_or_default(),
            Err(e) => bail!("not a valid web config: {}", one_line(&e.to_string())),
        };
        if file.rate_limit.is_some() {
            bail!("rate_limit is not supported by tcptrace (--web.max-requests bounds scrapes)");
        }
        let headers = match file.http_server_config {
            Some(http) => {
                if http.http2 == Some(true) {
                    bail!(
                        "http_server_config.http2: true is not supported: tcptrace serves HTTP/1.1 only (remove the key or set it to false)"
                    );
                }
                headers(http.headers.unwrap_or_default())?
            }
            None => Vec::new(),
        };
        let auth = file.basic_auth_users.map(BasicAuth::new).transpose()?;
        let tls = match file.tls_server_config {
            Some(tls) => tls_config(tls, dir)?.map(Arc::new),
            None => None,
        };
        Ok(Self { tls, auth, headers })
    }
}

/// YAML errors span lines ("at line 3 column 1, while parsing ..."); a user gets one.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The headers exporter-toolkit lets a config set, with the values it accepts.
fn headers(map: BTreeMap<String, String>) -> anyhow::Result<Vec<(HeaderName, HeaderValue)>> {
    const ALLOWED: [&str; 5] = [
        "Strict-Transport-Security",
        "X-Content-Type-Options",
        "X-Frame-Options",
        "X-XSS-Protection",
        "Content-Security-Policy",
    ];
    let mut out = Vec::new();
    for (name, value) in map {
        let Some(canonical) = ALLOWED.iter().find(|a| a.eq_ignore_ascii_case(&name)) else {
            bail!(
                "http_server_config.headers: {name} cannot be set (allowed: {})",
                ALLOWED.join(", ")
            );
        };
        match *canonical {
            "X-Content-Type-Options" if value != "nosniff" => {
                bail!("http_server_config.headers: X-Content-Type-Options must be nosniff")
            }
            "X-Frame-Options"
                if !value.eq_ignore_ascii_case("deny")
                    && !value.eq_ignore_ascii_case("sameorigin") =>
            {
                bail!("http_server_config.headers: X-Frame-Options must be deny or sameorigin")
            }
            _ => {}
        }
        let value = HeaderValue::from_str(&value)
            .map_err(|_| anyhow!("http_server_config.headers: {name}: not a valid header value"))?;
        out.push((HeaderName::from_static(lower(canonical)), value));
    }
    Ok(out)
}

fn lower(name: &'static str) -> &'static str {
    match name {
        "Strict-Transport-Security" => "strict-transport-security",
        "X-Content-Type-Options" => "x-content-type-options",
        "X-Frame-Options" => "x-frame-options",
        "X-XSS-Protection" => "x-xss-protection",
        _ => "content-security-policy",
    }
}

/// A PEM given inline (`cert`) or by file (`cert_file`), not both.
fn pem_source(
    inline: Option<String>,
    file: Option<String>,
    key: &str,
    dir: &Path,
) -> anyhow::Result<Option<Vec<u8>>> {
    match (
        inline.filter(|s| !s.is_empty()),
        file.filter(|s| !s.is_empty()),
    ) {
        (Some(_), Some(_)) => bail!("tls_server_config: set {key} or {key}_file, not both"),
        (Some(text), None) => Ok(Some(text.into_bytes())),
        (None, Some(file)) => {
            let path = resolve(dir, &file);
            std::fs::read(&path)
                .map(Some)
                .map_err(|e| anyhow!("tls_server_config.{key}_file {}: {e}", path.display()))
        }
        (None, None) => Ok(None),
    }
}

fn resolve(dir: &Path, file: &str) -> PathBuf {
    let path = Path::new(file);
    if path.is_absolute() {
        path.to_owned()
    } else {
        dir.join(path)
    }
}

fn version(name: &str, key: &str) -> anyhow::Result<&'static SupportedProtocolVersion> {
    match name {
        "TLS12" => Ok(&rustls::version::TLS12),
        "TLS13" => Ok(&rustls::version::TLS13),
        "TLS10" | "TLS11" => bail!(
            "tls_server_config.{key}: {name} is not supported (rustls implements TLS 1.2 and 1.3 only): use TLS12 or TLS13"
        ),
        other => bail!("tls_server_config.{key}: unknown TLS version {other} (TLS12 or TLS13)"),
    }
}

/// Go's names for the TLS 1.2 suites rustls implements (with the `_SHA256` alias Go accepts
/// for ChaCha20).
const SUITES: [(&str, CipherSuite); 8] = [
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

const CURVES: [(&str, NamedGroup); 3] = [
    ("X25519", NamedGroup::X25519),
    ("CurveP256", NamedGroup::secp256r1),
    ("CurveP384", NamedGroup::secp384r1),
];

/// The ring provider narrowed to the configured TLS 1.2 suites and curves, in their order
/// (TLS 1.3 suites are not configurable, as in Go).
fn provider(tls: &TlsFile) -> anyhow::Result<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(names) = &tls.cipher_suites {
        let mut chosen: Vec<_> = provider
            .cipher_suites
            .iter()
            .filter(|s| s.tls13().is_some())
            .copied()
            .collect();
        for name in names {
            let Some((_, suite)) = SUITES.iter().find(|(n, _)| n == name) else {
                bail!(
                    "tls_server_config.cipher_suites: {name} is not available (rustls implements these TLS 1.2 suites: {}; TLS 1.3 suites are not configurable)",
                    SUITES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            if let Some(s) = provider.cipher_suites.iter().find(|s| s.suite() == *suite)
                && !chosen.contains(s)
            {
                chosen.push(*s);
            }
        }
        provider.cipher_suites = chosen;
    }
    if let Some(names) = &tls.curve_preferences {
        let mut chosen = Vec::new();
        for name in names {
            let Some((_, group)) = CURVES.iter().find(|(n, _)| n == name) else {
                bail!(
                    "tls_server_config.curve_preferences: {name} is not available (rustls with ring implements X25519, CurveP256 and CurveP384)"
                );
            };
            if let Some(g) = provider.kx_groups.iter().find(|g| g.name() == *group) {
                chosen.push(*g);
            }
        }
        provider.kx_groups = chosen;
    }
    Ok(provider)
}

fn tls_config(tls: TlsFile, dir: &Path) -> anyhow::Result<Option<ServerConfig>> {
    if tls
        .client_allowed_sans
        .as_ref()
        .is_some_and(|s| !s.is_empty())
    {
        bail!(
            "tls_server_config.client_allowed_sans is not supported by tcptrace: issue client certificates from a CA used only for scrapers (client_ca_file)"
        );
    }
    let min = version(tls.min_version.as_deref().unwrap_or("TLS12"), "min_version")?;
    let max = version(tls.max_version.as_deref().unwrap_or("TLS13"), "max_version")?;
    let provider = Arc::new(provider(&tls)?);
    let cert = pem_source(tls.cert.clone(), tls.cert_file.clone(), "cert", dir)?;
    let key = pem_source(tls.key.clone(), tls.key_file.clone(), "key", dir)?;
    let client_ca = pem_source(
        tls.client_ca.clone(),
        tls.client_ca_file.clone(),
        "client_ca",
        dir,
    )?;
    let auth_type = tls.client_auth_type.clone().unwrap_or_default();
    let (cert, key) = match (cert, key) {
        (None, None) if client_ca.is_none() && auth_type.is_empty() => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        (None, _) => bail!("tls_server_config: cert_file is missing"),
        (_, None) => bail!("tls_server_config: key_file is missing"),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("tls_server_config.cert_file: not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        bail!("tls_server_config.cert_file: no certificate in it");
    }
    let key = PrivateKeyDer::from_pem_slice(&key)
        .map_err(|e| anyhow!("tls_server_config.key_file: not a PEM private key: {e}"))?;

    let versions: Vec<&'static SupportedProtocolVersion> =
        [&rustls::version::TLS12, &rustls::version::TLS13]
            .into_iter()
            .filter(|v| u16::from(v.version) >= u16::from(min.version))
            .filter(|v| u16::from(v.version) <= u16::from(max.version))
            .collect();
    if versions.is_empty() {
        bail!("tls_server_config: min_version is above max_version");
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| anyhow!("tls_server_config: {e}"))?;

    let verify = match auth_type.as_str() {
        "" | "NoClientCert" => None,
        "VerifyClientCertIfGiven" => Some(false),
        "RequireAndVerifyClientCert" => Some(true),
        "RequestClientCert" | "RequireAnyClientCert" | "RequireClientCert" => bail!(
            "tls_server_config.client_auth_type: {auth_type} (client certificates accepted without verification) is not supported: use RequireAndVerifyClientCert or VerifyClientCertIfGiven with client_ca_file"
        ),
        other => bail!(
            "tls_server_config.client_auth_type: unknown value {other} (NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert)"
        ),
    };
    let builder = match (verify, client_ca) {
        (None, Some(_)) => bail!(
            "tls_server_config: client_ca_file is set but client_auth_type is not (RequireAndVerifyClientCert or VerifyClientCertIfGiven)"
        ),
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => {
            bail!("tls_server_config: client_auth_type {auth_type} needs client_ca_file")
        }
        (Some(required), Some(ca)) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&ca) {
                let cert = cert.map_err(|e| {
                    anyhow!("tls_server_config.client_ca_file: not a PEM certificate: {e}")
                })?;
                roots.add(cert).map_err(|e| {
                    anyhow!("tls_server_config.client_ca_file: unusable CA certificate: {e}")
                })?;
            }
            if roots.is_empty() {
                bail!("tls_server_config.client_ca_file: no certificate in it");
            }
            let mut verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider);
            if !required {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| anyhow!("tls_server_config.client_ca_file: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        anyhow!("tls_server_config: the certificate and key do not make a usable pair: {e}")
    })?;
    config.ignore_client_order = tls.prefer_server_cipher_suites.unwrap_or(false);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(config))
}

/// exporter-toolkit's stand-in hash, checked for unknown users so that a wrong user name costs
/// as much as a wrong password.
const DUMMY_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";
/// Credentials whose outcome is remembered; the cache is emptied when full.
const AUTH_CACHE: usize = 256;

/// `basic_auth_users`: user name -> bcrypt hash. A check costs one bcrypt run (tens of
/// milliseconds at cost 10) the first time a pair of credentials is seen; the outcome is then
/// cached, so a scraper's every scrape does not pay it (as exporter-toolkit does). The cache key
/// is a SHA-256 of the pair, so no password is kept in memory.
pub struct BasicAuth {
    users: HashMap<String, String>,
    cache: Mutex<HashMap<[u8; 32], bool>>,
}

impl BasicAuth {
    fn new(users: BTreeMap<String, String>) -> anyhow::Result<Self> {
        for (user, hash) in &users {
            hash.parse::<bcrypt::HashParts>().map_err(|e| {
                anyhow!("basic_auth_users.{user}: not a bcrypt hash ({e}); make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`")
            })?;
        }
        Ok(Self {
            users: users.into_iter().collect(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn key(user: &str, password: &str) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(user.as_bytes());
        ctx.update(&[0]);
        ctx.update(password.as_bytes());
        let mut key = [0; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        key
    }

    /// The remembered outcome for these credentials, if any (cheap).
    pub fn cached(&self, user: &str, password: &str) -> Option<bool> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(&Self::key(user, password)).copied()
    }

    /// Checks the credentials with bcrypt and remembers the outcome (slow: run it off the
    /// async threads).
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let (hash, known) = match self.users.get(user) {
            Some(hash) => (hash.as_str(), true),
            None => (DUMMY_HASH, false),
        };
        let ok = known && bcrypt::verify(password, hash).unwrap_or(false);
        if !known {
            let _ = bcrypt::verify(password, hash);
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= AUTH_CACHE {
            cache.clear();
        }
        cache.insert(Self::key(user, password), ok);
        ok
    }
}

/// User and password from an `Authorization: Basic ...` header value.
pub fn basic_credentials(header: &[u8]) -> Option<(String, String)> {
    use base64::Engine as _;
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Loads `path` when given, else the default (plain HTTP, no auth).
pub fn load_optional(path: Option<&Path>) -> anyhow::Result<WebConfig> {
    match path {
        Some(p) => WebConfig::load(p),
        None => Ok(WebConfig::default()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, as
    /// PEM files in `dir` (made at test time: no key is committed).
    pub(crate) struct Pki {
        pub ca: PathBuf,
        pub cert: PathBuf,
        pub key: PathBuf,
        pub client_cert: PathBuf,
        pub client_key: PathBuf,
    }

    pub(crate) fn pki(dir: &Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        std::fs::create_dir_all(dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (cert, key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
        let (client_cert, client_key) = leaf(vec!["scraper".into()]);
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        Pki {
            ca: write("ca.pem", &ca.pem()),
            cert: write("server.pem", &cert),
            key: write("server-key.pem", &key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
        }
    }

    pub(crate) fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tcptrace-webconfig-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn parse(text: &str) -> anyhow::Result<WebConfig> {
        WebConfig::parse(text, Path::new("/nonexistent"))
    }

    fn err(text: &str) -> String {
        let e = format!("{:#}", parse(text).unwrap_err());
        assert!(!e.contains('\n'), "one line: {e}");
        e
    }

    #[test]
    fn empty_means_plain_http() {
        for text in [
            "",
            "---\n",
            "~",
            "tls_server_config:\n",
            "basic_auth_users: {}\n",
        ] {
            let c = parse(text).unwrap();
            assert!(c.tls.is_none() && c.headers.is_empty(), "{text:?}");
        }
    }

    #[test]
    fn unknown_and_unsupported_keys_are_refused_by_name() {
        assert!(err("tls_config:\n  cert_file: x\n").contains("tls_config"));
        assert!(err("tls_server_config:\n  certfile: x\n").contains("certfile"));
        assert!(err("rate_limit:\n  interval: 1s\n").contains("rate_limit"));
        assert!(err("http_server_config:\n  http2: true\n").contains("HTTP/1.1"));
        assert!(parse("http_server_config:\n  http2: false\n").is_ok());
        assert!(
            err("tls_server_config:\n  client_allowed_sans: [a]\n").contains("client_allowed_sans")
        );
        assert!(err(": :\n  - [").contains("not a valid web config"));
        assert!(err("basic_auth_users: [a, b]\n").contains("not a valid web config"));
    }

    #[test]
    fn headers_follow_exporter_toolkit() {
        let c = parse(
            "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\n",
        )
        .unwrap();
        let names: Vec<&str> = c.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["strict-transport-security", "x-frame-options"]);
        assert!(err("http_server_config:\n  headers:\n    Server: x\n").contains("Server"));
        assert!(
            err("http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n")
                .contains("nosniff")
        );
        assert!(
            err("http_server_config:\n  headers:\n    X-Frame-Options: allow\n")
                .contains("sameorigin")
        );
    }

    #[test]
    fn basic_auth_checks_hashes_at_load_and_caches_outcomes() {
        assert!(err("basic_auth_users:\n  alice: plaintext\n").contains("basic_auth_users.alice"));
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let c = parse(&format!("basic_auth_users:\n  alice: '{hash}'\n")).unwrap();
        let auth = c.auth.unwrap();
        assert_eq!(auth.cached("alice", "s3cret"), None);
        assert!(auth.verify("alice", "s3cret"));
        assert_eq!(auth.cached("alice", "s3cret"), Some(true));
        assert!(!auth.verify("alice", "wrong"));
        assert_eq!(auth.cached("alice", "wrong"), Some(false));
        assert!(!auth.verify("bob", "s3cret"));
        // The cache stays bounded.
        for i in 0..(AUTH_CACHE * 2) {
            auth.cache
                .lock()
                .unwrap()
                .insert(BasicAuth::key("x", &i.to_string()), false);
            if auth.cache.lock().unwrap().len() >= AUTH_CACHE {
                auth.verify("bob", "y");
            }
        }
        assert!(auth.cache.lock().unwrap().len() <= AUTH_CACHE);
    }

    #[test]
    fn credentials_from_the_header() {
        assert_eq!(
            basic_credentials(b"Basic YWxpY2U6czNjcjp0"),
            Some(("alice".into(), "s3cr:t".into()))
        );
        assert_eq!(
            basic_credentials(b"basic  YWxpY2U6czNjcjp0 "),
            Some(("alice".into(), "s3cr:t".into()))
        );
        assert_eq!(basic_credentials(b"Bearer YWxpY2U6czNjcjp0"), None);
        assert_eq!(basic_credentials(b"Basic !!!"), None);
        assert_eq!(basic_credentials(b"Basic YWxpY2U="), None, "no colon");
        assert_eq!(basic_credentials(&[0xff, 0xfe]), None);
    }

    #[test]
    fn tls_settings_rustls_cannot_honour_are_refused() {
        let dir = temp_dir("refused");
        let pki = pki(&dir);
        let base = format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            pki.cert.display(),
            pki.key.display()
        );
        assert!(parse(&base).unwrap().tls.is_some());
        for (extra, needle) in [
            ("  min_version: TLS11\n", "TLS 1.2 and 1.3"),
            ("  max_version: TLS10\n", "TLS 1.2 and 1.3"),
            ("  min_version: TLS14\n", "unknown TLS version"),
            (
                "  client_auth_type: RequireAnyClientCert\n",
                "without verification",
            ),
            (
                "  client_auth_type: RequestClientCert\n",
                "without verification",
            ),
            ("  client_auth_type: Sometimes\n", "unknown value"),
            (
                "  client_auth_type: RequireAndVerifyClientCert\n",
                "needs client_ca_file",
            ),
            (
                "  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n",
                "TLS_RSA_WITH_AES_128_CBC_SHA",
            ),
            ("  curve_preferences: [CurveP521]\n", "CurveP521"),
        ] {
            let e = err(&format!("{base}{extra}"));
            assert!(e.contains(needle), "{extra}: {e}");
        }
        let ca_only = format!("{base}  client_ca_file: {}\n", pki.ca.display());
        assert!(err(&ca_only).contains("client_auth_type is not"));
        let ok = format!(
            "{base}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n  min_version: TLS13\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305]\n  curve_preferences: [X25519, CurveP256]\n  prefer_server_cipher_suites: true\n",
            pki.ca.display()
        );
        let tls = parse(&ok).unwrap().tls.unwrap();
        assert!(tls.ignore_client_order);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn files_are_checked_at_load_and_resolved_beside_the_config() {
        let dir = temp_dir("files");
        let pki = pki(&dir);
        // Relative names are taken from the config file's directory.
        let config = dir.join("web.yml");
        std::fs::write(
            &config,
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n",
        )
        .unwrap();
        assert!(WebConfig::load(&config).unwrap().tls.is_some());
        std::fs::write(
            &config,
            "tls_server_config:\n  cert_file: missing.pem\n  key_file: server-key.pem\n",
        )
        .unwrap();
        let e = format!("{:#}", WebConfig::load(&config).unwrap_err());
        assert!(e.contains("missing.pem") && e.contains("web.yml"), "{e}");
        std::fs::write(
            &config,
            format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
                pki.key.display(),
                pki.key.display()
            ),
        )
        .unwrap();
        let e = format!("{:#}", WebConfig::load(&config).unwrap_err());
        assert!(e.contains("cert_file"), "{e}");
        // A key that does not belong to the certificate.
        std::fs::write(
            &config,
            format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
                pki.cert.display(),
                pki.client_key.display()
            ),
        )
        .unwrap();
        let e = format!("{:#}", WebConfig::load(&config).unwrap_err());
        assert!(e.contains("usable pair"), "{e}");
        std::fs::write(&config, "tls_server_config:\n  key_file: server-key.pem\n").unwrap();
        let e = format!("{:#}", WebConfig::load(&config).unwrap_err());
        assert!(e.contains("cert_file is missing"), "{e}");
        let e = format!("{:#}", WebConfig::load(&dir.join("nope.yml")).unwrap_err());
        assert!(e.contains("nope.yml"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
