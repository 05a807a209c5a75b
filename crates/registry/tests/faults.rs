//! Faults between kiln and a real registry: a proxy that alters or truncates blob downloads, and a
//! registry that goes away in the middle of a push.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use common::{TempStore, TestRegistry, make_image};
use kiln_registry::{
    Anonymous, ClientOptions, RegistryClient, RegistryError, Repository, TransferEvent,
    WantedPlatform,
};

const PASS: u8 = 0;
const ALTER_BLOBS: u8 = 1;
const TRUNCATE_BLOBS: u8 = 2;
const REFUSE: u8 = 3;

/// An HTTP/1.1 proxy that understands just enough (Content-Length bodies, which is what the
/// registry sends) to tamper with blob downloads. `mode` switches its behaviour at run time.
struct Proxy {
    port: u16,
    mode: Arc<AtomicU8>,
}

fn start_proxy(upstream: u16) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mode = Arc::new(AtomicU8::new(PASS));
    let shared = Arc::clone(&mode);
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let mode = Arc::clone(&shared);
            std::thread::spawn(move || {
                if mode.load(Ordering::SeqCst) == REFUSE {
                    return; // dropping the socket: connection reset, as a dead registry gives
                }
                let _ = relay(client, upstream, &mode);
            });
        }
    });
    Proxy { port, mode }
}

fn read_head(reader: &mut impl BufRead) -> std::io::Result<Option<(String, Vec<String>)>> {
    let mut first = String::new();
    if reader.read_line(&mut first)? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        headers.push(line);
    }
    Ok(Some((first, headers)))
}

