//! TLS termination on an `https` listener, in-process against real backends on loopback, with
//! certificates made in the test.

use crate::common;
use crate::tls_support;

use common::{Backend, Proxy};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tls_support::{Leaf, TestCa, https_get, peer_leaf, tls_connect};

/// An https listener with `certs` (`(leaf, server_names)`), one cluster `web` of `backend`.
fn https_config(certs: &[(&Leaf, &[&str])], backend: std::net::SocketAddr) -> String {
    let mut text = String::from("[[listeners]]\naddress = \"127.0.0.1:0\"\nprotocol = \"https\"\n");
    for (leaf, names) in certs {
        let names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        text.push_str(&format!(
            "[[listeners.certificates]]\ncert = \"{}\"\nkey = \"{}\"\nserver_names = [{}]\n",
            leaf.cert.display(),
            leaf.key.display(),
            names.join(", ")
        ));
    }
    text.push_str(&format!(
        "\n[admin]\naddress = \"127.0.0.1:0\"\n\n[access_log]\nenabled = false\n\n\
         [[routes]]\ncluster = \"web\"\n\n[[clusters]]\nname = \"web\"\n\
         [[clusters.endpoints]]\naddress = \"{backend}\"\n"
    ));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_speaks_h2_and_http1_by_alpn_and_forwards_proto_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let leaf = ca.leaf(dir.path(), "a", &["a.example.com"]);
    let backend = Backend::start("1").await;
    let proxy = Proxy::start(&https_config(&[(&leaf, &[])], backend.addr), dir.path()).await;

    for (alpn, version) in [
        (&b"h2"[..], http::Version::HTTP_2),
        (&b"http/1.1"[..], http::Version::HTTP_11),
    ] {
        let answer = https_get(&ca, alpn, proxy.addr, "a.example.com", "/echo-headers").await;
        assert_eq!(answer.alpn.as_deref(), Some(alpn));
        assert_eq!(answer.version, version);
        assert_eq!(answer.status, http::StatusCode::OK);
        assert!(
            answer.body.contains("x-forwarded-proto: https\n"),
            "{}",
            answer.body
        );
        assert!(
            answer
                .body
                .contains("forwarded: for=127.0.0.1;proto=https;host=a.example.com\n"),
            "{}",
            answer.body
        );
        assert_eq!(answer.leaf, leaf.der);
    }
    // A plain-text HTTP request on the TLS port gets no HTTP answer.
    let client = common::http1_client();
    let plain = tokio::time::timeout(
        Duration::from_secs(10),
        client.get(proxy.url("/").parse().unwrap()),
    )
    .await
    .expect("a plain request is refused promptly");
    assert!(
        plain.is_err(),
        "plain HTTP must not be served on an https listener"
    );
    // The connection's task counts the failure after rustls has given up on the handshake, which
    // may be after the client saw its error: wait for it.
    let failures = common::wait_metric(
        proxy.admin,
        "sluicegate_tls_handshake_failures_total",
        &[],
        1.0,
    )
    .await;
    assert_eq!(
        failures, 1.0,
        "the plain request counts as a failed handshake"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_names_get_their_own_certificates_and_unknown_names_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let a = ca.leaf(dir.path(), "a", &["a.example.com"]);
    let b = ca.leaf(dir.path(), "b", &["b.example.com", "x.b.example.com"]);
    // The default's names are not configured on the listener: it is chosen as the default.
    let default = ca.leaf(dir.path(), "default", &["unknown.test"]);
    let backend = Backend::start("1").await;
    let proxy = Proxy::start(
        &https_config(
            &[
                (&a, &["a.example.com"]),
                (&b, &["b.example.com", "*.b.example.com"]),
                (&default, &[]),
            ],
            backend.addr,
        ),
        dir.path(),
    )
    .await;

    for (sni, expect, answer) in [
        ("a.example.com", &a, "hello from 1"),
        ("b.example.com", &b, "hello from 1"),
        ("x.b.example.com", &b, "hello from 1"),
        ("unknown.test", &default, "hello from 1"),
    ] {
        let got = https_get(&ca, b"h2", proxy.addr, sni, "/").await;
        assert_eq!(got.leaf, expect.der, "certificate for {sni}");
        assert_eq!(got.body, answer);
    }
    proxy.stop().await;
}

fn replace_atomically(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_replaced_while_clients_connect_are_served_without_a_failed_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let old = ca.leaf(dir.path(), "served", &["a.example.com"]);
    let new = ca.leaf(dir.path(), "next", &["a.example.com"]);
    let old_der = old.der.clone();
    let backend = Backend::start("1").await;
    let proxy = Proxy::start(&https_config(&[(&old, &[])], backend.addr), dir.path()).await;
    let addr = proxy.addr;

    let config = ca.client_config(&[b"http/1.1"]);
    let handshakes = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (config, handshakes, stop) = (config.clone(), handshakes.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..5000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let tls = tls_connect(config.clone(), addr, "a.example.com")
                    .await
                    .expect("no handshake may fail while certificates are swapped");
                handshakes.fetch_add(1, Ordering::Relaxed);
                let leaf = peer_leaf(&tls);
                if seen.last() != Some(&leaf) {
                    seen.push(leaf);
                }
            }
            seen
        }));
    }
    // Let some handshakes happen on the old certificate, then swap the files.
    common::wait_for(
        "handshakes on the old certificate",
        common::WAIT,
        async || handshakes.load(Ordering::Relaxed),
        |n| *n > 20,
    )
    .await;
    replace_atomically(&new.cert, &old.cert);
    replace_atomically(&new.key, &old.key);
    let new_der = new.der.clone();
    let served_new = common::eventually(common::WAIT, async || {
        let tls = tls_connect(config.clone(), addr, "a.example.com")
            .await
            .unwrap();
        peer_leaf(&tls) == new_der
    })
    .await;
    assert!(
        served_new,
        "the new certificate is served after the files change"
    );
    // Keep the clients going a little on the new certificate.
    let after = handshakes.load(Ordering::Relaxed);
    common::wait_for(
        "handshakes on the new certificate",
        common::WAIT,
        async || handshakes.load(Ordering::Relaxed),
        |n| *n > after + 20,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut firsts = Vec::new();
    for c in clients {
        let seen = c.await.unwrap();
        assert_eq!(
            seen.last(),
            Some(&new.der),
            "clients end on the new certificate"
        );
        assert!(seen.len() <= 2, "no flapping back to the old one");
        firsts.push(seen[0].clone());
    }
    assert!(
        firsts.contains(&old_der),
        "clients started on the old certificate"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn bad_certificate_files_are_refused_naming_listener_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let a = ca.leaf(dir.path(), "a", &["a.example.com"]);
    let b = ca.leaf(dir.path(), "b", &["b.example.com"]);
    let backend: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();

    // A key that belongs to another certificate.
    let mismatched = Leaf {
        cert: a.cert.clone(),
        key: b.key.clone(),
        der: a.der.clone(),
        key_der: b.key_der.clone_key(),
    };
    let text = https_config(&[(&mismatched, &[])], backend);
    let config = sluicegate::config::Config::parse(&text, "test.toml", dir.path()).unwrap();
    let err = sluicegate::server::Server::new(config)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.starts_with("test.toml:5:"), "{err}");
    assert!(err.contains("listener 127.0.0.1:0"), "{err}");
    assert!(
        err.contains("b.key: does not match the certificate"),
        "{err}"
    );

    // A missing certificate file.
    let missing = Leaf {
        cert: dir.path().join("nope.pem"),
        ..mismatched
    };
    let text = https_config(&[(&missing, &[])], backend);
    let config = sluicegate::config::Config::parse(&text, "test.toml", dir.path()).unwrap();
    let err = sluicegate::server::Server::new(config)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("cannot read the certificate file"), "{err}");
    assert!(err.contains("nope.pem"), "{err}");
}

