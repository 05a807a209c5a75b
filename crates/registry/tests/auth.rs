//! Authentication against a real registry: htpasswd basic auth, and the registry's `auth: token`
//! mode with a small token server written here (JWTs signed with a self-signed ES256 key whose
//! certificate the registry trusts).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{TempStore, TestRegistry, make_image};
use kiln_registry::credentials::{Credentials, CredentialsError, DockerConfig};
use kiln_registry::{
    ClientOptions, CredentialSource, RegistryClient, RegistryError, Repository, WantedPlatform,
};

struct Fixed(Option<Credentials>);

impl CredentialSource for Fixed {
    fn credentials_for(&self, _registry: &str) -> Result<Option<Credentials>, CredentialsError> {
        Ok(self.0.clone())
    }
}

fn creds(user: &str, secret: &str) -> Option<Credentials> {
    Some(Credentials {
        username: user.into(),
        secret: secret.into(),
    })
}

fn client(source: impl CredentialSource + 'static) -> RegistryClient {
    RegistryClient::new(Arc::new(source), ClientOptions::default()).unwrap()
}

fn amd64() -> WantedPlatform {
    WantedPlatform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
    }
}

async fn push_one(client: &RegistryClient, registry: &TestRegistry) -> Result<(), RegistryError> {
    let store = TempStore::new();
    let digest = make_image(&store, "auth/app:1", 1, "auth");
    let repo = Repository {
        registry: registry.host(),
        name: "auth/app".into(),
    };
    kiln_registry::push(client, &store, &digest, &repo, "1", &[], &|_| {}).await?;
    let fresh = TempStore::new();
    let pulled = kiln_registry::pull(client, &fresh, &repo, "1", &amd64(), &|_| {}).await?;
    assert_eq!(pulled.manifest.digest, digest);
    Ok(())
}

#[tokio::test]
async fn htpasswd_basic_auth_with_right_wrong_and_config_json_credentials() {
    let work = tempfile::tempdir().unwrap();
    let Some(registry) = TestRegistry::start_with_password("alice", "right-pw") else {
        return;
    };

    push_one(&client(Fixed(creds("alice", "right-pw"))), &registry)
        .await
        .expect("right credentials");

    let error = push_one(&client(Fixed(creds("alice", "wrong-pw"))), &registry)
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::Unauthorized { .. }),
        "{error}"
    );
    let error = push_one(&client(Fixed(None)), &registry).await.unwrap_err();
    assert!(
        matches!(error, RegistryError::Unauthorized { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("kiln login"), "{error}");

    // The same credentials from a Docker config.json, as `kiln login` writes it.
    let config_path = work.path().join("config.json");
    let mut config = DockerConfig::load(&config_path).unwrap();
    config
        .store_credentials(
            &registry.host(),
            &Credentials {
                username: "alice".into(),
                secret: "right-pw".into(),
            },
        )
        .unwrap();
    push_one(
        &client(DockerConfig::load(&config_path).unwrap()),
        &registry,
    )
    .await
    .expect("credentials from config.json");
    let ping = client(DockerConfig::load(&config_path).unwrap())
        .ping(&registry.host())
        .await;
    assert!(ping.is_ok(), "{ping:?}");
    let bad_ping = client(Fixed(creds("alice", "nope")))
        .ping(&registry.host())
        .await;
    assert!(
        matches!(bad_ping, Err(RegistryError::Unauthorized { .. })),
        "{bad_ping:?}"
    );
}

/// A token server: checks basic credentials (alice/right-pw), then signs a JWT granting the
/// requested scopes. Counts the tokens it issued.
struct TokenServer {
    port: u16,
    issued: Arc<AtomicUsize>,
}

const ISSUER: &str = "kiln-test-issuer";
const SERVICE: &str = "kiln-test-registry";

fn start_token_server(key_pkcs8: Vec<u8>, cert_der: Vec<u8>) -> TokenServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let issued = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&issued);
    std::thread::spawn(move || {
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pkcs8,
            &rng,
        )
        .unwrap();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut authorization = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("authorization")
                {
                    authorization = Some(value.trim().to_string());
                }
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            let scopes: Vec<String> = path
                .split_once('?')
                .map(|(_, q)| q)
                .unwrap_or_default()
                .split('&')
                .filter_map(|kv| kv.strip_prefix("scope="))
                .map(|s| {
                    s.replace("%3A", ":")
                        .replace("%2F", "/")
                        .replace("%2C", ",")
                })
                .collect();
            let user = authorization
                .as_deref()
                .and_then(|a| a.strip_prefix("Basic "))
                .and_then(|b| STANDARD.decode(b).ok())
                .and_then(|b| String::from_utf8(b).ok());
            let (status, body) = match user.as_deref() {
                Some("alice:right-pw") => {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let access: Vec<serde_json::Value> = scopes
                        .iter()
                        .filter_map(|scope| {
                            let mut parts = scope.splitn(3, ':');
                            let kind = parts.next()?;
                            let name = parts.next()?;
                            let actions: Vec<&str> = parts.next()?.split(',').collect();
                            Some(
                                serde_json::json!({"type": kind, "name": name, "actions": actions}),
                            )
                        })
                        .collect();
                    let token = sign_jwt(&key, &rng, &cert_der, "alice", access);
                    (
                        "200 OK",
                        serde_json::json!({"token": token, "expires_in": 300}).to_string(),
                    )
                }
                Some(_) => (
                    "401 Unauthorized",
                    "{\"details\":\"bad credentials\"}".to_string(),
                ),
                None => {
                    // Anonymous: a valid token with no access at all.
                    let token = sign_jwt(&key, &rng, &cert_der, "", Vec::new());
                    ("200 OK", serde_json::json!({"token": token}).to_string())
                }
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    TokenServer { port, issued }
}

fn sign_jwt(
    key: &ring::signature::EcdsaKeyPair,
    rng: &ring::rand::SystemRandom,
    cert_der: &[u8],
    subject: &str,
    access: Vec<serde_json::Value>,
) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header =
        serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(cert_der)]});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": subject, "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", rand_suffix()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key.sign(rng, signing_input.as_bytes()).unwrap();
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    )
}

fn rand_suffix() -> u64 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::SeqCst) as u64
}

#[tokio::test]
async fn bearer_token_auth_from_the_challenge_with_tokens_reused() {
    let work = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["kiln-token-test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let bundle = work.path().join("token.pem");
    std::fs::write(&bundle, cert.pem()).unwrap();
    let server = start_token_server(key.serialize_der(), cert.der().to_vec());
    let auth = format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
        server.port,
        bundle.display()
    );
    let Some(registry) = TestRegistry::start(&auth) else {
        return;
    };

    let good = client(Fixed(creds("alice", "right-pw")));
    push_one(&good, &registry)
        .await
        .expect("push and pull with a token");
    let issued = server.issued.load(Ordering::SeqCst);
    assert!(
        issued <= 3,
        "tokens are reused per scope while valid ({issued} issued for one push and one pull)"
    );

    let error = push_one(&client(Fixed(creds("alice", "wrong"))), &registry)
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::Unauthorized { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("rejected the credentials"),
        "{error}"
    );

    let error = push_one(&client(Fixed(None)), &registry).await.unwrap_err();
    assert!(
        matches!(error, RegistryError::Unauthorized { .. }),
        "{error}"
    );
}