fn content_length(headers: &[String]) -> usize {
    headers
        .iter()
        .filter_map(|h| h.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

fn relay(client: TcpStream, upstream: u16, mode: &AtomicU8) -> std::io::Result<()> {
    let server = TcpStream::connect(("127.0.0.1", upstream))?;
    let mut client_reader = BufReader::new(client.try_clone()?);
    let mut client_writer = client;
    let mut server_reader = BufReader::new(server.try_clone()?);
    let mut server_writer = server;
    while let Some((request_line, headers)) = read_head(&mut client_reader)? {
        if mode.load(Ordering::SeqCst) == REFUSE {
            return Ok(()); // kept-alive connections die with the registry too
        }
        let mut body = vec![0; content_length(&headers)];
        client_reader.read_exact(&mut body)?;
        server_writer.write_all(request_line.as_bytes())?;
        for header in &headers {
            server_writer.write_all(header.as_bytes())?;
        }
        server_writer.write_all(b"\r\n")?;
        server_writer.write_all(&body)?;

        let Some((status_line, response_headers)) = read_head(&mut server_reader)? else {
            break;
        };
        let is_head = request_line.starts_with("HEAD ");
        let length = if is_head {
            0
        } else {
            content_length(&response_headers)
        };
        let mut response_body = vec![0; length];
        server_reader.read_exact(&mut response_body)?;
        let blob_get = request_line.starts_with("GET ") && request_line.contains("/blobs/sha256:");
        let tamper = if blob_get {
            mode.load(Ordering::SeqCst)
        } else {
            PASS
        };
        client_writer.write_all(status_line.as_bytes())?;
        for header in &response_headers {
            client_writer.write_all(header.as_bytes())?;
        }
        client_writer.write_all(b"\r\n")?;
        match tamper {
            ALTER_BLOBS if !response_body.is_empty() => {
                let last = response_body.len() - 1;
                response_body[last] ^= 0xff;
                client_writer.write_all(&response_body)?;
            }
            TRUNCATE_BLOBS if response_body.len() > 1 => {
                client_writer.write_all(&response_body[..response_body.len() / 2])?;
                return Ok(()); // the connection drops mid-body
            }
            _ => client_writer.write_all(&response_body)?,
        }
    }
    Ok(())
}

fn quick_client() -> RegistryClient {
    RegistryClient::new(
        Arc::new(Anonymous),
        ClientOptions {
            attempts: 2,
            backoff: std::time::Duration::from_millis(20),
            ..ClientOptions::default()
        },
    )
    .unwrap()
}

fn amd64() -> WantedPlatform {
    WantedPlatform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
    }
}

fn blob_count(store_root: &std::path::Path) -> usize {
    std::fs::read_dir(store_root.join("blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn altered_or_truncated_blobs_are_rejected_and_nothing_is_stored() {
    let Some(registry) = TestRegistry::start("") else {
        return;
    };
    let client = quick_client();
    let source = TempStore::new();
    let digest = make_image(&source, "fault/app:1", 2, "fault");
    let direct = Repository {
        registry: registry.host(),
        name: "fault/app".into(),
    };
    kiln_registry::push(&client, &source, &digest, &direct, "1", &[], &|_| {})
        .await
        .unwrap();

    let proxy = start_proxy(registry.port);
    let via_proxy = Repository {
        registry: format!("127.0.0.1:{}", proxy.port),
        name: "fault/app".into(),
    };
    for mode in [ALTER_BLOBS, TRUNCATE_BLOBS] {
        proxy.mode.store(mode, Ordering::SeqCst);
        let store = TempStore::new();
        let error = kiln_registry::pull(&client, &store, &via_proxy, "1", &amd64(), &|_| {})
            .await
            .unwrap_err();
        match mode {
            ALTER_BLOBS => assert!(
                matches!(error, RegistryError::DigestMismatch { .. }),
                "{error}"
            ),
            _ => assert!(
                matches!(
                    error,
                    RegistryError::Connection { .. } | RegistryError::DigestMismatch { .. }
                ),
                "{error}"
            ),
        }
        assert_eq!(
            blob_count(store.path()),
            0,
            "no blob of a failed pull is stored ({error})"
        );
        assert!(store.manifest(&digest).unwrap().is_none());
    }

    // Through an honest proxy the same pull works.
    proxy.mode.store(PASS, Ordering::SeqCst);
    let store = TempStore::new();
    let pulled = kiln_registry::pull(&client, &store, &via_proxy, "1", &amd64(), &|_| {})
        .await
        .unwrap();
    assert_eq!(pulled.manifest.digest, digest);
}

#[tokio::test]
async fn registry_gone_mid_push_gives_a_clear_error_and_the_retry_succeeds() {
    let Some(registry) = TestRegistry::start("") else {
        return;
    };
    let proxy = start_proxy(registry.port);
    let store = TempStore::new();
    let digest = make_image(&store, "gone/app:1", 4, "gone");
    let repo = Repository {
        registry: format!("127.0.0.1:{}", proxy.port),
        name: "gone/app".into(),
    };
    let client = quick_client();

    // The "registry" disappears after the first blob upload finishes.
    let mode = Arc::clone(&proxy.mode);
    let uploaded = Arc::new(Mutex::new(0usize));
    let counter = Arc::clone(&uploaded);
    let on_event = move |event: TransferEvent| {
        if matches!(event, TransferEvent::Done { .. }) {
            *counter.lock().unwrap() += 1;
            mode.store(REFUSE, Ordering::SeqCst);
        }
    };
    let error = kiln_registry::push(&client, &store, &digest, &repo, "1", &[], &on_event)
        .await
        .unwrap_err();
    assert!(matches!(error, RegistryError::Connection { .. }), "{error}");
    assert!(
        error.to_string().contains(&repo.registry),
        "the error names the registry: {error}"
    );
    assert!(*uploaded.lock().unwrap() >= 1);

    // It comes back: the retry succeeds and skips what already arrived.
    proxy.mode.store(PASS, Ordering::SeqCst);
    let skipped = Arc::new(Mutex::new(0usize));
    let skip_counter = Arc::clone(&skipped);
    let pushed = kiln_registry::push(&client, &store, &digest, &repo, "1", &[], &move |event| {
        if matches!(event, TransferEvent::Skipped { .. }) {
            *skip_counter.lock().unwrap() += 1;
        }
    })
    .await
    .expect("retry after the registry is back");
    assert_eq!(pushed, digest);
    assert!(
        *skipped.lock().unwrap() >= 1,
        "blobs uploaded before the failure are not sent again"
    );
}