/// A clear-text listener routing to cluster `web`, whose endpoints speak TLS as `tls` says.
fn upstream_tls_config(backend: std::net::SocketAddr, tls: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n\
         [access_log]\nenabled = false\n\n[[routes]]\ncluster = \"web\"\n\n\
         [[clusters]]\nname = \"web\"\nretry = {{ attempts = 1 }}\n[clusters.tls]\n{tls}\n\
         [[clusters.endpoints]]\naddress = \"{backend}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verifies_the_backend_with_the_ca_file_and_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let leaf = ca.leaf(dir.path(), "backend", &["backend.internal"]);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let backend = tls_support::HttpsBackend::start("tls-backend", &leaf, None).await;
    let client = common::http1_client();

    let tls = format!(
        "ca_file = \"{}\"\nserver_name = \"backend.internal\"",
        ca_file.display()
    );
    let proxy = Proxy::start(&upstream_tls_config(backend.addr, &tls), dir.path()).await;
    let (status, body) = common::get(&client, &proxy.url("/")).await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(body, "tls-backend sni=backend.internal");
    proxy.stop().await;

    // The same backend checked against another CA: refused, the client gets a 502.
    let other = TestCa::new();
    let other_file = dir.path().join("other-ca.pem");
    std::fs::write(&other_file, other.pem()).unwrap();
    let tls = format!(
        "ca_file = \"{}\"\nserver_name = \"backend.internal\"",
        other_file.display()
    );
    let proxy = Proxy::start(&upstream_tls_config(backend.addr, &tls), dir.path()).await;
    let (status, _) = common::get(&client, &proxy.url("/")).await;
    assert_eq!(status, http::StatusCode::BAD_GATEWAY);
    proxy.stop().await;

    // A name the certificate does not have: refused too.
    let tls = format!(
        "ca_file = \"{}\"\nserver_name = \"other.internal\"",
        ca_file.display()
    );
    let proxy = Proxy::start(&upstream_tls_config(backend.addr, &tls), dir.path()).await;
    let (status, _) = common::get(&client, &proxy.url("/")).await;
    assert_eq!(status, http::StatusCode::BAD_GATEWAY);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_presents_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let leaf = ca.leaf(dir.path(), "backend", &["backend.internal"]);
    let client_leaf = ca.leaf(dir.path(), "proxy-client", &["proxy.internal"]);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let backend = tls_support::HttpsBackend::start("mtls-backend", &leaf, Some(&ca)).await;
    let client = common::http1_client();

    let base = format!(
        "ca_file = \"{}\"\nserver_name = \"backend.internal\"",
        ca_file.display()
    );
    let proxy = Proxy::start(&upstream_tls_config(backend.addr, &base), dir.path()).await;
    let (status, _) = common::get(&client, &proxy.url("/")).await;
    assert_eq!(
        status,
        http::StatusCode::BAD_GATEWAY,
        "no client certificate: refused"
    );
    proxy.stop().await;

    let with_cert = format!(
        "{base}\ncert = \"{}\"\nkey = \"{}\"",
        client_leaf.cert.display(),
        client_leaf.key.display()
    );
    let proxy = Proxy::start(&upstream_tls_config(backend.addr, &with_cert), dir.path()).await;
    let (status, body) = common::get(&client, &proxy.url("/")).await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(body, "mtls-backend sni=backend.internal");
    proxy.stop().await;
}

#[tokio::test]
async fn an_http_listener_can_redirect_everything_to_https() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("1").await;
    let config = common::config_for(&[backend.addr], "", "").replacen(
        "address = \"127.0.0.1:0\"\n",
        "address = \"127.0.0.1:0\"\nredirect_to_https = true\nhttps_port = 8443\n",
        1,
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    let client = common::http1_client();
    let req = http::Request::get(proxy.url("/a/b?c=d"))
        .header("host", "www.example.com:8080")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        resp.headers()[http::header::LOCATION],
        "https://www.example.com:8443/a/b?c=d"
    );
    assert_eq!(backend.hits("/a/b"), 0, "nothing reaches the backend");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reload_naming_other_certificate_files_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let first = ca.leaf(dir.path(), "first", &["a.example.com"]);
    let second = ca.leaf(dir.path(), "second", &["a.example.com"]);
    let backend = Backend::start("1").await;
    let path = dir.path().join("sluicegate.toml");
    std::fs::write(&path, https_config(&[(&first, &[])], backend.addr)).unwrap();
    let proxy = Proxy::start(&std::fs::read_to_string(&path).unwrap(), dir.path()).await;
    let got = https_get(&ca, b"h2", proxy.addr, "a.example.com", "/").await;
    assert_eq!(got.leaf, first.der);

    // A reload naming a missing key is refused: the first certificate keeps serving.
    let broken = Leaf {
        key: dir.path().join("missing.key"),
        cert: second.cert.clone(),
        der: second.der.clone(),
        key_der: second.key_der.clone_key(),
    };
    std::fs::write(&path, https_config(&[(&broken, &[])], backend.addr)).unwrap();
    let err = sluicegate::reload::reload(&proxy.proxy, &path)
        .await
        .unwrap_err();
    assert!(err.contains("missing.key"), "{err}");
    let got = https_get(&ca, b"h2", proxy.addr, "a.example.com", "/").await;
    assert_eq!(got.leaf, first.der);

    std::fs::write(&path, https_config(&[(&second, &[])], backend.addr)).unwrap();
    sluicegate::reload::reload(&proxy.proxy, &path)
        .await
        .unwrap();
    let served = common::eventually(common::WAIT, async || {
        https_get(&ca, b"h2", proxy.addr, "a.example.com", "/")
            .await
            .leaf
            == second.der
    })
    .await;
    assert!(served, "the reloaded config's certificate is served");
    proxy.stop().await;
}
